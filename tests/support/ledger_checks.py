"""Checks over a whole ledger that several tests share: the invariants of ARCHITECTURE §2 read off the records."""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from collections import defaultdict
from collections.abc import Iterator
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any

from metering.ledger import Ledger
from metering.ledger.lease import reader_lease
from metering.records import PARTITION_KINDS, USAGE_TYPE


def served_mwh(kwh: float) -> int:
    """What a float32 energy register served as `kwh` means in mWh, by the documented rule (docs/serial.md): the
    float32's exact binary value, converted once, half to even."""
    x = struct.unpack(">f", struct.pack(">f", kwh))[0]
    return round(Fraction(x) * 1_000_000)


def ledger_events(path: Path, gateway_id: str) -> list[dict[str, Any]]:
    with Ledger.open(path, gateway_id=gateway_id, key=None) as ledger:
        return [r.event() for r in ledger.iter_records()]


@contextlib.contextmanager
def borrowed(db: Path | str, *, read_only: bool = False, timeout: float = 10.0,
             isolation_level: str | None = "") -> Iterator[sqlite3.Connection]:
    """A plain SQLite connection to a ledger that a running daemon holds for itself (SQLite's exclusive locking mode):
    it takes a reader lease first, as `koto usage` does, so the daemon lends the file within a second, and waits for
    it (`timeout`). The lease is let go after the connection is closed."""
    with reader_lease(db):
        target, uri = (f"file:{db}?mode=ro", True) if read_only else (str(db), False)
        conn = sqlite3.connect(target, uri=uri, timeout=timeout, isolation_level=isolation_level)
        try:
            yield conn
        finally:
            conn.close()


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
