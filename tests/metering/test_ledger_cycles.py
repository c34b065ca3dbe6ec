"""`koto usage --by cycle` lists each use from the covering `records_cycles` index (schema 2); a version 1 ledger
(made before that index and the `entitled` column) is read from its table as before and migrated in place by its
first writer open. All three must give exactly what a record-by-record reading of the ledger gives."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koto.signing import PrivateKey, generate_key
from metering.ledger import SCHEMA_VERSION, Ledger
from metering.records import PARTITION_KINDS, RecordKind
from tests.support.drafts import T0, lifecycle, usage

KEY: PrivateKey = generate_key()
PARTITION = {str(k) for k in PARTITION_KINDS}

record = st.tuples(
    st.sampled_from(["washer", "dryer"]),
    st.sampled_from([RecordKind.FUNCTION, RecordKind.INTERIM, RecordKind.GAP, RecordKind.CYCLE]),
    st.integers(0, 40 * 86400),  # seconds after T0
    st.integers(0, 7_200_000),  # duration, ms
    st.integers(0, 5_000_000),
    st.sampled_from(["EUR", "CHF", ""]),
    st.integers(0, 500),
    st.sampled_from(["", "c0", "c1", "c2", "c3"]),  # "" names no cycle: never listed
    st.sampled_from([None, "yes", "no", 1]),  # entitled: absent, covered, flagged, or not a string (read as "")
)


def _ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def naive(events: list[dict[str, Any]], appliance: str | None, since_ms: int | None) -> list[tuple[Any, ...]]:
    """Each use as a reading of every usage record one by one gives it, in the order of `koto usage --by cycle`."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for ev in events:
        d = ev["data"]
        end = _ms(ev["time"])
        if (ev["type"] != "io.koto.usage.v1" or not d.get("cycle_id") or (appliance and d["appliance"] != appliance)
                or (since_ms is not None and end < since_ms)):
            continue
        g = out.setdefault((d["appliance"], d["cycle_id"]), {"start": None, "end": None, "e": 0, "dur": 0, "uses": 0,
                                                             "costs": {}, "ent": set(), "seqs": []})
        start = end - d["duration_ms"]
        g["start"] = start if g["start"] is None else min(g["start"], start)
        g["end"] = end if g["end"] is None else max(g["end"], end)
        if d["kind"] in PARTITION:
            g["e"] += d["energy_mwh"]
            g["dur"] += d["duration_ms"]
        if d["kind"] == "cycle":
            g["uses"] += d["uses"]
        if d.get("currency"):
            g["costs"][d["currency"]] = g["costs"].get(d["currency"], 0) + d["cost_minor"]
        g["ent"].add(d.get("entitled"))
        g["seqs"].append(d["seq"])
    rows = [(g["start"], app, cid, g["end"], g["e"], g["dur"], g["uses"], tuple(sorted(g["costs"].items())),
             "no" if "no" in g["ent"] else "yes" if "yes" in g["ent"] else "", min(g["seqs"]), max(g["seqs"]))
            for (app, cid), g in out.items()]
    return sorted(rows)


def listed(db: Path, appliance: str | None, since_ms: int | None) -> list[tuple[Any, ...]]:
    with Ledger.open(db, gateway_id="gw-c", key=None) as ledger:
        return [(r.start_ms, r.appliance, r.cycle_id, r.end_ms, r.energy_mwh, r.duration_ms, r.uses, r.costs,
                 r.entitled, r.first_seq, r.last_seq)
                for r in ledger.iter_cycles(appliance, None if since_ms is None else since_ms / 1000)]


def make_v1(db: Path) -> None:
    """Turn a ledger back into what a Koto before schema 2 made: no `entitled` column, the narrow cycle index."""
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX records_cycles")
        conn.execute("ALTER TABLE records DROP COLUMN entitled")
        conn.execute("CREATE INDEX records_cycle ON records(cycle_id) WHERE cycle_id != ''")
        conn.execute("UPDATE kv SET value='1' WHERE key='schema_version'")
        conn.execute("PRAGMA user_version=1")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(record, min_size=1, max_size=50), since=st.none() | st.integers(0, 40 * 86400),
       only=st.none() | st.sampled_from(["washer", "dryer", "kettle"]))
