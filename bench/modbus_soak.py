"""Soak: three Modbus meters on one simulated RS485 bus, a share of replies corrupted, time compressed.

    .venv/bin/python bench/modbus_soak.py                       # 30 simulated minutes, 5 % corrupted replies
    .venv/bin/python bench/modbus_soak.py --minutes 5 --corrupt 0.2

An SDM120 (address 1), an SDM630 (2) and a PZEM-004T (3) share one pty bus served by the real pymodbus RTU server
(drivers/modbus_sim.py). A fraction of the replies is corrupted on the way out (a flipped bit, cut short, replaced by
noise, or dropped). Each meter is read by its own ModbusMeterSource, polling every `--poll-s` simulated seconds,
all through the port's one bus owner, exactly as the gateway runs them.

Every accepted reading is compared with the simulator's truth for that register at that moment: the exact
physical value behind the reply it came from (float32 registers may differ by their rounding, one ulp; integer
registers must match exactly). Prints polls, readings delivered, errors by kind, faults injected, wrong values
accepted (must be 0) and crashes (must be 0). Exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.base import build_source
from drivers.modbus import UNITS, ModbusMeterSource
from drivers.modbus_sim import ModbusSimulator, SimMeter
from koto.clock import ScaledClock
from koto.reading import Reading

METERS = (("sdm120", 1), ("sdm630", 2), ("pzem004t", 3))


class Checker:
    def __init__(self, sim: ModbusSimulator) -> None:
        self.sim = sim
        self.accepted = 0
        self.wrong: list[str] = []

    def check(self, src: ModbusMeterSource, r: Reading) -> None:
        spec = next(s for s in src.map.registers if s.quantity == r.quantity and s.signal == r.signal)
        truth = self.sim.meter(src.address).truth[spec.key]
        expected = truth * UNITS[spec.quantity][spec.unit]
        assert isinstance(r.value, int)
        tol = abs(expected) * 2.0**-23 + 1.0 if spec.type == "float32" else 0.5
        self.accepted += 1
        if abs(r.value - expected) > tol:
            self.wrong.append(f"{src.name} {spec.key}: accepted {r.value}, truth {expected:.3f}")


async def run(minutes: float, factor: float, corrupt: float, poll_s: float, seed: int) -> int:
    clock = ScaledClock(factor)
    sim_time = lambda: clock.now().mono_ns / 1e9  # noqa: E731 - the meters' physics run on simulated time
    meters = [SimMeter(model, addr, time_fn=sim_time, seed=seed + addr) for model, addr in METERS]
    crashes = 0
    t0_real = time.monotonic()
    async with ModbusSimulator(meters, corrupt=corrupt, seed=seed) as sim:
        checker = Checker(sim)
        sources: list[ModbusMeterSource] = []
        for model, addr in METERS:
            cfg = {"driver": "modbus", "port": sim.port, "address": addr, "model": model, "baud": 9600,
                   "poll_s": poll_s, "timeout_s": 0.1, "retries": 2,
                   # every register on every poll: each is checked against the simulator's truth, and "delivered"
                   # counts them (the daemon's default reads diagnostics every 10th poll, energy every 5th)
                   "diag_every": 1, "energy_every": 1}
            src = build_source(f"{model}-{addr}", cfg, clock=clock, bus_options={"turnaround_s": 0.005})
            assert isinstance(src, ModbusMeterSource)
            sources.append(src)
        end_ns = clock.now().mono_ns + int(minutes * 60e9)

        async def consume(src: ModbusMeterSource) -> None:
            nonlocal crashes
            while clock.now().mono_ns < end_ns:
                try:
                    async with src:
                        async for r in src:
                            checker.check(src, r)
                            if clock.now().mono_ns >= end_ns:
                                return
                except Exception as e:  # a crash is what we measure; the daemon would restart the source
                    crashes += 1
                    print(f"CRASH in {src.name}: {e!r}", file=sys.stderr)

        await asyncio.gather(*(consume(s) for s in sources))
        real_s = time.monotonic() - t0_real
        polls = sum(s.polls for s in sources)
        expected = sum(s.polls * len(s.map.registers) for s in sources)
        delivered = sum(s.health.readings for s in sources)
        errors: Counter[str] = Counter()
        for s in sources:
            errors.update(s.health.errors)
        requests = sum(sim.meter(a).served for _, a in METERS)
    pct = 100.0 * delivered / expected if expected else 0.0
    print(f"simulated {minutes:g} min at {factor:g}x in {real_s:.1f} s real; poll every {poll_s:g} s per meter; "
          f"{corrupt:.0%} of replies corrupted")
    due = int(minutes * 60 / poll_s) * len(sources)
    per = ", ".join(f"{s.name} {s.polls}" for s in sources)
    print(f"polls: {polls} of {due} scheduled ({per}); requests served: {requests}; replies sent: {sim.replies}")
    print(f"readings delivered: {delivered} of {expected} expected = {pct:.2f} %")
    print(f"faults injected: {dict(sim.injected)} (total {sum(sim.injected.values())})")
    print(f"errors counted by kind (every failed attempt, before retry): {dict(errors)}")
    print(f"reconnects: {sum(s.health.reconnects for s in sources)}")
    print(f"wrong values accepted: {len(checker.wrong)} of {checker.accepted} checked")
    for w in checker.wrong[:10]:
        print("  ", w)
    print(f"crashes: {crashes}")
    ok = not checker.wrong and crashes == 0 and pct >= 99.0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="simulated minutes (default 30)")
    p.add_argument("--factor", type=float, default=10.0, help="time compression (default 10x)")
    p.add_argument("--corrupt", type=float, default=0.05, help="fraction of replies corrupted (default 0.05)")
    p.add_argument("--poll-s", type=float, default=1.0, help="simulated seconds between polls per meter")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  log: %(message)s", stream=sys.stdout)
    sys.exit(asyncio.run(run(a.minutes, a.factor, a.corrupt, a.poll_s, a.seed)))


if __name__ == "__main__":
    main()
