"""Checks over a whole ledger that several tests share: the invariants of ARCHITECTURE §2 read off the records."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

from metering.ledger import Ledger
from metering.records import PARTITION_KINDS, USAGE_TYPE


def ledger_events(path: Path, gateway_id: str) -> list[dict[str, Any]]:
    with Ledger.open(path, gateway_id=gateway_id, key=None) as ledger:
        return [r.event() for r in ledger.iter_records()]


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    seqs = [e["data"]["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "seq must be contiguous from 1"


def conservation(events: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """Per register source: (sum of partition energy, first register_start, last register_end).

    Asserts on the way that the partition records of each source chain (each start equals the previous end) and that
    no duration or energy is negative.
    """
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        d = e["data"]
        if e["type"] == USAGE_TYPE and d["kind"] in PARTITION_KINDS:
            assert d["energy_mwh"] >= 0 and d["duration_ms"] >= 0, d
            by_source[d["source"]].append(d)
    out: dict[str, tuple[int, int, int]] = {}
    for source, recs in by_source.items():
        if "register_start_mwh" not in recs[0]:
            continue
        for prev, cur in pairwise(recs):
            assert cur["register_start_mwh"] == prev["register_end_mwh"], (source, prev["seq"], cur["seq"])
        total = sum(r["energy_mwh"] for r in recs)
        out[source] = (total, recs[0]["register_start_mwh"], recs[-1]["register_end_mwh"])
        assert total == recs[-1]["register_end_mwh"] - recs[0]["register_start_mwh"], source
    return out
