"""The broker config operators deploy (deploy/mosquitto): TLS, certificate identity bound to the client id, one
subtree per gateway, a receiver that cannot command, a packet size limit.

Runs a real Mosquitto built from deploy/mosquitto/koto.conf and acl (tests/support/broker.py swaps only the port and
the file paths), with a throw-away PKI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiomqtt
import pytest

from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import SqliteStore
from tests.support.broker import Mosquitto
from tests.support.cloudpeer import GatewayPeer, tls_for, until
from tests.support.events import EventFactory
from tests.support.pki import TestPKI
from tests.support.slow import scaled

NOT_AUTHORIZED = 135  # MQTT 5 reason code


@pytest.fixture
def broker(tmp_path: Path):
    with Mosquitto(tmp_path / "broker", pki=TestPKI(tmp_path / "pki")) as b:
        yield b


def client(broker: Mosquitto, cn: str, *, identifier: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, identifier=identifier or cn,
                          protocol=aiomqtt.ProtocolVersion.V5, tls_context=tls_for(broker, cn))


def record_puback_reasons(c: aiomqtt.Client) -> dict[int, int]:
    """aiomqtt drops the PUBACK reason code; wrap paho's callback to keep it (mid -> reason code value)."""
    reasons: dict[int, int] = {}
    inner = c._client.on_publish

    def on_publish(paho, userdata, mid, reason_code, properties):  # type: ignore[no-untyped-def]
        reasons[mid] = reason_code.value
        inner(paho, userdata, mid, reason_code, properties)

    c._client.on_publish = on_publish
    return reasons


async def test_a_gateway_cannot_publish_under_another_gateways_topics(broker):
    got: list[str] = []
    async with client(broker, "koto-receiver", identifier="rx") as rx:
        await rx.subscribe("koto/v1/+/up/#", qos=1)

        async def listen() -> None:
            async for m in rx.messages:
                got.append(str(m.topic))

        task = asyncio.create_task(listen())
        # gw-2 even claims gw-1's client id: the ACL goes by the certificate's CN, whatever the client id.
        async with client(broker, "gw-2", identifier="gw-1") as intruder, client(broker, "gw-3") as gw3:
            reasons = record_puback_reasons(intruder)
            await intruder.publish("koto/v1/gw-1/up/usage", b"forged", qos=1)
            await gw3.publish("koto/v1/gw-3/up/usage", b"own", qos=1)  # the control: its own subtree works
            await until(lambda: "koto/v1/gw-3/up/usage" in got)
            await asyncio.sleep(0.2)
        task.cancel()
    assert got == ["koto/v1/gw-3/up/usage"]
    assert list(reasons.values()) == [NOT_AUTHORIZED]


async def test_a_gateway_cannot_read_another_gateways_downlink(broker):
    async with client(broker, "gw-2") as gw2, client(broker, "koto-operator", identifier="op") as op:
        await gw2.subscribe("koto/v1/gw-1/down/#", qos=1)
        await gw2.subscribe("koto/v1/gw-2/down/#", qos=1)
        await op.publish("koto/v1/gw-1/down/cmd", b"for gw-1", qos=1)
        await op.publish("koto/v1/gw-2/down/cmd", b"for gw-2", qos=1)
        async with asyncio.timeout(scaled(5)):
            first = await anext(aiomqtt.client.MessagesIterator(gw2))
        assert str(first.topic) == "koto/v1/gw-2/down/cmd"
        await asyncio.sleep(0.2)
        assert len(gw2.messages) == 0


async def test_the_receiver_over_tls_with_a_client_certificate_stores_and_acks(broker, tmp_path):
    f = EventFactory("gw-1")
    store = SqliteStore(tmp_path / "cloud.db")
    store.register("gw-1", f.public_pem)
    assert broker.pki
    pair = broker.pki.client("koto-receiver")
    cfg = ReceiverConfig(broker=broker.url, ca=broker.pki.ca, cert=pair.cert, key=pair.key)
    async with Receiver(store, cfg) as rx, GatewayPeer(broker, "gw-1") as gw:
        await gw.publish(f.chain(20))
        ack = await gw.wait_ack(20)
        await until(lambda: rx.stats["stored"] == 20)
    assert ack == {"epoch": 1, "acked_through": 20, "head_hash": f.head}
    assert json.loads(next(store.bodies("gw-1")))["id"] == "1-1"
    store.close()


