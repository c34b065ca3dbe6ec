"""The usage report (`koto usage`): energy, time, uses and cost per appliance and function, day or cycle.

Read from the query columns beside each body (copies `verify` checks), so no JSON is parsed, and summed by SQLite.
Energy and time sum the partition kinds only (function, interim, gap), uses come from cycle records, and cost sums
every usage record per currency: a cycle record restates its segments' energy but not their cost, and two currencies
are never added.
"""

from __future__ import annotations

import bisect
import math
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
    if by != "cycle" and _has_usage_index(conn):
        return _from_index(conn, appliance, since_wall, by, tz or UTC, from_seq or 0)
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


# The index-only path (`records_usage`: type, appliance, kind, function, currency, t_end_ms, then the summed
# columns). The groups (appliance, kind, function, currency) are found by skipping through the index, a seek per
# distinct value (`group_keys`); each group's sums are then one range of the index (from `since` on, as t_end_ms comes
# next), or per local day one range a day, whose bounds come from the zone in Python. No sort, no table read: only
# gap records' bodies are read, to name their reason.
_GROUP_COLS = ("appliance", "kind", "function", "currency")
_SUMS_FROM = ("SELECT sum(energy_mwh), sum(duration_ms), sum(uses), sum(cost_minor), count(*) FROM records "
              "WHERE type=? AND appliance=? AND kind=? AND function=? AND currency=? AND t_end_ms>=? AND t_end_ms<? "
              "AND seq>=?")
_SPAN = ("SELECT min(t_end_ms), max(t_end_ms) FROM records "
         "WHERE type=? AND appliance=? AND kind=? AND function=? AND currency=? AND t_end_ms>=? AND seq>=?")
_GAPS = ("SELECT coalesce(json_extract(CAST(body AS TEXT), '$.data.reason'), 'unknown') AS r, currency, "
         "sum(energy_mwh), sum(duration_ms), sum(uses), sum(cost_minor), count(*) FROM records "
         "WHERE type=? AND appliance=? AND kind='gap' AND t_end_ms>=? AND seq>=? GROUP BY r, currency")
_NEVER = 1 << 62  # beyond any t_end_ms


def _has_usage_index(conn: sqlite3.Connection) -> bool:
    """Whether the ledger has `records_usage` (one made before it and only read since has not)."""
    sql = "SELECT 1 FROM sqlite_master WHERE type='index' AND name='records_usage'"
    return conn.execute(sql).fetchone() is not None


def group_keys(conn: sqlite3.Connection, prefix: tuple[str, ...] = (),
               typ: str = USAGE_TYPE) -> Iterator[tuple[str, ...]]:
    """Every distinct (appliance, kind, function, currency) of the records of type `typ` starting with `prefix`, in
    index order: each next value of a column is one seek (`min(col) ... AND col > last`), however many records
    share it."""
    col = _GROUP_COLS[len(prefix)]
    where = " AND ".join(["type=?", *(f"{c}=?" for c in _GROUP_COLS[:len(prefix)])])
    (value,) = conn.execute(f"SELECT min({col}) FROM records WHERE {where}", (typ, *prefix)).fetchone()
    while value is not None:
        key = (*prefix, value)
        yield from ((key,) if len(key) == len(_GROUP_COLS) else group_keys(conn, key, typ))
        (value,) = conn.execute(f"SELECT min({col}) FROM records WHERE {where} AND {col}>?",
                                (typ, *prefix, value)).fetchone()


def index_appliances(conn: sqlite3.Connection) -> list[str] | None:
    """The appliances with usage records, by skipping through `records_usage`; None without that index."""
    if not _has_usage_index(conn):
        return None
    out: list[str] = []
    (value,) = conn.execute("SELECT min(appliance) FROM records WHERE type=?", (USAGE_TYPE,)).fetchone()
    while value is not None:
        out.append(value)
        (value,) = conn.execute("SELECT min(appliance) FROM records WHERE type=? AND appliance>?",
                                (USAGE_TYPE, value)).fetchone()
    return out


def ledger_currencies(conn: sqlite3.Connection) -> set[str] | None:
    """Every currency the usage records name ("" for those that name none), by skipping through `records_usage`
    (a seek per appliance, kind, function and currency); None without that index."""
    if not _has_usage_index(conn):
        return None
    return {cur for _, _, _, cur in group_keys(conn)}


