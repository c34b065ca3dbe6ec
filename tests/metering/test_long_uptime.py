"""A gateway up for years: monotonic stamps in records stay within canonical JSON's integer range.

Nanoseconds since boot pass 2**53 after 104 days; the ledger refuses such integers (they do not survive a JavaScript
receiver), so a record stamped in nanoseconds would be refused and held in memory for ever. Records carry
microseconds (good for 285 years of uptime)."""

from __future__ import annotations

from pathlib import Path

from koto.canonical import MAX_SAFE_INT
from koto.clock import Now
from koto.signing import PrivateKey
from metering.ledger import Ledger
from metering.meter import LifecycleNote
from metering.records import RecordKind, TimeStatus, UsageRecord, usage_draft

FIVE_YEARS_NS = 5 * 365 * 86400 * 10**9


def test_records_and_notes_made_after_five_years_of_uptime_are_stored(tmp_path: Path, key: PrivateKey) -> None:
    assert FIVE_YEARS_NS > MAX_SAFE_INT
    rec = UsageRecord(kind=RecordKind.FUNCTION, appliance="fridge", source="plug", function="compressor",
                      t_start_mono_ns=FIVE_YEARS_NS, t_end_mono_ns=FIVE_YEARS_NS + 600 * 10**9,
                      t_start_wall=1_950_000_000.0, t_end_wall=1_950_000_600.0, boot_id="b" * 36,
                      energy_mwh=12_000, duration_ms=600_000)
    note = LifecycleNote("register_reset", "plug", Now(FIVE_YEARS_NS, 1_950_000_600.0, True, "b" * 36), {})
    with Ledger.open(tmp_path / "ledger.db", gateway_id="gw-1", key=key) as ledger:
        stored = ledger.append([usage_draft(rec, "flat-7/fridge"), note.draft("flat-7/fridge", "fridge")])
        usage, lifecycle = (s.event()["data"] for s in stored)
        assert ledger.verify(key.public_key()).ok
    assert (usage["start_mono_us"], usage["end_mono_us"]) == (FIVE_YEARS_NS // 1000, FIVE_YEARS_NS // 1000 + 6 * 10**8)
    assert lifecycle["mono_us"] == FIVE_YEARS_NS // 1000
    assert usage["timestatus"] == str(TimeStatus.SYNCED)
