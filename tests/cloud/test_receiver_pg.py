"""The PostgreSQL store against a real server: KOTO_TEST_PG_DSN's when set, or one the tests start.

Never skipped: without the variable the `pg_dsn` fixture starts a private cluster (tests/support/postgres.py); a
server that cannot be reached or started FAILS the tests. Each test works in its own schema, dropped afterwards.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import PostgresStore
from cloud.verify import parse_event, verify_chain
from koto.signing import load_public_key
from tests.support.broker import Mosquitto
from tests.support.cloudpeer import GatewayPeer, until
from tests.support.events import EventFactory


@pytest.fixture
def schema(pg_dsn: str):
    name = f"koto_test_{uuid.uuid4().hex[:10]}"
    yield name
    PostgresStore(pg_dsn, schema=name).drop_schema()


def test_postgres_store_is_idempotent_and_acks_only_the_contiguous_prefix(schema, pg_dsn):
    f = EventFactory("gw-1")
    evs = [parse_event(b) for b in f.chain(30)]
    with PostgresStore(pg_dsn, schema=schema) as store:
        store.register("gw-1", f.public_pem)
        r1 = store.commit(evs[:10] + evs[11:])
        assert (len(r1.inserted), r1.acks[0].acked_through) == (29, 10)
        r2 = store.commit(evs)
        assert (len(r2.inserted), r2.duplicates, r2.acks[0].acked_through) == (1, 29, 30)
        assert r2.acks[0].head_hash == f.head
        assert store.stored_seqs("gw-1", 1) == list(range(1, 31))
        assert verify_chain(store.bodies("gw-1"), load_public_key(store.pubkey("gw-1") or "")) == (30, [])
        assert store.next_dseq("gw-1") == 1


async def test_two_receivers_sharing_one_postgres_database_store_every_record_once(schema, pg_dsn, tmp_path: Path):
    gws = [EventFactory(f"gw-{i}") for i in (1, 2)]
    stores = [PostgresStore(pg_dsn, schema=schema), PostgresStore(pg_dsn, schema=schema)]
    for f in gws:
        stores[0].register(f.gateway, f.public_pem)
    with Mosquitto(tmp_path / "broker") as broker:
        rxs = [Receiver(s, ReceiverConfig(broker=broker.url)) for s in stores]
        for rx in rxs:
            await rx.start()
        try:
            for f in gws:
                bodies = f.chain(300)
                async with GatewayPeer(broker, f.gateway) as gw:
                    await gw.publish(bodies + bodies[::3])
                    ack = await gw.wait_ack(300, within=30)
                    assert ack["head_hash"] == f.head
            await until(lambda: sum(rx.stats["received"] for rx in rxs) == 800)
        finally:
            for rx in rxs:
                await rx.stop()
    assert sum(rx.stats["stored"] for rx in rxs) == 600
    assert all(rx.stats["stored"] > 0 for rx in rxs)  # the shared subscription really split the work
    for f in gws:
        assert stores[0].stored_seqs(f.gateway, 1) == list(range(1, 301))
    for s in stores:
        s.close()


def test_an_unreachable_server_is_an_error_not_a_skip():
    from cloud.errors import StoreError

    with pytest.raises(StoreError):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test")
