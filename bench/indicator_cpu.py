"""The status LED's loop (gateway/indicator.py): CPU time it costs the event loop, on gpiozero's MockFactory (a pin
write on lgpio costs a few microseconds more per change; there are at most a handful of changes a second).

    .venv/bin/python bench/indicator_cpu.py [--seconds 10]

Runs the loop alone on an event loop for the given wall time, showing the `error` pattern (the most changes) and
polling the button, and reports the process CPU time against a bare loop of the same length (sleep only).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpiozero.pins.mock import MockFactory  # noqa: E402

from gateway.indicator import ButtonConfig, Indicator, LedConfig  # noqa: E402

STATE = {"state": "running", "cloud": None, "sources": {"m": {"state": "reconnecting"}}, "ledger": {}}


async def _run(seconds: float, with_led: bool) -> float:
    t0 = time.process_time()
    if with_led:
        ind = Indicator(LedConfig(pin=22), ButtonConfig(pin=23), pin_factory=MockFactory())
        task = asyncio.create_task(ind.run(lambda: STATE))
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    else:
        await asyncio.sleep(seconds)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    bare = asyncio.run(_run(a.seconds, False))
    led = asyncio.run(_run(a.seconds, True))
    print(f"LED + button loop for {a.seconds:g} s: {led * 1000:.0f} ms CPU ({100 * led / a.seconds:.2f} % of a core); "
          f"bare loop {bare * 1000:.0f} ms")


if __name__ == "__main__":
    main()
