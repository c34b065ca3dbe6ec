"""`koto usage` as a plain table a person reads, written row by row (also printed at the end of `koto demo`).

The rows come from the ledger as an iterator summed by SQLite. Up to `HOLD` rows (any per-function or per-day
table) are held and printed in one pass; beyond that (`--by cycle` on a million-record ledger: a hundred thousand
uses) the table is written in two passes over a fresh iterator each, one to measure the columns and one to print,
which costs a second SQL pass instead of hundreds of megabytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from koto.money import fmt_costs
from metering.ledger import UsageRow

HEAD_KEY = {"function": "function", "day": "day", "cycle": "cycle"}
RIGHT = {2, 3, 4, 5, 6}
HOLD = 10_000


def fmt_kwh(mwh: int) -> str:
    return f"{mwh / 1_000_000:.3f}"


def fmt_duration(ms: int) -> str:
    s = ms // 1000
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_cost(costs: Iterable[tuple[str, int]], known: Mapping[str, int] | None = None) -> str:
    """Costs in minor units as a person reads them, each currency at its exponent (koto.money: the tariffs' in
    `known`, else ISO 4217's)."""
    return fmt_costs(costs, known)


def fmt_energy(mwh: int, exact: bool) -> str:
    return str(mwh) if exact else fmt_kwh(mwh)


def _cells(r: UsageRow, by: str, exact: bool = False, known: Mapping[str, int] | None = None) -> tuple[str, ...]:
    empty = "(per use)" if by == "function" else "-"  # cycle records carry uses and per-use cost, no function
    return (r.appliance, r.key or empty, fmt_energy(r.energy_mwh, exact), fmt_duration(r.duration_ms), str(r.uses),
            fmt_cost(r.costs, known), str(r.records))


class _Total:
    def __init__(self) -> None:
        self.energy = self.duration = self.uses = self.records = 0
        self.costs: dict[str, int] = {}

    def add(self, r: UsageRow) -> None:
        self.energy += r.energy_mwh
        self.duration += r.duration_ms
        self.uses += r.uses
        self.records += r.records
        for cur, minor in r.costs:
            self.costs[cur] = self.costs.get(cur, 0) + minor

    def cells(self, exact: bool = False, known: Mapping[str, int] | None = None) -> tuple[str, ...]:
        return ("total", "", fmt_energy(self.energy, exact), fmt_duration(self.duration), str(self.uses),
                fmt_cost(sorted(self.costs.items()), known), str(self.records))


def write_usage_table(rows: Callable[[], Iterable[UsageRow]], by: str, out: Callable[[str], None], *,
                      exact: bool = False, known: Mapping[str, int] | None = None) -> int:
    """Write the table of `rows()` (called twice) through `out`, a line at a time; returns the number of rows.
    `exact`: energy in integer mWh instead of kWh; `known`: the tariffs' currency exponents (koto.money)."""
    head = ("appliance", HEAD_KEY[by], "mWh" if exact else "kWh", "time", "uses", "cost", "records")
    widths = [len(h) for h in head]
    total = _Total()
    n = 0
    held: list[tuple[str, ...]] | None = []
    for r in rows():
        n += 1
        total.add(r)
        cells = _cells(r, by, exact, known)
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
        if held is not None:
            held.append(cells)
            if len(held) > HOLD:
                held = None  # too many to hold: print from a second pass
    if not n:
        return 0
    widths = [max(w, len(c)) for w, c in zip(widths, total.cells(exact, known), strict=True)]

    def line(cells: Sequence[str]) -> str:
        cols = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in RIGHT else c.ljust(w) for i, (c, w) in cols).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out(line(head))
    out(rule)
    for cells in held if held is not None else (_cells(r, by, exact, known) for r in rows()):
        out(line(cells))
    out(rule)
    out(line(total.cells(exact, known)))
    return n


def usage_table(rows: Sequence[UsageRow], by: str) -> str:
    """The whole table as one string, for rows already in hand (tests, the demo)."""
    lines: list[str] = []
    write_usage_table(lambda: rows, by, lines.append)
    return "\n".join(lines)
