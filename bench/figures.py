"""How a benchmark hands its figures to `bench/report.py`: one JSON line on stdout, after its own text.

    from bench.figures import Figure, emit          # under `python -m bench.NAME` (what report.py runs)
    emit("ledger_scale", [Figure("koto verify", 21_000, "records/s", baseline=11_000,
                                 baseline_name="one ECDSA verify per record, one core", target=">= 20,000")])

A figure is a measured value beside the baseline measured in the same run (the report shows their ratio), with
the target the issue sets, if any. The line is printed only when the bench was given `--json`, so the bench's
text output stays what a person running it by hand reads.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

MARK = "bench-figures"  # the key report.py looks for in a JSON line


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    note: str = ""


def wants_json(argv: list[str] | None = None) -> bool:
    """Whether `--json` is among the arguments (benches strip it before their own argument parsing)."""
    return "--json" in (sys.argv[1:] if argv is None else argv)


def strip_json(argv: list[str] | None = None) -> list[str]:
    return [a for a in (sys.argv[1:] if argv is None else argv) if a != "--json"]


def emit(bench: str, figures: list[Figure], *, argv: list[str] | None = None) -> None:
    """Print the figures as one JSON line when `--json` was asked for."""
    if wants_json(argv):
        print(json.dumps({MARK: bench, "figures": [asdict(f) for f in figures]}), flush=True)