def test_each_use_from_the_index_the_table_and_a_migrated_ledger_is_a_record_by_record_reading(
        tmp_path: Path, records: list[tuple[Any, ...]], since: int | None, only: str | None) -> None:
    db = tmp_path / f"c-{abs(hash((tuple(records), since, only)))}.db"
    drafts = [usage(i, appliance=app, kind=kind, function="" if kind == RecordKind.CYCLE else "wash",
                    t_end=T0 + t, energy_mwh=e, currency=cur, cost_minor=cost if cur else 0,
                    uses=1 if kind == RecordKind.CYCLE else 0, cycle_id=cid,
                    extra={"duration_ms": dur, **({} if ent is None else {"entitled": ent})})
              for i, (app, kind, t, dur, e, cur, cost, cid, ent) in enumerate(records)]
    with Ledger.open(db, gateway_id="gw-c", key=KEY) as ledger:
        ledger.append([*drafts, lifecycle("start")])
        events = [s.event() for s in ledger.iter_records()]
    since_ms = None if since is None else round((T0 + since) * 1000)
    want = naive(events, only, since_ms)
    assert listed(db, only, since_ms) == want  # schema 2: from the index alone
    with sqlite3.connect(db) as conn:
        plan = " ".join(r[-1] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT cycle_id, appliance, max(seq), sum(energy_mwh), max(entitled) FROM records "
            "INDEXED BY records_cycles WHERE cycle_id != '' AND type=? GROUP BY cycle_id, appliance",
            ("io.koto.usage.v1",)))
    assert "COVERING INDEX records_cycles" in plan and "TEMP B-TREE" not in plan
    make_v1(db)
    assert listed(db, only, since_ms) == want  # version 1, read only: from the table and the bodies
    with Ledger.open(db, gateway_id="gw-c", key=KEY):  # the first writer open migrates it
        pass
    assert listed(db, only, since_ms) == want
    with Ledger.open(db, gateway_id="gw-c", key=None) as ledger:
        assert ledger.verify(KEY.public_key(), workers=1).ok


def test_a_version_1_ledger_verifies_read_only_and_after_its_migration_the_column_is_checked(tmp_path: Path) -> None:
    """The migration fills `entitled` from the bodies that have one (and only those rows); `verify` then holds the
    column to the body, as every other query column; read only, a version 1 ledger verifies without it."""
    db = tmp_path / "v1.db"
    with Ledger.open(db, gateway_id="gw-c", key=KEY) as ledger:
        ledger.append([usage(i, cycle_id="c1", extra={"entitled": "yes"} if i % 2 else {}) for i in range(10)])
    make_v1(db)
    with Ledger.open(db, gateway_id="gw-c", key=None) as ledger:
        assert ledger.verify(KEY.public_key(), workers=1).ok
    with Ledger.open(db, gateway_id="gw-c", key=KEY) as ledger:
        ledger.append([usage(10, cycle_id="c1", extra={"entitled": "no"})])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM kv WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT seq, entitled FROM records WHERE entitled != '' ORDER BY seq").fetchall() == [
            (2, "yes"), (4, "yes"), (6, "yes"), (8, "yes"), (10, "yes"), (11, "no")]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "records_cycles" in names and "records_cycle" not in names
        conn.execute("UPDATE records SET entitled='yes' WHERE seq=11")  # someone edits the column in place
    with Ledger.open(db, gateway_id="gw-c", key=None) as ledger:
        report = ledger.verify(KEY.public_key(), workers=1)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 11, "query columns do not match the record")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cycles=st.lists(st.integers(0, 6), min_size=1, max_size=40),
       acks=st.lists(st.integers(1, 41), max_size=8))
def test_each_use_says_when_the_ack_that_covered_its_last_record_came(tmp_path: Path, cycles: list[int],
                                                                      acks: list[int]) -> None:
    """The ack time of a use is that of the first ack whose `through` reaches its last record (kept between rows
    while the next use falls in the same ack's range): the same as asking the `acks` table for each use."""
    db = tmp_path / f"a-{abs(hash((tuple(cycles), tuple(acks))))}.db"
    drafts = [usage(i, cycle_id=f"c{c}") for i, c in enumerate(cycles)]
    with Ledger.open(db, gateway_id="gw-c", key=KEY) as ledger:
        ledger.append(drafts)
        head = ledger.head()[0]
        for n, through in enumerate(sorted({min(a, head) for a in acks})):
            stored = ledger.get(through)
            assert stored is not None
            ledger.mark_acked(ledger.epoch, through, stored.hash, at_wall=T0 + 1000 * (n + 1))
        acked = ledger.acked_through()
        with sqlite3.connect(db) as conn:
            times = conn.execute("SELECT through, at_ms FROM acks ORDER BY through").fetchall()
        got = [(r.cycle_id, r.synced.state, r.synced.at_wall) for r in ledger.iter_cycles()]
        rows = [(r.seq, r.synced.state, r.synced.at_wall) for r in ledger.iter_record_rows()]

    def at(seq: int) -> float | None:
        return next((ms / 1000 for through, ms in times if through >= seq), None)

    def state(lo: int, hi: int) -> tuple[str, float | None]:
        return ("yes", at(hi)) if hi <= acked else ("partly" if lo <= acked else "no", None)

    seqs: dict[str, list[int]] = {}
    for i, c in enumerate(cycles):
        seqs.setdefault(f"c{c}", []).append(i + 1)
    assert sorted(got) == sorted((cid, *state(min(s), max(s))) for cid, s in seqs.items())
    assert rows == [(seq, *state(seq, seq)) for seq in range(1, len(cycles) + 1)]