def record_disconnects(c: aiomqtt.Client) -> list[int]:
    """Reason codes of the DISCONNECTs the broker sent (or the connection losses) this client saw."""
    seen: list[int] = []
    inner = c._client.on_disconnect

    def on_disconnect(paho, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        seen.append(reason_code.value)
        inner(paho, userdata, flags, reason_code, properties)

    c._client.on_disconnect = on_disconnect
    return seen


async def test_an_impostor_with_a_valid_certificate_can_neither_publish_as_nor_take_over_a_gateway(broker):
    """The impostor holds a valid fleet certificate (CN gw-2) and claims gw-1's client id. The broker replaces its
    client id with its CN (use_username_as_clientid), so gw-1's session stays gw-1's and the impostor's publishes
    on gw-1's topics are refused."""
    got: list[bytes] = []
    async with client(broker, "koto-receiver", identifier="rx") as rx, client(broker, "gw-1") as victim:
        victim_lost = record_disconnects(victim)
        await victim.subscribe("koto/v1/gw-1/down/#", qos=1)
        await rx.subscribe("koto/v1/+/up/#", qos=1)

        async def listen() -> None:
            async for m in rx.messages:
                got.append(bytes(m.payload))

        task = asyncio.create_task(listen())
        async with client(broker, "gw-2", identifier="gw-1") as impostor:
            reasons = record_puback_reasons(impostor)
            await impostor.publish("koto/v1/gw-1/up/usage", b"forged usage", qos=1)
            await impostor.publish("koto/v1/gw-1/up/status", b'{"online":true,"gateway":"gw-1"}', qos=1)
            # The victim is still connected in its own session: its publish is acked and a command reaches it.
            await victim.publish("koto/v1/gw-1/up/usage", b"genuine", qos=1)
            async with client(broker, "koto-operator", identifier="op") as op:
                await op.publish("koto/v1/gw-1/down/cmd", b"command for gw-1", qos=1)
            async with asyncio.timeout(scaled(5)):
                command = await anext(aiomqtt.client.MessagesIterator(victim))
            await until(lambda: b"genuine" in got)
            await asyncio.sleep(0.2)
            assert victim_lost == []  # never disconnected while the impostor was connected
        task.cancel()
    assert command.payload == b"command for gw-1"
    assert list(reasons.values()) == [NOT_AUTHORIZED, NOT_AUTHORIZED]
    assert got == [b"genuine"]
    assert "Client gw-1 already connected" not in broker.log.read_text()


async def test_the_receiver_may_ack_but_not_command(broker):
    async with client(broker, "gw-1") as gw, client(broker, "koto-receiver", identifier="rx") as rx:
        await gw.subscribe("koto/v1/gw-1/down/#", qos=1)
        reasons = record_puback_reasons(rx)
        await rx.publish("koto/v1/gw-1/down/cmd", b"a command from a receiver", qos=1)
        await rx.publish("koto/v1/gw-1/down/ack", b"an ack", qos=1)
        async with asyncio.timeout(scaled(5)):
            first = await anext(aiomqtt.client.MessagesIterator(gw))
        await asyncio.sleep(0.2)
        assert len(gw.messages) == 0
    assert (str(first.topic), first.payload) == ("koto/v1/gw-1/down/ack", b"an ack")
    assert list(reasons.values()) == [NOT_AUTHORIZED, 0]


async def test_a_packet_above_max_packet_size_is_refused_and_its_sender_disconnected(broker):
    got: list[int] = []
    async with client(broker, "koto-receiver", identifier="rx") as rx:
        await rx.subscribe("koto/v1/+/up/usage", qos=1)

        async def listen() -> None:
            async for m in rx.messages:
                got.append(len(m.payload))

        task = asyncio.create_task(listen())
        async with client(broker, "gw-1") as gw:
            await gw.publish("koto/v1/gw-1/up/usage", b"x" * 64 * 1024, qos=1)  # the contract's biggest: passes
        async with client(broker, "gw-1") as gw:
            lost = record_disconnects(gw)
            publish = asyncio.create_task(gw.publish("koto/v1/gw-1/up/usage", b"x" * 20_000_000, qos=0))
            await until(lambda: bool(lost))  # the broker hangs up after the packet's header
            publish.cancel()
            with contextlib.suppress(aiomqtt.MqttError, asyncio.CancelledError):
                await publish
        await asyncio.sleep(0.3)
        task.cancel()
    assert got == [64 * 1024]
