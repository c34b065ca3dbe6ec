"""The usage table is the same whether its rows were held (a short table) or read twice (a long one)."""

from __future__ import annotations

import pytest

from gateway import usage_report
from metering.ledger import UsageRow

ROWS = [
    UsageRow("dryer", "dryer-1", 1_500_000, 3_600_000, 1, (("EUR", 120),), 9),
    UsageRow("washer", "", 0, 0, 3, (("CHF", 90), ("EUR", 150)), 3),
    UsageRow("washer", "washer-a-very-long-cycle-id", 812_000, 5_400_000, 1, (), 12),
]


def table(hold: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], int]:
    monkeypatch.setattr(usage_report, "HOLD", hold)
    passes = []

    def rows() -> list[UsageRow]:
        passes.append(1)
        return ROWS

    lines: list[str] = []
    usage_report.write_usage_table(rows, "cycle", lines.append)
    return lines, len(passes)


def test_a_long_table_read_twice_prints_exactly_what_a_held_one_does(monkeypatch: pytest.MonkeyPatch) -> None:
    held, held_passes = table(10_000, monkeypatch)
    streamed, streamed_passes = table(1, monkeypatch)
    assert (held_passes, streamed_passes) == (1, 2)
    assert streamed == held
    assert held[0].split() == ["appliance", "cycle", "kWh", "time", "uses", "cost", "records"]
    assert held[-1].split() == ["total", "2.312", "2:30:00", "5", "0.90", "CHF", "+", "2.70", "EUR", "24"]
    assert held[3].split()[:2] == ["washer", "-"]  # records of no cycle are shown as "-"
