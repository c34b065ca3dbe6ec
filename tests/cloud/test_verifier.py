"""The receiver authenticates a batch with one signature per hash-linked run, and never accepts bytes nobody signed.

Real signed, chained events from tests/support/events.py in; which are accepted, which rejected, and how many ECDSA
checks it took, out. Forgeries are made the ways an attacker could: other content under a genuine signature, a
record signed by another key linked into the chain, a signature of garbage.
"""

from __future__ import annotations

import json
import random
from typing import Any

from cloud.verifier import RunVerifier
from cloud.verify import Event, parse_event, verify_chain
from koto.canonical import canonical_bytes, event_hash
from koto.signing import PublicKey, load_public_key
from tests.support.events import EventFactory


def keys(*factories: EventFactory) -> dict[str, PublicKey]:
    return {f.gateway: load_public_key(f.public_pem) for f in factories}


def events(bodies: list[bytes]) -> list[Event]:
    return [parse_event(b) for b in bodies]


def seqs(evs: list[Event]) -> list[int]:
    return [e.seq for e in evs]


def authenticate(evs: list[Event], k: dict[str, PublicKey]) -> tuple[list[Event], list[Event], int]:
    v = RunVerifier(k)
    for ev in evs:
        v.add(ev)
    assert len(v) == len(evs)
    good, bad = v.take()
    assert len(v) == 0
    return good, bad, v.signatures_checked


def altered(body: bytes, **data: Any) -> bytes:
    """The same event with other data, keeping its original `sig` (a forgery that reuses a genuine signature)."""
    ev = json.loads(body)
    ev["data"] = {**ev["data"], **data}
    return canonical_bytes(ev)


def test_an_in_order_backlog_is_authenticated_by_one_signature():
    f = EventFactory("gw-1")
    good, bad, checked = authenticate(events(f.chain(300)), keys(f))
    assert seqs(good) == list(range(1, 301)) and bad == []
    assert checked == 1


def test_other_content_under_a_genuine_signature_is_rejected_and_its_neighbours_kept():
    f = EventFactory("gw-1")
    bodies = f.chain(10)
    bodies[4] = altered(bodies[4], energy_mwh=999_999)  # seq 5: more energy billed, seq 6 no longer links to it
    good, bad, checked = authenticate(events(bodies), keys(f))
    assert seqs(good) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert checked == 3  # runs 1..5 and 6..10; in the first, seq 5 fails and seq 4 vouches for 1..4
    assert seqs(bad) == [5] and json.loads(bodies[4])["data"]["energy_mwh"] == 999_999


def test_a_record_signed_by_another_key_linked_at_the_end_of_a_run_is_rejected():
    f = EventFactory("gw-1")
    bodies = f.chain(10)
    forger = EventFactory("gw-1")  # the same gateway id, a key the cloud never registered
    forged = canonical_bytes(forger.event(11, event_hash(json.loads(bodies[-1])), energy_mwh=10**6))
    good, bad, checked = authenticate(events([*bodies, forged]), keys(f))
    assert seqs(good) == list(range(1, 11)) and seqs(bad) == [11]
    assert checked == 2  # the run's last signature failed; the one before it holds and vouches for seq 1..10


def test_a_chain_signed_by_an_unregistered_key_or_of_an_unknown_gateway_is_rejected_whole():
    registered = EventFactory("gw-1")
    forger, stranger = EventFactory("gw-1"), EventFactory("gw-9")
    good, bad, _ = authenticate(events(forger.chain(5) + stranger.chain(5)), keys(registered))
    assert good == [] and len(bad) == 10


def test_out_of_order_and_interleaved_records_are_each_checked_on_their_own():
    a, b = EventFactory("gw-a"), EventFactory("gw-b")
    evs = events(a.chain(40) + b.chain(40))
    random.Random(3).shuffle(evs)
    good, bad, checked = authenticate(evs, keys(a, b))
    assert sorted((e.gateway, e.seq) for e in good) == sorted((e.gateway, e.seq) for e in evs) and bad == []
    assert 1 < checked <= 80  # a run ends wherever the next record of that gateway does not link


def test_two_gateways_in_step_each_form_one_run():
    a, b = EventFactory("gw-a"), EventFactory("gw-b")
    evs = [e for pair in zip(events(a.chain(50)), events(b.chain(50)), strict=True) for e in pair]
    good, bad, checked = authenticate(evs, keys(a, b))
    assert len(good) == 100 and bad == [] and checked == 2


def test_a_resend_inside_a_batch_starts_a_new_run():
    f = EventFactory("gw-1")
    bodies = f.chain(20)
    good, bad, checked = authenticate(events(bodies + bodies[10:]), keys(f))  # 11..20 sent twice
    assert seqs(good) == list(range(1, 21)) + list(range(11, 21)) and bad == []
    assert checked == 2


def test_a_garbled_signature_inside_a_run_is_kept_as_sent_and_found_by_the_offline_audit():
    """The trade this makes: the record's bytes are authenticated by the chain, its own `sig` is not checked here.

    `koto-cloud verify` (verify_chain) checks every stored signature and names the record.
    """
    f = EventFactory("gw-1")
    bodies = f.chain(10)
    ev = json.loads(bodies[4])
    ev["sig"] = "MEUCIQ" + "A" * 90
    bodies[4] = canonical_bytes(ev)
    good, bad, _ = authenticate(events(bodies), keys(f))
    assert seqs(good) == list(range(1, 11)) and bad == []
    n, problems = verify_chain(bodies, load_public_key(f.public_pem))
    assert n == 10 and [(p.seq, p.reason) for p in problems] == [(5, "signature does not verify")]


def test_a_garbled_signature_on_the_last_record_rejects_only_that_record():
    f = EventFactory("gw-1")
    bodies = f.chain(10)
    ev = json.loads(bodies[-1])
    ev["sig"] = "bm90IGEgc2lnbmF0dXJl"  # base64 (the shape check refuses anything else), but no signature
    bodies[-1] = canonical_bytes(ev)
    good, bad, _ = authenticate(events(bodies), keys(f))
    assert seqs(good) == list(range(1, 10)) and seqs(bad) == [10]
