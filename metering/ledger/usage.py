"""The usage report (`koto usage`): energy, time, uses and cost per appliance and function, day or cycle.

Read from the query columns beside each body (copies `verify` checks), so no JSON is parsed. Energy and time sum the
partition kinds only (function, interim, gap), uses come from cycle records, and cost sums every usage record per
currency: a cycle record restates its segments' energy but not their cost, and two currencies are never added.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
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


def usage_rows(conn: sqlite3.Connection, appliance: str | None, since_wall: float | None) -> list[tuple[Any, ...]]:
    """The usage records' columns in seq order, optionally of one appliance and ending at or after `since_wall`."""
    sql = (
        "SELECT appliance, function, cycle_id, t_end_ms, kind, energy_mwh, duration_ms, uses, cost_minor, currency "
        "FROM records WHERE type=?"
    )
    params: list[Any] = [USAGE_TYPE]
    if appliance is not None:
        sql += " AND appliance=?"
        params.append(appliance)
    if since_wall is not None:
        sql += " AND t_end_ms>=?"
        params.append(round(since_wall * 1000))
    return conn.execute(sql + " ORDER BY seq", params).fetchall()


def check_by(by: str) -> None:
    if by not in ("function", "day", "cycle"):
        raise LedgerError(f"usage: by={by!r}; allowed: function, day, cycle")


def summarise(rows: Iterable[tuple[Any, ...]], by: UsageBy, tz: tzinfo | None) -> list[UsageRow]:
    """`usage_rows` grouped per appliance and function, local day (`tz`, default UTC) or cycle (`by`, checked by
    `check_by`), sorted."""
    zone = tz or UTC
    groups: dict[tuple[str, str], list[Any]] = {}  # (appliance, key) -> [energy, duration, uses, {cur: cost}, n]
    for app, fn, cyc, t_ms, kind, e, dur, uses, cost, cur in rows:
        if by == "function":
            key = fn
        elif by == "cycle":
            key = cyc
        else:
            key = datetime.fromtimestamp(t_ms / 1000, tz=zone).strftime("%Y-%m-%d")
        g = groups.setdefault((app, key), [0, 0, 0, {}, 0])
        if kind in PARTITION:
            g[0] += e
            g[1] += dur
        elif kind == CYCLE:
            g[2] += uses
        if cur:
            g[3][cur] = g[3].get(cur, 0) + cost
        g[4] += 1
    return [
        UsageRow(app, key, g[0], g[1], g[2], tuple(sorted(g[3].items())), g[4])
        for (app, key), g in sorted(groups.items())
    ]
