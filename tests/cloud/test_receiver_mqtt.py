"""The receiver's MQTT connection (cloud/mqtt.py, paho on asyncio) against a real Mosquitto: bulk, in order, fast
acks, and a lost or refused connection said as BrokerError."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud.errors import BrokerError
from cloud.mqtt import Connection, Message
from koto.net import BrokerURL, parse_broker_url, tls_context
from tests.support.broker import Mosquitto, free_port
from tests.support.pki import TestPKI


async def collect(conn: Connection, n: int, within: float = 10.0) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(within):
        while len(got) < n:
            got += await conn.receive()
    return got


@pytest.mark.parametrize("protocol", [311, 5])
async def test_messages_arrive_in_order_in_bulk_and_a_publish_goes_out_without_waiting(
        broker: Mosquitto, protocol: int) -> None:
    url = parse_broker_url(broker.url)
    async with Connection(url, protocol=protocol) as rx, Connection(url, protocol=protocol) as tx:
        await rx.subscribe("koto/v1/+/up/usage", qos=1)
        for i in range(500):
            tx.publish(f"koto/v1/gw-{i % 3}/up/usage", str(i).encode(), 1)  # returns at once, no PUBACK awaited
        got = await collect(rx, 500)
    assert [int(m.payload) for m in got] == list(range(500))
    assert got[4] == Message("koto/v1/gw-1/up/usage", b"4")


async def test_a_persistent_session_gets_what_was_published_while_it_was_away(broker: Mosquitto) -> None:
    url = parse_broker_url(broker.url)
    async with Connection(url, client_id="rx-p", persistent=True) as rx:
        await rx.subscribe("koto/v1/+/up/usage", qos=1)
    async with Connection(url) as tx:
        for i in range(20):
            tx.publish("koto/v1/gw-1/up/usage", str(i).encode(), 1)
    async with Connection(url, client_id="rx-p", persistent=True) as rx:
        got = await collect(rx, 20)
    assert [int(m.payload) for m in got] == list(range(20))


async def test_a_lost_connection_hands_over_what_arrived_then_raises_broker_error(broker: Mosquitto) -> None:
    url = parse_broker_url(broker.url)
    async with Connection(url) as rx:
        await rx.subscribe("t/#", qos=1)
        async with Connection(url) as tx:
            tx.publish("t/1", b"before", 1)
            await asyncio.sleep(0.5)  # delivered into rx's inbox, not yet taken
        broker.stop(kill=True)
        async with asyncio.timeout(10):
            assert await rx.receive() == [Message("t/1", b"before")]
            with pytest.raises(BrokerError) as e:
                await rx.receive()
        assert e.value.broker == f"{url.host}:{url.port}"
        with pytest.raises(BrokerError):
            rx.publish("t/1", b"after", 1)


async def test_nothing_listening_is_a_broker_error_naming_the_broker() -> None:
    url = BrokerURL("127.0.0.1", free_port(), False)
    with pytest.raises(BrokerError, match=f"broker 127.0.0.1:{url.port}: cannot connect"):
        async with Connection(url):
            pass


async def test_over_tls_the_client_certificate_is_presented_and_an_unknown_ca_is_refused(tmp_path: Path) -> None:
    pki, other = TestPKI(tmp_path / "pki"), TestPKI(tmp_path / "other")
    with Mosquitto(tmp_path / "broker", pki=pki) as broker:
        url = parse_broker_url(broker.url)
        pair = pki.client("koto-receiver")
        async with Connection(url, ssl_context=tls_context(pki.ca, pair.cert, pair.key)) as rx:
            await rx.subscribe("koto/v1/+/up/usage", qos=1)  # the ACL's receiver entry: the CN was seen
        with pytest.raises(BrokerError, match=r"cannot connect.*certificate verify failed"):
            async with Connection(url, ssl_context=tls_context(other.ca, pair.cert, pair.key)):
                pass
