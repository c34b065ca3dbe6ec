"""Gateway sync against a real Mosquitto and the reference receiver: store-and-forward, exactly once, in order.

Peers are real: a Mosquitto started per test (tests/support/broker.py), the receiver from cloud/ with a SQLite
store, and plain aiomqtt clients where a test must play a misbehaving cloud (wrong head_hash, no acks).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import SqliteStore
from cloud.verify import verify_chain
from gateway.config import SyncConfig, parse_config
from gateway.errors import ConfigError
from gateway.mqtt_conn import Outbox, make_client
from gateway.sync import Sync
from koto.clock import ManualClock
from koto.net import parse_broker_url
from koto.signing import public_pem
from metering.errors import LedgerError
from metering.ledger import Ledger, Stored
from tests.support.broker import Mosquitto
from tests.support.gw_child import append_usage, device_key, energy_check, open_ledger
from tests.support.slow import scaled

GW = "gw-test-1"
EPOCH = 7


async def eventually(pred: Callable[[], bool], *, within: float = 30.0, what: str = "condition") -> None:
    """Poll until `pred()` holds; the timeout only turns a hang into a failure (not a timing assertion).

    `pred` runs every 20 ms on the loop the peers share, so it must cost O(1): a predicate that re-reads everything
    received so far starves the very clients it waits for on a slow machine."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(within)
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def drained(sync: Sync, seq: int, *, within: float = 60.0) -> None:
    """Wait until the cloud acked `seq`; on a hang, fail with the sync's health so the cause is visible."""
    try:
        await asyncio.wait_for(sync.wait_acked(seq), scaled(within))
    except TimeoutError:
        raise AssertionError(f"not acked through {seq} within {scaled(within):g} s: {sync.health_report()}") from None


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    led = open_ledger(tmp_path / "gw", GW, epoch=EPOCH)
    yield led
    led.close()


@pytest.fixture
def store(tmp_path: Path, ledger: Ledger) -> Any:
    s = SqliteStore(tmp_path / "cloud.db")
    s.register(GW, public_pem(device_key(tmp_path / "gw")))
    yield s
    s.close()


@pytest.fixture
async def receiver(broker: Mosquitto, store: SqliteStore) -> AsyncIterator[Receiver]:
    async with Receiver(store, ReceiverConfig(broker=broker.url, client_id="rx-1")) as rx:
        yield rx


def config(broker: Mosquitto, **kw: Any) -> SyncConfig:
    kw.setdefault("backoff_initial_s", 0.1)
    kw.setdefault("backoff_cap_s", 0.5)
    return SyncConfig(gateway_id=GW, broker=broker.url, **kw)


