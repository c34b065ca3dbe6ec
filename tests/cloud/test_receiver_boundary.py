"""No payload stops the receiver (issue 14): each hole found by trying, now a test against a real broker and database.

A gateway with a valid certificate can publish anything on its own topics; whatever it sends, the receiver refuses
what is not the contract (counted per kind, logged once), stores nothing of it, acks nothing for it, and goes on
serving every other gateway.
"""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from cloud.cli import main
from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import PostgresStore, SqliteStore, open_store
from tests.support.cloudpeer import GatewayPeer, birth_payload, until
from tests.support.events import EventFactory

NESTED_30KB = b'{"specversion":"1.0","data":' + b'{"a":' * 6000 + b"1" + b"}" * 6001


async def test_a_30kb_record_of_nested_json_is_refused_and_the_receiver_goes_on(broker, tmp_path, caplog):
    f = EventFactory("gw-1")
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", f.public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, GatewayPeer(broker, "gw-1") as gw:
        await gw.publish([NESTED_30KB, b"[" * 30_000])
        await gw.client.publish("koto/v1/gw-1/up/status", b"[" * 4000, qos=1)  # a status is at most 4 KiB
        await gw.client.publish("koto/v1/gw-1/up/reply", b"[" * 30_000, qos=1)
        await until(lambda: rx.stats["too_deep"] == 4)
        await gw.publish(f.chain(3))  # the receiver is alive: the genuine records are stored and acked
        await gw.wait_ack(3)
    assert store.count() == 3 and store.birth("gw-1") is None and store.replies("gw-1") == []
    assert rx.rejections() == {"too_deep": 4}
    assert rx.summary().endswith("; refused 4: too_deep 4")  # the line `koto-cloud serve` logs
    assert sum("more than 32 levels deep" in r.message for r in caplog.records) == 1  # once per kind and gateway


async def test_a_birth_naming_another_gateway_is_refused(broker, tmp_path):
    store = open_store(str(tmp_path / "cloud.db"))
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, GatewayPeer(broker, "gw-2") as gw2:
        await gw2.client.publish("koto/v1/gw-2/up/status",
                                 json.dumps(birth_payload("gw-1", last_dseq="99")).encode(), qos=1)
        await until(lambda: rx.stats["wrong_topic"] == 1)
        await gw2.birth()  # its own birth is fine
        await until(lambda: rx.stats["births"] == 1)
    assert store.birth("gw-1") is None
    assert store.birth("gw-2") == birth_payload("gw-2")


async def test_a_24_digit_last_dseq_is_refused_and_grant_still_works(broker, tmp_path, capsys):
    db, key = tmp_path / "cloud.db", tmp_path / "operator.pem"
    assert main(["keygen", "--out", str(key)]) == 0
    store = open_store(str(db))
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, GatewayPeer(broker, "gw-1") as gw:
        await gw.birth(last_dseq="1" * 24)
        await until(lambda: rx.stats["out_of_range"] == 1)
        await gw.birth(last_dseq="41")
        await until(lambda: rx.stats["births"] == 1)
    assert store.next_dseq("gw-1") == 42
    # A database written before the check may hold such a birth: it must not block commands either.
    store.set_birth("gw-1", birth_payload("gw-1", last_dseq="1" * 24))
    store.register("gw-1", EventFactory("gw-1").public_pem)  # commands go only to registered gateways
    store.close()
    argv = ["grant", "gw-1", "--appliance", "washer-1", "--uses", "3", "--operator-key", str(key), "--db", str(db),
            "--broker", broker.url]
    assert await asyncio.to_thread(main, argv) == 0
    assert "dseq 1" in capsys.readouterr().err


class FaultyStore(SqliteStore):
    """A store with a bug that shows on one reply: what the per-message boundary is for (no peer has such a bug)."""

    def add_reply(self, gateway, reply):  # type: ignore[no-untyped-def]
        if reply["ack_of"] == "boom":
            raise KeyError("a bug in the store")
        super().add_reply(gateway, reply)


def reply(ack_of: str) -> bytes:
    return json.dumps({"ack_of": ack_of, "status": "applied", "reason": "", "dseq": "1", "gateway": "gw-1",
                       "time": "2026-11-30T01:02:03.045Z"}).encode()


