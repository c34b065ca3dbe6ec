"""`koto usage`'s numbers are summed by SQLite, and must be exactly what a record-by-record reading of the ledger
gives: per appliance and function, local day (any zone, half- and quarter-hour offsets and DST included) or cycle."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koto.signing import PrivateKey, generate_key
from metering.ledger import Ledger
from metering.records import PARTITION_KINDS, RecordKind
from tests.support.drafts import T0, lifecycle, usage

KEY: PrivateKey = generate_key()
ZONES = ("UTC", "Europe/Berlin", "Asia/Kathmandu", "Australia/Adelaide", "America/St_Johns")

record = st.tuples(
    st.sampled_from(["washer", "dryer"]),
    st.sampled_from([RecordKind.FUNCTION, RecordKind.INTERIM, RecordKind.GAP, RecordKind.CYCLE]),
    st.sampled_from(["fill", "heat", "spin", ""]),
    st.integers(0, 400 * 86400),  # seconds after T0: more than a year, DST changes included
    st.integers(0, 5_000_000),
    st.sampled_from(["EUR", "CHF", ""]),
    st.integers(0, 500),
    st.integers(0, 4),
)


def naive(events: list[dict[str, Any]], by: str, zone: ZoneInfo) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = {}
    for ev in events:
        d = ev["data"]
        if ev["type"] != "io.koto.usage.v1":
            continue
        end = datetime.fromisoformat(d["end"].replace("Z", "+00:00"))
        # By function a gap is its own row named by its reason.
        function = f"gap: {d.get('reason') or 'unknown'}" if d["kind"] == "gap" else d["function"]
        key = {"function": function, "cycle": d.get("cycle_id", ""),
               "day": end.astimezone(zone).strftime("%Y-%m-%d")}[by]
        g = out.setdefault((d["appliance"], key), [0, 0, 0, {}, 0])
        if d["kind"] in {str(k) for k in PARTITION_KINDS}:
            g[0] += d["energy_mwh"]
            g[1] += d["duration_ms"]
        if d["kind"] == "cycle":
            g[2] += d["uses"]
        if d.get("currency"):
            g[3][d["currency"]] = g[3].get(d["currency"], 0) + d["cost_minor"]
        g[4] += 1
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(record, min_size=1, max_size=60), zone=st.sampled_from(ZONES),
       by=st.sampled_from(["function", "day", "cycle"]), since=st.none() | st.integers(0, 400 * 86400),
       only=st.none() | st.sampled_from(["washer", "dryer", "kettle"]), indexed=st.booleans())
def test_sql_sums_equal_a_record_by_record_reading(tmp_path: Path, records, zone: str, by: str, since: int | None,
                                                    only: str | None, indexed: bool) -> None:
    """Both ways of summing: from the usage index alone (a ledger made by this Koto), and from the table (a ledger
    made before the index existed and only read since, which must still give the same figures)."""
    db = tmp_path / f"u-{abs(hash((tuple(records), zone, by, since, only, indexed)))}.db"
    drafts = [usage(i, appliance=app, kind=kind, function=fn, t_end=T0 + t, energy_mwh=e, currency=cur,
                    cost_minor=cost if cur else 0, uses=1 if kind == RecordKind.CYCLE else 0, cycle_id=f"c{c}")
              for i, (app, kind, fn, t, e, cur, cost, c) in enumerate(records)]
    with Ledger.open(db, gateway_id="gw-u", key=KEY) as ledger:
        ledger.append([*drafts, lifecycle("start")])
        events = [s.event() for s in ledger.iter_records()]
    if not indexed:
        with sqlite3.connect(db) as conn:
            conn.execute("DROP INDEX records_usage")
    since_wall = None if since is None else T0 + since
    with Ledger.open(db, gateway_id="gw-u", key=None) as ledger:
        rows = ledger.usage_summary(only, since_wall, by, ZoneInfo(zone))  # type: ignore[arg-type]
        assert sorted(ledger.appliances()) == sorted({app for app, *_ in records})
    got = {(r.appliance, r.key): [r.energy_mwh, r.duration_ms, r.uses, dict(r.costs), r.records] for r in rows}
    kept = [ev for ev in events if ev["type"] == "io.koto.usage.v1"
            and (only is None or ev["data"]["appliance"] == only) and (since_wall is None or _end(ev) >= since_wall)]
    assert got == naive(kept, by, ZoneInfo(zone))
    assert [(r.appliance, r.key) for r in rows] == sorted(got)


def _end(ev: dict[str, Any]) -> float:
    return datetime.fromisoformat(ev["data"]["end"].replace("Z", "+00:00")).timestamp()
