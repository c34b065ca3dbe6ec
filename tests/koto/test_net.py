"""koto.net: the one broker URL rule, the client TLS context (against a real TLS server), and the backoff's bounds."""

from __future__ import annotations

import asyncio
import random
import ssl
from pathlib import Path

import pytest

from koto.errors import FieldError, KotoError
from koto.net import Backoff, BrokerURL, parse_broker_url, tls_context
from tests.support.pki import TestPKI
from tests.support.slow import scaled


@pytest.mark.parametrize("url, expected", [
    ("mqtt://broker.example", BrokerURL("broker.example", 1883, False)),
    ("mqtts://broker.example", BrokerURL("broker.example", 8883, True)),
    ("mqtt://127.0.0.1:18830", BrokerURL("127.0.0.1", 18830, False)),
    ("mqtts://broker.example:443/", BrokerURL("broker.example", 443, True)),
    ("mqtt://[::1]:1884", BrokerURL("::1", 1884, False)),
])
def test_a_broker_url_is_scheme_host_and_port_with_the_scheme_s_default_port(url: str, expected: BrokerURL) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize("url, says", [
    ("http://broker.example", "scheme 'http' is not allowed"),
    ("broker.example:1883", "is not allowed; use mqtt:// or mqtts://"),
    ("mqtt://", "has no host"),
    ("mqtt://broker.example:99999", "is not a URL"),
    ("mqtt://broker.example:port", "is not a URL"),
    ("mqtt://broker.example/koto", "no path, user or query"),
    ("mqtt://user:secret@broker.example", "no path, user or query"),
    ("mqtt://broker.example?tls=1", "no path, user or query"),
])
def test_a_bad_broker_url_is_a_field_error_naming_file_key_and_what_is_allowed(url: str, says: str) -> None:
    with pytest.raises(FieldError) as e:
        parse_broker_url(url, file="/etc/koto/koto.toml", key="cloud.broker")
    assert (e.value.file, e.value.key) == ("/etc/koto/koto.toml", "cloud.broker")
    assert says in e.value.problem
    assert "mqtt://" in e.value.problem
    assert isinstance(e.value, KotoError) and isinstance(e.value, ValueError)
    assert str(e.value).startswith("/etc/koto/koto.toml: cloud.broker: ")


def test_the_tls_context_verifies_the_broker_and_never_goes_below_tls_1_2() -> None:
    ctx = tls_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


def test_a_missing_certificate_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        tls_context(None, tmp_path / "missing.crt", tmp_path / "missing.key")


async def _handshake(pki: TestPKI, client_ctx: ssl.SSLContext, host: str) -> str:
    """Connect to a real TLS server on loopback that requires a client certificate; the CN the server saw."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server_ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subject = dict(x[0] for x in writer.get_extra_info("peercert")["subject"])
        seen.set_result(subject["commonName"])
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=host)
        cn = await asyncio.wait_for(seen, scaled(10))
        writer.close()
        return cn


async def test_the_tls_context_presents_the_client_certificate_to_a_broker_signed_by_the_ca(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    pair = pki.client("gw-0001")
    assert await _handshake(pki, tls_context(pki.ca, pair.cert, pair.key), "localhost") == "gw-0001"


async def test_the_tls_context_refuses_a_broker_its_ca_did_not_sign_or_of_another_name(tmp_path: Path) -> None:
    pki, other = TestPKI(tmp_path / "pki"), TestPKI(tmp_path / "other")
    pair = pki.client("gw-0001")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(pki, tls_context(other.ca, pair.cert, pair.key), "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(pki, tls_context(pki.ca, pair.cert, pair.key), "broker.example")


class _Extreme(random.Random):
    """An rng stuck at one end of [0, 1): the bounds of every wait, exactly."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_base_doubles_from_initial_to_the_cap_and_each_wait_lies_in_its_upper_half() -> None:
    low = Backoff(0.5, 5.0, rng=_Extreme(0.0))
    high = Backoff(0.5, 5.0, rng=_Extreme(1.0))
    bases = [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert [low.next() for _ in bases] == [b / 2 for b in bases]
    assert [high.next() for _ in bases] == bases


@pytest.mark.parametrize("seed", range(20))
def test_a_seeded_backoff_stays_within_its_bounds_and_never_exceeds_the_cap(seed: int) -> None:
    backoff = Backoff(0.2, 5.0, rng=random.Random(seed))
    base = 0.2
    for _ in range(30):
        wait = backoff.next()
        assert base / 2 <= wait <= base <= 5.0
        base = min(5.0, base * 2)


def test_the_same_seed_gives_the_same_waits_and_reset_starts_again_from_initial() -> None:
    a, b = Backoff(0.5, 30.0, rng=random.Random(7)), Backoff(0.5, 30.0, rng=random.Random(7))
    waits = [a.next() for _ in range(10)]
    assert waits == [b.next() for _ in range(10)]
    assert max(waits) > 15.0  # it did reach the upper bases
    a.reset()
    assert 0.25 <= a.next() <= 0.5


@pytest.mark.parametrize("initial, cap", [(0.0, 5.0), (-1.0, 5.0), (6.0, 5.0)])
def test_a_backoff_needs_a_positive_start_no_larger_than_its_cap(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < initial_s <= cap_s"):
        Backoff(initial, cap)
