"""The reference receiver against a real Mosquitto: stores exactly once, acks only what is durable and contiguous."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random

import pytest

from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import SqliteStore, open_store
from cloud.verify import verify_chain
from koto.canonical import event_hash
from koto.signing import load_public_key
from tests.support.cloudpeer import GatewayPeer as Gateway
from tests.support.cloudpeer import until
from tests.support.events import EventFactory


@pytest.mark.parametrize("protocol", [311, 5])
async def test_stores_a_chain_exactly_once_when_every_message_is_sent_twice_out_of_order(broker, tmp_path, protocol):
    f = EventFactory("gw-1")
    bodies = f.chain(300)
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", f.public_pem)
    shuffled = bodies + bodies
    random.Random(7).shuffle(shuffled)
    config = ReceiverConfig(broker=broker.url, protocol=protocol)
    async with Receiver(store, config) as rx, Gateway(broker, "gw-1") as gw:
        await gw.publish(shuffled)
        ack = await gw.wait_ack(300)
        await until(lambda: rx.stats["received"] == 600)
    assert ack == {"epoch": 1, "acked_through": 300, "head_hash": event_hash(json.loads(bodies[-1]))}
    assert store.stored_seqs("gw-1", 1) == list(range(1, 301))
    assert rx.stats["stored"] == 300 and rx.stats["duplicates"] == 300
    n, problems = verify_chain(store.bodies("gw-1"), load_public_key(f.public_pem))
    assert (n, problems) == (300, [])
    # Every ack ever sent named a contiguous prefix with the right head hash.
    hashes = {i + 1: event_hash(json.loads(b)) for i, b in enumerate(bodies)}
    assert all(a["head_hash"] == hashes[a["acked_through"]] for a in gw.acks)


async def test_never_acks_past_a_gap_and_catches_up_when_the_gap_fills(broker, tmp_path):
    f = EventFactory("gw-1")
    bodies = f.chain(20)
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", f.public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, Gateway(broker, "gw-1") as gw:
        await gw.publish(bodies[:9] + bodies[10:])  # seq 10 missing
        await until(lambda: rx.stats["stored"] == 19)
        await gw.wait_ack(9)
        await asyncio.sleep(0.1)
        assert max(a["acked_through"] for a in gw.acks) == 9
        await gw.publish([bodies[9]])
        ack = await gw.wait_ack(20)
    assert ack["acked_through"] == 20


async def test_bad_signature_and_unknown_gateway_are_rejected_counted_and_never_acked(broker, tmp_path, caplog):
    good = EventFactory("gw-1")
    forger = EventFactory("gw-1")  # same gateway id, a key the cloud never registered
    stranger = EventFactory("gw-9")
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", good.public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, \
            Gateway(broker, "gw-1") as gw1, Gateway(broker, "gw-9") as gw9:
        await gw1.publish(forger.chain(3))
        await gw9.publish(stranger.chain(3))
        await gw1.publish([b"{not json", b"[]", b'{"specversion":"1.0"}'])
        await until(lambda: rx.stats["received"] == 9)
        await asyncio.sleep(0.1)
        assert rx.stats["bad_signature"] == 3 and rx.stats["unknown_gateway"] == 3 and rx.stats["malformed"] == 3
        assert gw1.acks == [] and gw9.acks == []
        assert store.count() == 0
        # The receiver is still alive and well: the genuine chain goes through.
        await gw1.publish(good.chain(2))
        await gw1.wait_ack(2)
    assert sum("not signed by its registered key" in r.message for r in caplog.records) == 1  # logged once


async def test_a_record_under_another_gateways_topic_is_rejected(broker, tmp_path):
    f = EventFactory("gw-1")
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", f.public_pem)
    store.register("gw-2", EventFactory("gw-2").public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, Gateway(broker, "gw-2") as gw2:
        await gw2.publish(f.chain(1))
        await until(lambda: rx.stats["wrong_topic"] == 1)
    assert store.count() == 0


async def test_a_different_record_under_a_stored_id_is_alarmed_not_stored(broker, tmp_path):
    f = EventFactory("gw-1")
    bodies = f.chain(3)
    other = f.event(2, event_hash(json.loads(bodies[0])), energy_mwh=999_999)
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", f.public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, Gateway(broker, "gw-1") as gw:
        await gw.publish(bodies)
        await gw.wait_ack(3)
        from koto.canonical import canonical_bytes
        await gw.publish([canonical_bytes(other)])
        await until(lambda: rx.stats["conflicts"] == 1)
    assert json.loads(list(store.bodies("gw-1"))[1]) == json.loads(bodies[1])
    assert [a[3] for a in store.alarms("gw-1")] == ["conflict"]


async def test_a_broken_link_stops_the_acks_there(broker, tmp_path):
    f = EventFactory("gw-1")
    bodies = f.chain(3)
    from koto.canonical import canonical_bytes
    fork = canonical_bytes(f.event(4, "ab" * 32))  # signed by the gateway, but not linked to record 3
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", f.public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, Gateway(broker, "gw-1") as gw:
        await gw.publish([*bodies, fork])
        await until(lambda: rx.stats["chain_breaks"] == 1)
        await gw.wait_ack(3)
        # The genuine record 4 now conflicts with the stored fork; record 5 is stored but never acked.
        await gw.publish([f.next(), f.next()])
        await until(lambda: rx.stats["stored"] == 5 and rx.stats["conflicts"] == 1)
        await asyncio.sleep(0.1)
    assert max(a["acked_through"] for a in gw.acks) == 3
    assert ("gw-1", 1, 4, "chain_break") in [a[:4] for a in store.alarms("gw-1")]


async def test_a_birth_brings_the_current_ack_again(broker, tmp_path):
    f = EventFactory("gw-1")
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", f.public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)), Gateway(broker, "gw-1") as gw:
        await gw.publish(f.chain(5))
        await gw.wait_ack(5)
        gw.acks.clear()
        await gw.birth(epoch=1)
        ack = await gw.wait_ack(5)
    assert ack["acked_through"] == 5 and ack["head_hash"] == f.head
    assert store.birth("gw-1")["epoch"] == 1


def test_the_store_counts_a_resend_as_a_duplicate(tmp_path):
    from cloud.verify import parse_event

    f = EventFactory("gw-1")
    evs = [parse_event(b) for b in f.chain(4)]
    with SqliteStore(tmp_path / "c.db") as store:
        r1 = store.commit(evs[:2])
        r2 = store.commit(evs)
    assert (len(r1.inserted), r1.acks[0].acked_through) == (2, 2)
    assert (len(r2.inserted), r2.duplicates, r2.acks[0].acked_through) == (2, 2, 4)


async def test_a_forged_record_linked_into_a_genuine_stream_is_rejected_and_the_genuine_ones_stored(broker, tmp_path):
    f = EventFactory("gw-1")
    bodies = f.chain(10)
    forger = EventFactory("gw-1")  # a key the cloud never registered, but a record that links to the genuine 10
    from koto.canonical import canonical_bytes
    forged = canonical_bytes(forger.event(11, event_hash(json.loads(bodies[-1])), energy_mwh=10**7))
    store = open_store(str(tmp_path / "cloud.db"))
    store.register("gw-1", f.public_pem)
    async with Receiver(store, ReceiverConfig(broker=broker.url)) as rx, Gateway(broker, "gw-1") as gw:
        await gw.publish([*bodies, forged])
        await gw.wait_ack(10)
        await until(lambda: rx.stats["bad_signature"] == 1)
        await gw.publish(f.chain(5))  # the genuine 11..15: record 11 is not taken by the forgery
        await gw.wait_ack(15)
    assert store.stored_seqs("gw-1", 1) == list(range(1, 16))
    assert verify_chain(store.bodies("gw-1"), load_public_key(f.public_pem)) == (15, [])
    assert store.alarms("gw-1") == []


async def test_an_mqtts_url_on_a_plain_port_is_logged_with_a_tls_hint_and_retried(broker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="koto.cloud.receiver")
    store = open_store(str(tmp_path / "cloud.db"))
    rx = Receiver(store, ReceiverConfig(broker=f"mqtts://{broker.host}:{broker.port}", backoff_initial_s=0.05,
                                        backoff_cap_s=0.1))
    task = asyncio.create_task(rx.run())
    try:
        await until(lambda: rx.stats["disconnects"] >= 2)  # it keeps retrying
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()
    lines = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
    assert len(lines) >= 2 and all("the port may not speak TLS (check the URL" in line for line in lines), lines
