"""The daemon's power ring (gateway/power_log.py): memory and cost per reading, and the cost of writing the trace,
beside a baseline measured in the same run — the obvious alternative, a `deque(maxlen=N)` of (time, power) tuples.

    .venv/bin/python bench/power_ring.py [--readings N]

Memory is what tracemalloc sees allocated by filling each from empty; time is the best of 5 rounds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gateway.power_log import RING_READINGS, PowerLog, PowerRing  # noqa: E402
from metering.energy import EnergySpec  # noqa: E402

T0 = 1_764_921_600.0


def _fill_ring(n: int) -> PowerRing:
    ring = PowerRing(n)
    for i in range(n):
        ring.add(T0 + i, 100_000 + i % 2_000_000)
    return ring


def _fill_deque(n: int) -> deque[tuple[float, int]]:
    d: deque[tuple[float, int]] = deque(maxlen=n)
    for i in range(n):
        d.append((T0 + i, 100_000 + i % 2_000_000))
    return d


def _mem(build: object, n: int) -> int:
    tracemalloc.start()
    keep = build(n)  # type: ignore[operator]
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del keep
    return size


def _best(f: object, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        f()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=RING_READINGS)
    n = ap.parse_args(argv).readings
    ring_b, deq_b = _mem(_fill_ring, n), _mem(_fill_deque, n)
    print(f"{n:,} readings (6 h at 1 Hz = {RING_READINGS:,})")
    print(f"memory: ring {ring_b / 1024:,.0f} KiB ({ring_b / n:.1f} B/reading), deque of tuples "
          f"{deq_b / 1024:,.0f} KiB ({deq_b / n:.1f} B/reading): ring/deque = {ring_b / deq_b:.2f}")
    t_ring, t_deq = _best(lambda: _fill_ring(n)), _best(lambda: _fill_deque(n))
    print(f"add: ring {t_ring / n * 1e9:.0f} ns/reading, deque {t_deq / n * 1e9:.0f} ns/reading: "
          f"ring/deque = {t_ring / t_deq:.2f}")
    with tempfile.TemporaryDirectory() as d:
        log = PowerLog(Path(d), {"washer": EnergySpec("power", "p")}, size=n)
        log.rings["washer"] = _fill_ring(n)
        t_copy = _best(lambda: log.changed(force=True))
        t_write = _best(lambda: log.write(log.changed(force=True)))
        size = (Path(d) / "power-washer.csv").stat().st_size
    print(f"write: copy in the event loop {t_copy * 1e3:.1f} ms, format and write in a thread {t_write * 1e3:.0f} ms "
          f"({size / 1024:,.0f} KiB on tmpfs), every 2 min: {t_write / 120 * 100:.3f} % of one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
