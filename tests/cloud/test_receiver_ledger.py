"""A real Ledger's Stored.body is exactly what the receiver verifies, stores and acks (one contract, two sides)."""

from __future__ import annotations

import json
from pathlib import Path

from cloud.store import SqliteStore
from cloud.verify import check_event, verify_chain
from koto.signing import generate_key, load_public_key, public_pem
from metering.ledger import Ledger
from metering.records import RecordKind, TimeStatus, UsageRecord, usage_draft
from tests.support.schemas import errors


def test_a_real_ledgers_records_verify_store_and_ack_at_the_receiver(tmp_path: Path):
    key = generate_key()
    with Ledger.open(tmp_path / "ledger.db", gateway_id="gw-7", key=key, epoch=3) as ledger:
        drafts = [usage_draft(UsageRecord(
            kind=RecordKind.FUNCTION, appliance="kettle", source="plug-1", function="boil",
            t_start_mono_ns=i * 10**9, t_end_mono_ns=(i + 1) * 10**9, t_start_wall=1_790_000_000.0 + i,
            t_end_wall=1_790_000_001.0 + i, boot_id="b", time_status=TimeStatus.SYNCED, energy_mwh=500,
            duration_ms=1000), "urn:koto:appliance:kettle") for i in range(25)]
        stored = ledger.append(drafts[:10]) + ledger.append(drafts[10:])
    pub = load_public_key(public_pem(key))
    events = [check_event(s.body, "gw-7", pub) for s in stored]
    assert [e.hash for e in events] == [s.hash for s in stored]  # same canonical bytes, same hash rule
    assert all(errors("event.json", s.body) == [] for s in stored)
    with SqliteStore(tmp_path / "cloud.db") as cloud:
        res = cloud.commit(events)
        assert res.acks[0].epoch == 3 and res.acks[0].acked_through == 25
        assert res.acks[0].head_hash == stored[-1].hash  # what the gateway compares before it marks acked
        assert verify_chain(cloud.bodies("gw-7"), pub) == (25, [])
    assert json.loads(stored[0].body)["source"] == "urn:koto:gw:gw-7"
