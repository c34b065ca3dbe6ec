"""The usage report (`koto usage`): energy, time, uses and cost per appliance and function, day or cycle.

Read from the query columns beside each body (copies `verify` checks), so no JSON is parsed, and summed by SQLite.
Energy and time sum the partition kinds only (function, interim, gap), uses come from cycle records, and cost sums
every usage record per currency: a cycle record restates its segments' energy but not their cost, and two currencies
are never added.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, Literal

from ..errors import LedgerError
from ..records import USAGE_TYPE
from .envelope import CYCLE
from .store import PARTITION

UsageBy = Literal["function", "day", "cycle"]


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of `koto usage`: a group's energy (partition records), time, uses (cycle records) and cost."""

    appliance: str
    key: str  # the function, the local day (YYYY-MM-DD) or the cycle id, depending on `by`
    energy_mwh: int
    duration_ms: int
    uses: int
    costs: tuple[tuple[str, int], ...]  # (currency, minor units), sorted by currency; never summed across currencies
    records: int

    @property
    def currency(self) -> str:
        return self.costs[0][0] if len(self.costs) == 1 else ""

    @property
    def cost_minor(self) -> int:
        return self.costs[0][1] if len(self.costs) == 1 else 0


# Aggregation happens in SQLite, so memory stays flat however many records the ledger holds (a Pi Zero 2 W has
# 512 MB; reading a million rows into Python took 575 MB). Per group and currency: energy and time of the partition
# kinds, uses of the cycle records, cost, and the number of records. SQLite knows no IANA zones, but a zone's UTC
# offset is constant between its transitions (two a year with DST): `by="day"` adds the offset in force, as a CASE
# over the transitions within the records' time range, and groups by the local day number.
_DAY_MS = 86_400_000
_SUMS = (
    "sum(CASE WHEN kind IN (?,?,?) THEN energy_mwh ELSE 0 END), "
    "sum(CASE WHEN kind IN (?,?,?) THEN duration_ms ELSE 0 END), "
    "sum(CASE WHEN kind=? THEN uses ELSE 0 END), currency, sum(cost_minor), count(*)"
)
_KEYS = ("function", "day", "cycle")
# By function, a gap is its own row named by its reason ("gap: stale"; the reason lives only in the gap's body); cycle
# records (which carry the uses and per-use cost) keep their function, "" when they name none.
_FUNCTION_KEY = ("CASE kind WHEN 'gap' THEN 'gap: ' || coalesce(json_extract(CAST(body AS TEXT), '$.data.reason'), "
                 "'unknown') ELSE function END")


def check_by(by: str) -> None:
    if by not in _KEYS:
        raise LedgerError(f"usage: by={by!r}; allowed: function, day, cycle")


def usage_groups(conn: sqlite3.Connection, appliance: str | None, since_wall: float | None, by: UsageBy,
                 tz: tzinfo | None = None, from_seq: int | None = None) -> Iterable[tuple[Any, ...]]:
    """(appliance, key, energy, duration, uses, currency, cost, records) per group and currency, from SQL, ordered by
    appliance and key (a cursor: rows are read as they are consumed); for `by="day"` the key is the local day's
    number (days since 1970-01-01 in `tz`, default UTC). `from_seq` bounds the scan to records from that seq on
    (the primary key: "today so far" reads today's rows only, not the whole table)."""
    where = "type=?"
    params: list[Any] = [USAGE_TYPE]
    if from_seq is not None:
        where += " AND seq>=?"
        params.append(from_seq)
    if appliance is not None:
        where += " AND appliance=?"
        params.append(appliance)
    if since_wall is not None:
        where += " AND t_end_ms>=?"
        params.append(round(since_wall * 1000))
    key_params: list[Any] = []
    if by == "day":
        lo, hi = conn.execute(f"SELECT min(t_end_ms), max(t_end_ms) FROM records WHERE {where}", params).fetchone()
        if lo is None:
            return iter(())
        offset_sql, key_params = _offset_case(tz or UTC, lo, hi)
        key = f"(t_end_ms + {offset_sql}) / {_DAY_MS}"
    else:
        key = _FUNCTION_KEY if by == "function" else "cycle_id"
    sql = (f"SELECT appliance, {key} AS k, {_SUMS} FROM records WHERE {where} GROUP BY appliance, k, currency "
           "ORDER BY appliance, k, currency")
    return conn.execute(sql, [*key_params, *PARTITION, *PARTITION, CYCLE, *params])


def _offset_case(zone: tzinfo, lo_ms: int, hi_ms: int) -> tuple[str, list[int]]:
    """A SQL expression for the UTC offset (ms) of `zone` at `t_end_ms`, valid for lo_ms..hi_ms, and its parameters."""
    def offset(ms: int) -> int:
        delta = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone).utcoffset()
        return 0 if delta is None else int(delta.total_seconds() * 1000)

    pieces: list[tuple[int, int]] = []  # (from ms, offset): the offset in force from then on
    current = offset(lo_ms)
    t = lo_ms
    while t < hi_ms:  # day by day; a change within a day is found to the minute by bisection
        nxt = min(t + _DAY_MS, hi_ms)
        if offset(nxt) != current:
            a, b = t, nxt
            while b - a > 60_000:
                mid = (a + b) // 2
                a, b = (mid, b) if offset(mid) == current else (a, mid)
            current = offset(b)
            pieces.append((b, current))
        t = nxt
    if not pieces:
        return "?", [current]
    sql = "CASE " + "".join("WHEN t_end_ms < ? THEN ? " for _ in pieces) + "ELSE ? END"
    params: list[int] = []
    before = offset(lo_ms)
    for start, off in pieces:
        params += [start, before]
        before = off
    return sql, [*params, before]


def fold(groups: Iterable[tuple[Any, ...]], by: UsageBy) -> Iterator[UsageRow]:
    """`usage_groups`' rows (one per currency) folded into one `UsageRow` per appliance and key, in their order;
    day numbers named as YYYY-MM-DD. One group is held at a time, however many there are."""
    epoch = date(1970, 1, 1)
    current: tuple[str, Any] | None = None
    acc: list[Any] = []
    for app, key, e, dur, uses, cur, cost, n in groups:
        if (app, key) != current:
            if current is not None:
                yield _row(current, acc, by, epoch)
            current, acc = (app, key), [0, 0, 0, {}, 0]
        acc[0] += e
        acc[1] += dur
        acc[2] += uses
        if cur:
            acc[3][cur] = acc[3].get(cur, 0) + cost
        acc[4] += n
    if current is not None:
        yield _row(current, acc, by, epoch)


def _row(group: tuple[str, Any], acc: list[Any], by: UsageBy, epoch: date) -> UsageRow:
    app, key = group
    label = (epoch + timedelta(days=key)).isoformat() if by == "day" else key
    return UsageRow(app, label, acc[0], acc[1], acc[2], tuple(sorted(acc[3].items())), acc[4])