def first_seq_since_indexed(conn: sqlite3.Connection, since_ms: int, from_seq: int) -> int | bool | None:
    """The lowest seq >= `from_seq` of a record with t_end_ms >= `since_ms`, from `records_usage` (False without it).

    The index holds every record (all types), ordered by t_end_ms within each (type, appliance, kind, function,
    currency): per such group, found by skipping, the records from `since_ms` on are one range. So "since this
    morning" on a ledger of a million records reads this morning's index entries and a seek per group, where a
    scan in seq order would read most of the table (1.4 GB) before the first match."""
    if not _has_usage_index(conn):
        return False
    best: int | None = None
    (typ,) = conn.execute("SELECT min(type) FROM records").fetchone()
    while typ is not None:
        for key in group_keys(conn, (), typ):
            (seq,) = conn.execute("SELECT min(seq) FROM records WHERE type=? AND appliance=? AND kind=? AND "
                                  "function=? AND currency=? AND t_end_ms>=? AND seq>=?",
                                  (typ, *key, since_ms, from_seq)).fetchone()
            if seq is not None and (best is None or seq < best):
                best = seq
        (typ,) = conn.execute("SELECT min(type) FROM records WHERE type>?", (typ,)).fetchone()
    return best


def _from_index(conn: sqlite3.Connection, appliance: str | None, since_wall: float | None, by: UsageBy,
                zone: tzinfo, from_seq: int) -> list[tuple[Any, ...]]:
    """`usage_groups`' rows from the index alone (see `_GROUP_COLS`), sorted the same way. Holds one row per group
    (an appliance and function, or an appliance and day: a few thousand a year), never one per record."""
    since_ms = round(since_wall * 1000) if since_wall is not None else -_NEVER
    keys = list(group_keys(conn, (appliance,) if appliance is not None else ()))
    sums: dict[tuple[str, Any, str], list[int]] = {}

    def add(key: tuple[str, Any, str], kind: str, found: tuple[int, ...]) -> None:
        e, dur, uses, cost, n = found
        if not n:
            return
        acc = sums.setdefault(key, [0, 0, 0, 0, 0])
        if kind in PARTITION:
            acc[0] += e
            acc[1] += dur
        if kind == CYCLE:
            acc[2] += uses
        acc[3] += cost
        acc[4] += n

    if by == "function":
        for app, kind, fn, cur in keys:
            if kind != "gap":
                add((app, fn, cur), kind, conn.execute(_SUMS_FROM, (USAGE_TYPE, app, kind, fn, cur, since_ms,
                                                                    _NEVER, from_seq)).fetchone())
        for app in sorted({k[0] for k in keys if k[1] == "gap"}):
            for reason, cur, *found in conn.execute(_GAPS, (USAGE_TYPE, app, since_ms, from_seq)):
                add((app, f"gap: {reason}", cur), "gap", tuple(found))
        return [(app, key, *acc[:3], cur, acc[3], acc[4]) for (app, key, cur), acc in sorted(sums.items())]
    spans: list[tuple[tuple[str, ...], tuple[int, int]]] = []
    for k in keys:
        lo, hi = conn.execute(_SPAN, (USAGE_TYPE, *k, since_ms, from_seq)).fetchone()
        if lo is not None:
            spans.append((k, (lo, hi)))
    if not spans:
        return []
    days = _local_days(zone, min(lo for _, (lo, _) in spans), max(hi for _, (_, hi) in spans))
    for (app, kind, fn, cur), (lo, hi) in spans:
        i = bisect.bisect_right(days, (lo, _NEVER)) - 1
        while i < len(days) and days[i][0] <= hi:
            start, day = days[i]
            end = days[i + 1][0] if i + 1 < len(days) else _NEVER
            add((app, day, cur), kind, conn.execute(_SUMS_FROM, (USAGE_TYPE, app, kind, fn, cur, max(start, since_ms),
                                                                 end, from_seq)).fetchone())
            i += 1
    return [(app, key, *acc[:3], cur, acc[3], acc[4]) for (app, key, cur), acc in sorted(sums.items())]


def _local_days(zone: tzinfo, lo_ms: int, hi_ms: int) -> list[tuple[int, int]]:
    """(start in UTC ms, day number) of every local day in `zone` from the one holding `lo_ms` to the one holding
    `hi_ms`; a day's number is its date's days since 1970-01-01."""
    epoch = date(1970, 1, 1)
    first = datetime.fromtimestamp(lo_ms / 1000, tz=UTC).astimezone(zone).date()
    last = datetime.fromtimestamp(hi_ms / 1000, tz=UTC).astimezone(zone).date()
    out: list[tuple[int, int]] = []
    d = first
    while d <= last:
        start = datetime(d.year, d.month, d.day, tzinfo=zone)
        out.append((math.floor(start.timestamp() * 1000), (d - epoch).days))
        d += timedelta(days=1)
    return out


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
