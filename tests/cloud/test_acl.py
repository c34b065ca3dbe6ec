"""The broker config operators deploy (deploy/mosquitto): TLS, certificate identity, one subtree per gateway.

Runs a real Mosquitto built from deploy/mosquitto/koto.conf and acl (tests/support/broker.py swaps only the port and
the file paths), with a throw-away PKI.
"""

from __future__ import annotations

import asyncio
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
        # gw-2 even claims gw-1's client id: Mosquitto does not tie the client id to the CN, the ACL uses the CN.
        async with client(broker, "gw-2", identifier="gw-1") as intruder, client(broker, "gw-2") as gw2:
            reasons = record_puback_reasons(intruder)
            await intruder.publish("koto/v1/gw-1/up/usage", b"forged", qos=1)
            await gw2.publish("koto/v1/gw-2/up/usage", b"own", qos=1)  # the control: its own subtree works
            await until(lambda: "koto/v1/gw-2/up/usage" in got)
            await asyncio.sleep(0.2)
        task.cancel()
    assert got == ["koto/v1/gw-2/up/usage"]
    assert list(reasons.values()) == [NOT_AUTHORIZED]


async def test_a_gateway_cannot_read_another_gateways_downlink(broker):
    async with client(broker, "gw-2") as gw2, client(broker, "koto-receiver", identifier="rx") as rx:
        await gw2.subscribe("koto/v1/gw-1/down/#", qos=1)
        await gw2.subscribe("koto/v1/gw-2/down/#", qos=1)
        await rx.publish("koto/v1/gw-1/down/cmd", b"for gw-1", qos=1)
        await rx.publish("koto/v1/gw-2/down/cmd", b"for gw-2", qos=1)
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