async def test_an_exception_while_handling_one_message_is_counted_and_the_receiver_goes_on(broker, tmp_path, caplog):
    f = EventFactory("gw-1")
    store = FaultyStore(tmp_path / "cloud.db")
    store.register("gw-1", f.public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, GatewayPeer(broker, "gw-1") as gw:
        for _ in range(3):
            await gw.client.publish("koto/v1/gw-1/up/reply", reply("boom"), qos=1)
        await gw.client.publish("koto/v1/gw-1/up/reply", reply("fine"), qos=1)
        await gw.publish(f.chain(2))
        await gw.wait_ack(2)
        await until(lambda: rx.stats["replies"] == 4)
    assert rx.rejections() == {"internal_error": 3}
    assert [r["ack_of"] for r in store.replies("gw-1")] == ["fine"]
    logged = [r for r in caplog.records if "KeyError" in r.message]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with the traceback a developer needs


async def test_a_database_outage_stops_the_receiver_instead_of_counting_bad_messages(broker, pg_dsn, caplog):
    schema = "koto_test_outage"
    store = PostgresStore(pg_dsn, schema=schema)
    rx = Receiver(store, ReceiverConfig(broker=broker.url))
    task = asyncio.create_task(rx.run())
    try:
        await asyncio.wait_for(rx.ready.wait(), 10)
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))
        async with GatewayPeer(broker, "gw-1") as gw:
            await gw.birth()
            with pytest.raises(psycopg.OperationalError):
                await asyncio.wait_for(task, 10)
        assert rx.rejections() == {}
    finally:
        task.cancel()
        store.close()
        PostgresStore(pg_dsn, schema=schema).drop_schema()


def test_rejections_are_rate_limited_per_kind_and_gateway():
    from cloud.receiver import RateLimit

    now = [0.0]
    rl = RateLimit(3600, max_keys=4, clock=lambda: now[0])
    assert rl.allow(("too_deep", "gw-1")) and rl.allow(("too_deep", "gw-2")) and rl.allow(("malformed", "gw-1"))
    assert not rl.allow(("too_deep", "gw-1")) and not rl.allow(("too_deep", "gw-1"))
    now[0] = 3600.0
    assert rl.allow(("too_deep", "gw-1")) and rl.suppressed(("too_deep", "gw-1")) == 2
    for i in range(100):  # ever-new gateways: the memory stays bounded
        rl.allow(("malformed", f"gw-x{i}"))
    assert len(rl._last) <= 4


async def test_a_signed_record_postgresql_could_not_store_is_refused_not_a_stuck_batch(broker, pg_dsn):
    """A NUL in a record's subject (a "\\u0000" escape) cannot go into PostgreSQL's text column: the whole batch's
    commit would fail, again and again, and stop the receiver. It is refused at the boundary instead."""
    good = EventFactory("gw-1")
    nul = EventFactory("gw-1", key=good.key, subject="urn:koto:appliance:\x00washer")
    store = PostgresStore(pg_dsn, schema="koto_test_nul")
    try:
        store.register("gw-1", good.public_pem)
        async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, GatewayPeer(broker, "gw-1") as gw:
            await gw.publish(nul.chain(1))
            await until(lambda: rx.stats["malformed"] == 1)
            await gw.publish(good.chain(3))
            await gw.wait_ack(3)
        assert store.stored_seqs("gw-1", 1) == [1, 2, 3]
    finally:
        store.close()
        PostgresStore(pg_dsn, schema="koto_test_nul").drop_schema()


class StoreThatCannotTakeOneRecord(SqliteStore):
    """A store that fails on one record (as PostgreSQL did on a NUL): no peer fails on demand, so this one does."""

    def commit(self, events):  # type: ignore[no-untyped-def]
        if any(ev.id == "1-2" for ev in events):
            raise ValueError("this store cannot take record 1-2")
        return super().commit(events)


async def test_a_record_the_store_cannot_take_is_refused_and_the_rest_of_its_batch_stored(broker, tmp_path):
    f = EventFactory("gw-1")
    store = StoreThatCannotTakeOneRecord(tmp_path / "cloud.db")
    store.register("gw-1", f.public_pem)
    config = ReceiverConfig(broker=broker.url, linger_s=0.2)  # the three records share one batch
    async with Receiver(store, config) as rx, GatewayPeer(broker, "gw-1") as gw:
        await gw.publish(f.chain(3))
        await until(lambda: rx.stats["internal_error"] == 1 and rx.stats["stored"] == 2)
        await gw.wait_ack(1)
    assert store.stored_seqs("gw-1", 1) == [1, 3]
    assert max(a["acked_through"] for a in gw.acks) == 1  # never past the record it could not store
