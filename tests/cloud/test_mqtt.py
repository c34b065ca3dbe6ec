"""Koto's MQTT connection (cloud/mqtt.py, paho on asyncio) against a real Mosquitto, with an independent aiomqtt client
as the peer where one is needed: bulk and in order, publish without waiting, deliver, Will, content type, sessions,
and a lost or refused connection said as BrokerError."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiomqtt
import pytest

from cloud.mqtt import BrokerError, Connection, Message, Will
from koto.net import BrokerURL, parse_broker_url, tls_context
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import peer_client
from tests.support.pki import TestPKI
from tests.support.slow import scaled


async def collect(conn: Connection, n: int, within: float = 10.0) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(scaled(within)):
        while len(got) < n:
            got += await conn.receive()
    return got


@pytest.mark.parametrize("protocol", [311, 5])
async def test_messages_arrive_in_order_in_bulk_and_a_publish_goes_out_without_waiting(
        broker: Mosquitto, protocol: int) -> None:
    url = parse_broker_url(broker.url)
    async with Connection(url, protocol=protocol) as rx, Connection(url, protocol=protocol) as tx:
        await rx.subscribe("koto/v1/+/up/usage", "koto/v1/+/up/status", qos=1)
        for i in range(500):
            tx.publish(f"koto/v1/gw-{i % 3}/up/usage", str(i).encode(), 1)  # returns at once, no PUBACK awaited
        await tx.deliver("koto/v1/gw-1/up/status", b"500", 1)  # returns once the broker has it
        got = await collect(rx, 501)
    assert [int(m.payload) for m in got] == list(range(501))
    assert got[4] == Message("koto/v1/gw-1/up/usage", b"4")


@pytest.mark.parametrize("protocol", [311, 5])
async def test_a_persistent_session_gets_what_was_published_while_it_was_away(broker: Mosquitto,
                                                                             protocol: int) -> None:
    url = parse_broker_url(broker.url)
    async with Connection(url, client_id="rx-p", protocol=protocol, session_expiry_s=3600) as rx:
        await rx.subscribe("koto/v1/+/up/usage", qos=1)
    async with Connection(url) as tx:
        for i in range(20):
            tx.publish("koto/v1/gw-1/up/usage", str(i).encode(), 1)  # leaving waits for the last PUBACK
    async with Connection(url, client_id="rx-p", protocol=protocol, session_expiry_s=3600) as rx:
        got = await collect(rx, 20)
    assert [int(m.payload) for m in got] == list(range(20))


async def retained(broker: Mosquitto, topic: str) -> tuple[bytes, bool]:
    """What a new subscriber to `topic` gets first, and whether it came as the retained message."""
    async with peer_client(broker.url, "late") as late:
        await late.subscribe(topic, qos=1)
        async with asyncio.timeout(scaled(10)):
            m = await anext(aiomqtt.client.MessagesIterator(late))
    return bytes(m.payload), m.retain


async def test_the_content_type_and_retain_flag_reach_an_mqtt_5_peer_and_the_will_fires_on_a_lost_connection(
        broker: Mosquitto) -> None:
    url = parse_broker_url(broker.url)
    seen: list[tuple[bytes, str | None]] = []
    async with peer_client(broker.url, "peer") as peer:
        await peer.subscribe("gw/status", qos=1)
        will = Will("gw/status", b"offline", content_type="text/plain")
        async with Connection(url, client_id="gw", will=will) as conn:
            await conn.deliver("gw/status", b"online", 1, retain=True, content_type="application/json")
            assert await retained(broker, "gw/status") == (b"online", True)
            # The connection ends without a DISCONNECT, as with a pulled cable or a kill -9 (the test reaches
            # into the connection only to cut its socket).
            conn._paho.socket().shutdown(socket.SHUT_RDWR)
            async with asyncio.timeout(scaled(10)):
                async for m in peer.messages:
                    seen.append((bytes(m.payload), getattr(m.properties, "ContentType", None)))
                    if len(seen) == 2:
                        break
            with pytest.raises(BrokerError):
                await conn.receive()
    assert seen == [(b"online", "application/json"), (b"offline", "text/plain")]
    assert await retained(broker, "gw/status") == (b"offline", True)


async def test_a_lost_connection_hands_over_what_arrived_then_raises_broker_error(broker: Mosquitto) -> None:
    url = parse_broker_url(broker.url)
    async with Connection(url) as rx:
        await rx.subscribe("t/#", qos=1)
        async with Connection(url) as tx:
            tx.publish("t/1", b"before", 1)
        await asyncio.sleep(0.5)  # delivered into rx's inbox, not yet taken
        broker.stop(kill=True)
        async with asyncio.timeout(scaled(10)):
            assert await rx.receive() == [Message("t/1", b"before")]
            with pytest.raises(BrokerError) as e:
                await rx.receive()
        assert e.value.broker == f"{url.host}:{url.port}"
        with pytest.raises(BrokerError):
            rx.publish("t/1", b"after", 1)
        with pytest.raises(BrokerError):
            await rx.deliver("t/1", b"after", 1)


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


async def test_mqtts_to_a_plain_port_says_the_port_may_not_speak_tls(broker: Mosquitto) -> None:
    """A plain Mosquitto hangs up on a TLS ClientHello ("Connection reset by peer"): the error says why it may be."""
    url = BrokerURL(broker.host, broker.port, True)
    with pytest.raises(BrokerError, match=f"broker 127.0.0.1:{broker.port}: cannot connect: .*; the port may not "
                                          r"speak TLS \(check the URL: mqtts:// is TLS, usually port 8883; mqtt:// "
                                          r"is plain, usually 1883\)$"):
        async with asyncio.timeout(scaled(5)), Connection(url, ssl_context=tls_context()):
            pass


def test_the_tls_hint_is_added_only_where_tls_may_be_what_is_wrong() -> None:
    import ssl

    from cloud.mqtt import connect_problem

    hint = "; the port may not speak TLS"
    reset = ConnectionResetError(104, "Connection reset by peer")
    assert connect_problem(reset, tls=True).startswith("cannot connect: [Errno 104] Connection reset by peer" + hint)
    for e in (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), ssl.SSLEOFError(8, "EOF"),
              ConnectionAbortedError(), BrokenPipeError(), None):
        assert hint in connect_problem(e, tls=True), e
    for e, tls in ((reset, False), (ssl.SSLError(1, "x"), False), (ConnectionRefusedError(111, "refused"), True),
                   (ssl.SSLCertVerificationError(1, "certificate verify failed"), True)):
        assert hint not in connect_problem(e, tls=tls), (e, tls)
    assert connect_problem(None, tls=False) == "the connection closed before the broker's CONNACK"
