"""The ledger read back as a support person asks about it: each use (cycle) and each record, with its times, whether
it was entitled and whether and when the cloud has it.

`usage.py` sums groups for totals; this module lists rows: a cycle with its local start and end, every record with
its kind (a gap with its reason). Rows are read with a cursor, so a long listing costs no memory. `entitled` and a
gap's `reason` live only in the record's body: SQLite's json_extract reads them, for the rows listed only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..records import USAGE_TYPE
from .envelope import CYCLE
from .store import CYCLE_ROWS, PARTITION, acked_through, has_table
from .usage import first_seq_since_indexed, index_appliances, ledger_currencies

_BODY = "CAST(body AS TEXT)"
_ENTITLED = f"json_extract({_BODY}, '$.data.entitled')"
_REASON = f"json_extract({_BODY}, '$.data.reason')"


@dataclass(frozen=True, slots=True)
class Synced:
    """Whether the cloud holds a row's records: all, some or none of them, and when the last of them was acked
    (None when not all are, or when the ack came before this ledger kept ack times)."""

    state: str  # "yes", "partly", "no"
    at_wall: float | None


class CycleRow(NamedTuple):
    """One use of an appliance: its records' energy and time (partition kinds), uses, cost, and when it ran.

    Immutable, as a frozen dataclass would be, but a named tuple: made a hundred thousand times for `--by cycle`
    on a big ledger, where a frozen dataclass's `__init__` (an `object.__setattr__` per field) cost 0.3 s."""

    appliance: str
    cycle_id: str
    start_ms: int
    end_ms: int
    energy_mwh: int
    duration_ms: int
    uses: int
    costs: tuple[tuple[str, int], ...]
    entitled: str  # "yes", "no" (recorded, flagged), "" (not gated)
    first_seq: int
    last_seq: int
    synced: Synced


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One usage record as stored."""

    seq: int
    appliance: str
    kind: str
    function: str
    reason: str  # a gap's reason, else ""
    cycle_id: str
    start_ms: int
    end_ms: int
    energy_mwh: int
    duration_ms: int
    uses: int
    cost_minor: int
    currency: str
    entitled: str
    synced: Synced


# Immutable: one of each serves every row.
_PARTLY, _NO, _YES_UNTIMED = Synced("partly", None), Synced("no", None), Synced("yes", None)


class _AckTimes:
    """When each seq was acked, from the `acks` table, looked up as rows come (rows come in rising seq mostly).

    The ack of seq s is the first `through` >= s; found for s as T, it is T for every seq in s..T too (no `through`
    lies between), so the last answer is kept with that range: a listing in time order asks the database once per
    ack that its rows cross, not once per row."""

    def __init__(self, conn: sqlite3.Connection, acked: int) -> None:
        self._conn = conn
        self._acked = acked
        self._has = has_table(conn, "acks")
        self._lo, self._hi, self._last = 1, 0, Synced("yes", None)  # seqs lo..hi were acked as `_last` says

    def synced(self, first_seq: int, last_seq: int) -> Synced:
        if last_seq <= self._acked:
            if not self._has:
                return _YES_UNTIMED
            if self._lo <= last_seq <= self._hi:
                return self._last
            row = self._conn.execute("SELECT through, at_ms FROM acks WHERE through >= ? ORDER BY through LIMIT 1",
                                     (last_seq,)).fetchone()
            if row is None:
                return _YES_UNTIMED
            self._lo, self._hi, self._last = last_seq, row[0], Synced("yes", row[1] / 1000)
            return self._last
        return _PARTLY if first_seq <= self._acked else _NO


def _where(appliance: str | None, since_ms: int | None) -> tuple[str, list[Any]]:
    where = "type=?"
    params: list[Any] = [USAGE_TYPE]
    if appliance is not None:
        where += " AND appliance=?"
        params.append(appliance)
    if since_ms is not None:
        where += " AND t_end_ms>=?"
        params.append(since_ms)
    return where, params


# The sums of one use, in SQL: when it ran, energy and time of its partition records, uses of its cycle record, its
# seqs, then its cost and entitlement (each path says how).
_CYCLE_SUMS = (
    "SELECT appliance, cycle_id, min(t_end_ms - duration_ms) AS start, max(t_end_ms), "
    "sum(CASE WHEN kind IN (?,?,?) THEN energy_mwh ELSE 0 END), "
    "sum(CASE WHEN kind IN (?,?,?) THEN duration_ms ELSE 0 END), "
    "sum(CASE WHEN kind=? THEN uses ELSE 0 END), min(seq), max(seq), "
)
_ENTITLEMENT = ("", "yes", "no")  # max(CASE entitled ...) of a use's records: none gated, all covered, any flagged


def _has_cycle_index(conn: sqlite3.Connection) -> bool:
    """Whether the ledger has `records_cycles` and its `entitled` column (schema 2; a version 1 ledger only read
    since has neither)."""
    sql = "SELECT 1 FROM sqlite_master WHERE type='index' AND name='records_cycles'"
    return conn.execute(sql).fetchone() is not None


def iter_cycles(conn: sqlite3.Connection, path: Path, appliance: str | None,
                since_ms: int | None) -> Iterator[CycleRow]:
    """Each cycle (use) with records ending at or after `since_ms`, in the order they started."""
    synced = _AckTimes(conn, acked_through(conn, path)).synced
    if not _has_cycle_index(conn):
        for app, cid, start, end, energy, dur, uses, lo, hi, listed, entitled in _cycles_from_table(
                conn, appliance, since_ms):
            yield CycleRow(app, cid, start, end, energy, dur, uses, listed, entitled, lo, hi, synced(lo, hi))
        return
    # Inline, one generator deep: a hundred thousand uses on a big ledger, where each level of Python per row shows.
    rows, per_currency, params = _cycles_from_index(conn, appliance, since_ms)
    entitlement = _ENTITLEMENT
    for app, cid, start, end, energy, dur, uses, lo, hi, low, high, cost, ent in rows:
        if low == high:
            costs: tuple[tuple[str, int], ...] = ((low, cost),) if low else ()
        else:
            costs = tuple(conn.execute(per_currency, [*params, cid, app]).fetchall())
        yield CycleRow(app, cid, start, end, energy, dur, uses, costs, entitlement[ent], lo, hi, synced(lo, hi))


def _cycles_from_index(conn: sqlite3.Connection, appliance: str | None,
                       since_ms: int | None) -> tuple[sqlite3.Cursor, str, list[Any]]:
    """The uses from `records_cycles` alone (schema 2): one run of the index per use, in index order, so SQLite
    groups without a sort and reads no body; only the uses themselves are sorted by start (a few hundred thousand
    rows for a year of 8 appliances, not the million records). A `since` filters the index entries by t_end_ms.

    Each aggregate costs every record (~0.05-0.1 s a million), so the cost is one sum, and where the ledger's usage
    records name one currency and no record lacks one (found by a few seeks in `records_usage`), that is all; else
    with the currency's min and max per use: a use priced in one currency is done, one priced in several is summed
    per currency by a second look at its own run of the index (`per_currency`, with `params` and the use's cycle
    id and appliance)."""
    where = f"{CYCLE_ROWS} AND type=?"
    params: list[Any] = [USAGE_TYPE]
    if appliance is not None:
        where += " AND appliance=?"
        params.append(appliance)
    if since_ms is not None:
        where += " AND t_end_ms>=?"
        params.append(since_ms)
    currencies = ledger_currencies(conn)
    if currencies is not None and len(currencies) == 1 and "" not in currencies:
        cost_sql, cost_params = "?, ?, sum(cost_minor), ", [*currencies, *currencies]
    else:
        cost_sql, cost_params = "min(currency), max(currency), sum(cost_minor), ", []
    sql = (f"{_CYCLE_SUMS}{cost_sql}max(CASE entitled WHEN 'no' THEN 2 WHEN 'yes' THEN 1 ELSE 0 END) "
           f"FROM records INDEXED BY records_cycles WHERE {where} GROUP BY cycle_id, appliance "
           "ORDER BY start, appliance, cycle_id")
    per_currency = (f"SELECT currency, sum(cost_minor) FROM records INDEXED BY records_cycles WHERE {where} "
                    "AND cycle_id=? AND appliance=? AND currency!='' GROUP BY currency ORDER BY currency")
    return conn.execute(sql, [*PARTITION, *PARTITION, CYCLE, *cost_params, *params]), per_currency, params


def _cycles_from_table(conn: sqlite3.Connection, appliance: str | None,
                       since_ms: int | None) -> Iterator[tuple[Any, ...]]:
    """The uses from the table (a version 1 ledger only read since it was made): the entitlement is then only in the
    records' bodies."""
    where, params = _where(appliance, since_ms)
    # A cycle's entitlement is only in its records' bodies, so this reads the table; in seq order (NOT INDEXED: a
    # walk of `records_usage` would fetch each row by seq, at random, 12 s instead of 9 s on a million records),
    # from the first seq `since` reaches (found in the usage index) on.
    if since_ms is not None:
        first = first_seq_since_indexed(conn, since_ms, 0)
        if first is None:
            return
        if first is not False:
            where += " AND seq>=?"
            params.append(first)
    sql = (
        f"{_CYCLE_SUMS}"
        # one currency (the usual case): its sum, not a list of every record's cost for Python to parse
        "CASE WHEN min(currency)=max(currency) THEN min(currency) || ':' || sum(cost_minor) "
        f"ELSE group_concat(currency || ':' || cost_minor) END, group_concat(DISTINCT {_ENTITLED}) "
        f"FROM records NOT INDEXED WHERE {where} AND cycle_id != '' GROUP BY appliance, cycle_id "
        "ORDER BY start, appliance, cycle_id"
    )
    for *row, costs, entitled in conn.execute(sql, [*PARTITION, *PARTITION, CYCLE, *params]):
        yield (*row, _costs(costs), _entitled(entitled))