class Observer:
    """A plain subscriber that records every message on a topic filter, in arrival order.

    Usage records' seqs are parsed once, as they arrive, so waiting on their count is O(1) per poll."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.broker, self.topic = broker, topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self.usage_seqs: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Observer:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), scaled(10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        client = make_client(url=parse_broker_url(self.broker.url), client_id=f"obs-{id(self)}", persistent=False)
        async with client:
            await client.subscribe(self.topic, qos=1)
            self._ready.set()
            async for m in client.messages:
                topic, payload = str(m.topic), bytes(m.payload)
                self.messages.append((topic, payload, bool(m.retain)))
                if topic.endswith("/up/usage"):
                    self.usage_seqs.append(json.loads(payload)["data"]["seq"])

    def seqs(self) -> list[int]:
        return list(self.usage_seqs)


def rec(ledger: Ledger, seq: int) -> Stored:
    r = ledger.get(seq)
    assert r is not None
    return r


def check_receiver(store: SqliteStore, ledger: Ledger, n: int) -> None:
    """Every seq 1..n stored exactly once, chains and signatures verify, energy conserved, ledger all acked."""
    assert store.stored_seqs(GW, EPOCH) == list(range(1, n + 1))
    assert store.count(GW) == n
    bodies = list(store.bodies(GW))
    checked, problems = verify_chain(bodies, device_key(ledger.path.parent).public_key())
    assert (checked, problems) == (n, [])
    total, first, last = energy_check(bodies)
    assert total == last - first
    assert ledger.acked_through() == n
    assert ledger.unacked_count() == 0


async def test_the_outbox_publishes_in_order_without_waiting_and_a_lost_connection_fails_the_next_publish(
        broker: Mosquitto) -> None:
    """The pump's publishing on aiomqtt's public API: a whole batch is handed over at once (no await), arrives in
    order, and once the broker is gone the failure surfaces on the next publish instead of being lost."""
    async with Observer(broker, "koto/v1/ob/up/usage") as obs:
        client = make_client(url=parse_broker_url(broker.url), client_id="ob", persistent=False)
        async with client:
            outbox = Outbox(client, window=64)
            for i in range(200):
                outbox.publish("koto/v1/ob/up/usage", json.dumps({"data": {"seq": i}}).encode(), 1)
            await eventually(lambda: len(obs.usage_seqs) == 200, what="all 200 at the observer")
            assert obs.seqs() == list(range(200))
            broker.stop(kill=True)
            await eventually(lambda: not _publishes(outbox), within=10, what="a publish to fail")
            await outbox.aclose()


def _publishes(outbox: Outbox) -> bool:
    try:
        outbox.publish("koto/v1/ob/up/usage", b"{}", 1)
    except aiomqtt.MqttError:
        return False
    return True


@pytest.mark.slow
async def test_a_10000_record_backlog_drains_completely_in_order_exactly_once(
        broker: Mosquitto, ledger: Ledger, store: SqliteStore, receiver: Receiver) -> None:
    append_usage(ledger, 10_000, batch=2000)
    async with Observer(broker, f"koto/v1/{GW}/up/usage") as obs, \
            Sync(config(broker), ledger, clock=ManualClock()) as sync:
        await drained(sync, 10_000, within=60)
        await eventually(lambda: len(obs.usage_seqs) >= 10_000, what="observer")
    check_receiver(store, ledger, 10_000)
    first_seen: list[int] = []
    seen: set[int] = set()
    for s in obs.seqs():
        if s not in seen:
            seen.add(s)
            first_seen.append(s)
    assert first_seen == list(range(1, 10_001)), "records went out in seq order"
    assert sync.health.ack_mismatches == 0


async def test_published_bytes_are_the_stored_bytes_and_carry_the_cloudevents_content_type(
        broker: Mosquitto, ledger: Ledger) -> None:
    append_usage(ledger, 5)
    got: list[aiomqtt.Message] = []
    client = make_client(url=parse_broker_url(broker.url), client_id="peer", persistent=False)
    async with client:
        await client.subscribe(f"koto/v1/{GW}/up/usage", qos=1)
        async with Sync(config(broker), ledger, clock=ManualClock()):
            async for m in client.messages:
                got.append(m)
                if len(got) == 5:
                    break
    assert [bytes(m.payload) for m in got] == [rec(ledger, s).body for s in range(1, 6)]
    assert got[0].properties is not None
    content_type = got[0].properties.ContentType  # type: ignore[attr-defined]
    assert content_type == "application/cloudevents+json; charset=utf-8"


async def fake_cloud_ack(client: aiomqtt.Client, epoch: int, through: int, head_hash: str) -> None:
    payload = json.dumps({"epoch": epoch, "acked_through": through, "head_hash": head_hash}).encode()
    await client.publish(f"koto/v1/{GW}/down/ack", payload, qos=1)


async def test_an_ack_with_the_wrong_head_hash_is_never_honoured(broker: Mosquitto, ledger: Ledger) -> None:
    append_usage(ledger, 10)
    cloud = make_client(url=parse_broker_url(broker.url), client_id="fake-cloud", persistent=False)
    async with cloud, Sync(config(broker, ack_timeout_s=3600), ledger, clock=ManualClock()) as sync:
        await cloud.subscribe(f"koto/v1/{GW}/up/usage", qos=1)
        await eventually(lambda: sync.health.published >= 10, what="publish")
        await fake_cloud_ack(cloud, EPOCH, 10, "f" * 64)
        await fake_cloud_ack(cloud, EPOCH, 5, rec(ledger, 4).hash)  # hash of another record
        await fake_cloud_ack(cloud, EPOCH, 11, "0" * 64)  # beyond our head
        await eventually(lambda: sync.health.ack_mismatches == 3, what="mismatch alarms")
        assert ledger.acked_through() == 0
        assert ledger.unacked_count() == 10
        await fake_cloud_ack(cloud, EPOCH + 1, 10, rec(ledger, 10).hash)  # other epoch
        await fake_cloud_ack(cloud, EPOCH, 10, rec(ledger, 10).hash)  # the right one
        await eventually(lambda: ledger.acked_through() == 10, what="ack")
        assert sync.health.acks_ignored == 1
        for junk in (b"not json", b"{}", b'{"epoch":"7","acked_through":1,"head_hash":"x"}', b"[1]"):
            await cloud.publish(f"koto/v1/{GW}/down/ack", junk, qos=1)
        await eventually(lambda: sync.health.acks_ignored == 5, what="malformed acks counted")
        assert ledger.acked_through() == 10
        assert sync.health.connected


async def test_without_acks_the_gateway_resends_from_the_acked_point_with_identical_bytes(
        broker: Mosquitto, ledger: Ledger) -> None:
    append_usage(ledger, 20)
    cloud = make_client(url=parse_broker_url(broker.url), client_id="fake-cloud", persistent=False)
    got: list[bytes] = []
    async with cloud:
        await cloud.subscribe(f"koto/v1/{GW}/up/usage", qos=1)
        async with Sync(config(broker, ack_timeout_s=0.3, window=20), ledger, clock=ManualClock()) as sync:
            async for m in cloud.messages:
                got.append(bytes(m.payload))
                if len(got) == 20:  # first pass complete: ack the first 8 only
                    await fake_cloud_ack(cloud, EPOCH, 8, rec(ledger, 8).hash)
                if len(got) >= 20 + 12:  # the resend of 9..20 arrived
                    break
            assert sync.health.resends >= 12
    assert got[20:32] == [rec(ledger, s).body for s in range(9, 21)]
    assert ledger.acked_through() == 8


async def test_a_stale_ack_from_a_returning_receiver_triggers_a_prompt_resend(
        broker: Mosquitto, ledger: Ledger) -> None:
    """A receiver that says it holds only through our acked point, while we sent more, makes us resend soon,
    not after the (here: hour-long) ack timeout: what we sent beyond it was lost on the way."""
    append_usage(ledger, 20)
    cloud = make_client(url=parse_broker_url(broker.url), client_id="fake-cloud", persistent=False)
    got: list[int] = []
    async with cloud:
        await cloud.subscribe(f"koto/v1/{GW}/up/usage", qos=1)
        cfg = config(broker, ack_timeout_s=3600, stale_ack_resend_s=0.2)
        async with Sync(cfg, ledger, clock=ManualClock()) as sync:
            async for m in cloud.messages:
                got.append(json.loads(m.payload)["data"]["seq"])
                if len(got) == 20:
                    await fake_cloud_ack(cloud, EPOCH, 8, rec(ledger, 8).hash)  # progress
                    await fake_cloud_ack(cloud, EPOCH, 8, rec(ledger, 8).hash)  # then only the same state again
                if len(got) == 32:
                    break
            assert (sync.health.stale_ack_resends, sync.health.ack_timeouts) == (1, 0)
    assert got[20:] == list(range(9, 21))


async def test_the_in_flight_window_bounds_what_is_sent_beyond_the_last_cloud_ack(
        broker: Mosquitto, ledger: Ledger) -> None:
    append_usage(ledger, 100)
    cloud = make_client(url=parse_broker_url(broker.url), client_id="fake-cloud", persistent=False)
    async with cloud:
        await cloud.subscribe(f"koto/v1/{GW}/up/usage", qos=1)
        async with Sync(config(broker, ack_timeout_s=3600, window=16), ledger, clock=ManualClock()) as sync:
            got = []
            async for m in cloud.messages:
                got.append(json.loads(m.payload)["data"]["seq"])
                if len(got) == 16:
                    break
            await asyncio.sleep(0.3)  # give a (wrong) pump the chance to overrun the window
            assert sync.health.published == 16
            await fake_cloud_ack(cloud, EPOCH, 10, rec(ledger, 10).hash)
            async for m in cloud.messages:
                got.append(json.loads(m.payload)["data"]["seq"])
                if len(got) == 26:
                    break
            await asyncio.sleep(0.3)
            assert sync.health.published == 26
    assert got == list(range(1, 27))


async def test_broker_stopped_and_restarted_during_a_drain(
        broker: Mosquitto, ledger: Ledger, store: SqliteStore, receiver: Receiver) -> None:
    append_usage(ledger, 3000)
    async with Sync(config(broker, ack_timeout_s=2.0), ledger, clock=ManualClock()) as sync:
        await eventually(lambda: ledger.acked_through() >= 300, what="drain to start")
        broker.stop()
        await eventually(lambda: not sync.health.connected, what="disconnect")
        append_usage(ledger, 500)  # the meter keeps writing while the cloud is away
        broker.start()
        await drained(sync, 3500, within=60)
        assert sync.health.connects >= 2
    check_receiver(store, ledger, 3500)


async def test_birth_is_retained_on_every_connect_and_says_where_the_ledger_stands(
        broker: Mosquitto, ledger: Ledger) -> None:
    append_usage(ledger, 3)
    clock = ManualClock(synced=False)
    async with Sync(config(broker), ledger, clock=clock, version="9.9") as sync:
        await eventually(lambda: sync.health.connects == 1, what="connect")
        async with Observer(broker, f"koto/v1/{GW}/up/status") as obs:
            await eventually(lambda: bool(obs.messages), what="retained birth")
    _topic, payload, retained = obs.messages[0]
    birth = json.loads(payload)
    assert retained
    assert birth == {"online": True, "gateway": GW, "version": "9.9", "boot_id": clock.boot_id, "epoch": EPOCH,
                     "last_seq": 3, "unacked": 3, "tariff_version": 0, "last_dseq": "", "clock_synced": False,
                     "time": birth["time"]}
    async with Observer(broker, f"koto/v1/{GW}/up/status") as obs:  # after a clean stop: offline, retained
        await eventually(lambda: bool(obs.messages), what="retained offline status")
    assert json.loads(obs.messages[0][1]) == {"online": False, "gateway": GW}


async def test_live_view_is_rate_limited(broker: Mosquitto, ledger: Ledger) -> None:
    async with Observer(broker, f"koto/v1/{GW}/up/live") as obs, \
            Sync(config(broker, live_interval_s=3600), ledger, clock=ManualClock()) as sync:
        await eventually(lambda: sync.health.connected, what="connect")
        # The first view goes out at once; the 49 after it, within the interval, are held back. (Offered back to
        # back, which of the first few went out would depend on when the live task got to run: only the newest
        # view is kept.)
        sync.offer_live({"washer": {"power_mw": 0, "function": "wash"}})
        await eventually(lambda: len(obs.messages) >= 1, what="first live message")
        for i in range(1, 50):
            sync.offer_live({"washer": {"power_mw": i, "function": "wash"}})
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
    assert len(obs.messages) == 1
    assert json.loads(obs.messages[0][1])["appliances"] == {"washer": {"power_mw": 0, "function": "wash"}}
    assert sync.health.live_published == 1


async def test_mqtt_311_also_drains(broker: Mosquitto, ledger: Ledger, store: SqliteStore,
                                    receiver: Receiver) -> None:
    append_usage(ledger, 500)
    async with Sync(config(broker, protocol=311), ledger, clock=ManualClock()) as sync:
        await drained(sync, 500, within=30)
    check_receiver(store, ledger, 500)


async def test_new_records_are_sent_when_the_meter_notifies(broker: Mosquitto, ledger: Ledger,
                                                           store: SqliteStore, receiver: Receiver) -> None:
    async with Sync(config(broker), ledger, clock=ManualClock()) as sync:
        await eventually(lambda: sync.health.connected, what="connect")
        for _ in range(5):
            append_usage(ledger, 7)
            sync.notify()
            await asyncio.sleep(0.01)
        await drained(sync, 35, within=30)
    check_receiver(store, ledger, 35)


def test_sync_config_comes_from_the_gateway_config_cloud_table(tmp_path: Path) -> None:
    table = {"broker": "mqtts://broker.example:8883", "ca": "ca.pem", "cert": "gw.crt", "key": "gw.key",
             "window": 64, "live_interval_s": 2.0, "operator_keys": ["op.pem"]}
    cfg = parse_config({"gateway": {"id": "gw-9"}, "cloud": table}, file="koto.toml", base=tmp_path).cloud
    assert cfg is not None
    assert (cfg.gateway_id, cfg.url.host, cfg.url.port, cfg.url.tls) == ("gw-9", "broker.example", 8883, True)
    assert (cfg.window, cfg.live_interval_s, cfg.operator_keys) == (64, 2.0, (tmp_path / "op.pem",))


@pytest.mark.parametrize("table, key", [
    ({"broker": "http://x"}, "cloud.broker"),
    ({"broker": "mqtt://x", "protocol": 4}, "cloud.protocol"),
    ({"broker": "mqtt://x", "window": 0}, "cloud.window"),
    ({"broker": "mqtt://x", "cert": "a.crt"}, "cloud.cert"),
    ({"broker": "mqtt://x", "operator_keys": ["a", "b", "c"]}, "cloud.operator_keys"),
    ({"broker": "mqtt://x", "colour": "red"}, "cloud.colour"),
])
def test_bad_cloud_settings_name_the_file_and_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"gateway": {"id": "gw-1"}, "cloud": table}, file="koto.toml")
    assert (e.value.file, e.value.key) == ("koto.toml", key)


async def test_a_failing_ledger_call_ends_the_session_not_the_uplink(broker: Mosquitto, ledger: Ledger,
                                                                     store: SqliteStore, receiver: Receiver) -> None:
    """A ledger fault (injected once in front of the real ledger; a locked or damaged database has no quick real
    trigger) ends that session with one error line; the next session drains everything."""
    append_usage(ledger, 50)

    class Flaky:
        """The real ledger, whose unacked() raises once, as a damaged or locked database would."""

        def __init__(self, inner: Ledger) -> None:
            self.inner, self.failed = inner, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def unacked(self, after_seq: int = 0, limit: int = 100) -> list[Stored]:
            if not self.failed:
                self.failed = True
                raise LedgerError("database is locked")
            return self.inner.unacked(after_seq, limit)

    flaky = Flaky(ledger)
    async with Sync(config(broker), flaky, clock=ManualClock()) as sync:
        await drained(sync, 50, within=30)
    assert sync.health_report()["internal_errors"] == 1
    check_receiver(store, ledger, 50)
