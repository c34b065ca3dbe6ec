"""How long the daemon's own readers hold its ledger's lock, on a million-record ledger.

    nice -n 10 .venv/bin/python -m bench.ledger_reads [--records 1000000] [--state /tmp/koto-ledger-1000000]

The daemon owns its ledger (SQLite's exclusive locking mode): the status page's figures and Home Assistant's first
count read on its own connection (`Ledger.read`), and an append waits while one of those calls runs. On
bench/ledger_scale.py's generated ledger (made when missing, reused), with the file's pages dropped from the page
cache first (cold) and then again warm, this prints each reader's total time and its longest single call.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.ledger_scale import GATEWAY, T0, ensure_ledger
from gateway.ha_totals import EnergyTotals
from gateway.web.model import LedgerReader
from metering.ledger import Ledger


def drop(path: Path) -> None:
    """The file's pages out of the page cache (as after a reboot, for this file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--state", type=Path, default=None)
    args = p.parse_args()
    sd = ensure_ledger(args.state or Path(f"/tmp/koto-ledger-{args.records}"), args.records)
    with Ledger.open(sd.ledger, gateway_id=GATEWAY, key=None) as ledger:
        holds: list[float] = []
        real = ledger.read

        def timed(fn: Callable[[Any], Any]) -> Any:
            t = time.monotonic()
            try:
                return real(fn)
            finally:
                holds.append(time.monotonic() - t)

        ledger.read = timed  # type: ignore[method-assign]
        for state in ("cold", "warm", "warm"):
            if state == "cold":
                drop(sd.ledger)
            holds.clear()
            totals = EnergyTotals(Path(tempfile.mkdtemp(prefix="koto-ha-")))
            totals.start(ledger)
            t0 = time.monotonic()
            totals.catch_up(threading.Event())
            print(f"Home Assistant first count ({state}): {time.monotonic() - t0:.2f} s, {len(holds)} reads, "
                  f"longest {max(holds) * 1000:.0f} ms", flush=True)
        now = T0 + 365 * 86400 - 3600  # the ledger's last day: a full month and chart
        for state in ("cold", "warm", "warm"):
            if state == "cold":
                drop(sd.ledger)
            holds.clear()
            t0 = time.monotonic()
            fig = LedgerReader(ledger, ZoneInfo("Europe/Berlin")).read(now)
            print(f"status page figures ({state}): {(time.monotonic() - t0) * 1000:.0f} ms, reads (month, today, "
                  f"chart, acks) {', '.join(f'{h * 1000:.0f}' for h in holds)} ms{fig.error}", flush=True)


if __name__ == "__main__":
    main()