def iter_records(conn: sqlite3.Connection, path: Path, appliance: str | None,
                 since_ms: int | None) -> Iterator[RecordRow]:
    """Every usage record ending at or after `since_ms`, in seq order."""
    where, params = _where(appliance, since_ms)
    acks = _AckTimes(conn, acked_through(conn, path))
    sql = (
        "SELECT seq, appliance, kind, function, CASE WHEN kind='gap' THEN " + _REASON + " ELSE '' END, cycle_id, "
        f"t_end_ms - duration_ms, t_end_ms, energy_mwh, duration_ms, uses, cost_minor, currency, {_ENTITLED} "
        f"FROM records WHERE {where} ORDER BY seq"
    )
    for row in conn.execute(sql, params):
        seq, app, kind, fn, reason, cid, start, end, energy, dur, uses, cost, cur, entitled = row
        yield RecordRow(seq, app, kind, fn, reason or "", cid, start, end, energy, dur, uses, cost, cur,
                        entitled or "", acks.synced(seq, seq))


def appliances(conn: sqlite3.Connection) -> list[str]:
    """Every appliance the ledger holds usage of (for "no appliance named X (known: ...)")."""
    found = index_appliances(conn)  # a seek per appliance, where the ledger has the usage index
    if found is not None:
        return found
    return [r[0] for r in conn.execute("SELECT DISTINCT appliance FROM records WHERE type=? ORDER BY appliance",
                                       (USAGE_TYPE,))]


def _costs(text: str | None) -> tuple[tuple[str, int], ...]:
    if not text:
        return ()
    if "," not in text:  # one currency, summed by SQLite (the usual case)
        cur, _, minor = text.rpartition(":")
        return ((cur, int(minor)),) if cur else ()
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        cur, _, minor = part.rpartition(":")
        if cur:
            out[cur] = out.get(cur, 0) + int(minor)
    return tuple(sorted(out.items()))


def _entitled(values: str | None) -> str:
    if not values:
        return ""
    found = set((values or "").split(","))
    return "no" if "no" in found else "yes" if "yes" in found else ""
