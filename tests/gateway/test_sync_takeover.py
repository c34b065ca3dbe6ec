"""A session taken over is said in plain words: another client connecting with the gateway's id (a cloned SD card, a
leaked certificate, a broker that does not bind the client id to the certificate) makes the broker close the
gateway's session, and the gateway's journal must say so, once, instead of only "Disconnected during message
iteration" (issue 14).

Brokers that follow MQTT 5 say why (DISCONNECT reason 142, Session taken over); Mosquitto 2.0.11, Debian 12's,
closes the old connection without a word (checked on a raw socket), so there the gateway infers it from sessions
closed right after they began. The real-broker test covers that path: a real Mosquitto without the identity
binding of deploy/mosquitto (with it, the second client gets its own certificate's id: tests/cloud/test_acl.py), a
real Sync and a second real client with the same id. The reason-code path is checked on aiomqtt's own exceptions.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import aiomqtt

from gateway.config import SyncConfig
from gateway.sync import Sync
from koto.clock import ManualClock
from tests.support.broker import Mosquitto
from tests.support.cloudpeer import until
from tests.support.gw_child import open_ledger

GW = "gw-takeover-1"


async def test_a_session_taken_over_again_and_again_is_logged_once_in_plain_words(broker: Mosquitto, tmp_path: Path,
                                                                                 caplog):
    caplog.set_level(logging.DEBUG, logger="koto.sync")
    ledger = open_ledger(tmp_path / "gw", GW)
    config = SyncConfig(gateway_id=GW, broker=broker.url, backoff_initial_s=0.1, backoff_cap_s=0.3)
    sync = Sync(config, ledger, clock=ManualClock())
    try:
        async with sync:
            await until(lambda: sync.health.connected)
            taken = 0
            for _ in range(10):  # a round whose clone the reconnecting gateway kicked first is redone
                d0, c0 = sync.health.disconnects, sync.health.connects
                clone = aiomqtt.Client(broker.host, broker.port, identifier=GW, protocol=aiomqtt.ProtocolVersion.V5)
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):  # the gateway takes the session back
                    async with clone:
                        await until(lambda d0=d0: sync.health.disconnects > d0, within=5.0)
                taken += sync.health.disconnects > d0
                await until(lambda c0=c0, d0=d0: sync.health.connected and (sync.health.connects > c0
                                                                         or sync.health.disconnects == d0))
                if taken >= 3 and any("connecting with our id" in r.getMessage() for r in caplog.records):
                    break
            assert taken >= 3
    finally:
        ledger.close()
    said = [r for r in caplog.records if "connecting with our id" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert said[0].getMessage() == (
        "cloud: the broker closed our session 3 times within 60 s right after accepting it; another client is "
        f"probably connecting with our id ({GW}); check for a cloned SD card or a leaked certificate")
    assert sync.health.extra["session_takeovers"] >= 1


def test_the_mqtt5_reason_session_taken_over_is_found_behind_aiomqtts_errors():
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from gateway.mqtt_conn import SESSION_TAKEN_OVER, disconnect_reason

    def iteration_error(code: int) -> aiomqtt.MqttError:
        """What aiomqtt raises from `client.messages` when the broker disconnects us with `code`."""
        try:
            try:
                raise aiomqtt.MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, identifier=code),
                                            "Unexpected disconnection")
            except aiomqtt.MqttCodeError as cause:
                raise aiomqtt.MqttError("Disconnected during message iteration") from cause
        except aiomqtt.MqttError as e:
            return e

    assert disconnect_reason(iteration_error(142)) == SESSION_TAKEN_OVER
    assert disconnect_reason(iteration_error(141)) == 141  # keep alive timeout: not a takeover
    assert disconnect_reason(aiomqtt.MqttError("Disconnected during message iteration")) is None
    assert disconnect_reason(OSError("connection reset")) is None
