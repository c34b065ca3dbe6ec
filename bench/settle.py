"""How far each use's energy is from what it used, with late register steps, beside splitting at once.

    .venv/bin/python bench/settle.py [--uses N] [--seed S]

Random kettle traces on an SDM120 (float32 kWh register, read exactly and rounded once to mWh): a register value
anywhere in 0..10,000,000 kWh (or 0..2,000 kWh for a third of them), polls every 1-3 s, boils of 1-3 kW, a register
that shows the energy of 0-6 s ago, a tick every second. Each trace runs through the real meter twice: with the
settle rule (`EnergySpec.settle_s` = 60 s, docs/metering.md) and splitting each register delta at once
(`settle_s` = 0, the rule before issue 9). Reported per rule: the uses within one float32 step of the energy they
used (over their own interval), the worst error in steps, and the energy of boils that went to standby after them.
"""

from __future__ import annotations

import argparse
import math
import random
import struct
import sys
from fractions import Fraction
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from koto.clock import Now  # noqa: E402
from koto.reading import Quantity, Reading  # noqa: E402
from metering.energy import EnergySpec  # noqa: E402
from metering.meter import ApplianceMeter  # noqa: E402
from metering.profile import builtin_profile  # noqa: E402
from metering.records import PARTITION_KINDS, RecordKind, UsageRecord  # noqa: E402

S = 1_000_000_000
T0 = 1_000 * S


def register_mwh(kwh: Fraction) -> int:
    x = struct.unpack(">f", struct.pack(">f", float(kwh)))[0]
    return round(Fraction(x) * 1_000_000)


def step_mwh(kwh: float) -> float:
    return 2.0 ** (math.frexp(kwh)[1] - 24) * 1_000_000


def trace(start: Fraction, phases: list[tuple[int, int]], poll: int, lag: int) -> tuple[list[Reading | Now], list[int]]:
    watts = [w for secs, w in phases for _ in range(secs)]
    cum = [0]
    for w in watts:
        cum.append(cum[-1] + w * 1000)  # mW·s
    out: list[Reading | Now] = []
    for s in range(len(watts) + 1):
        t, wall = T0 + s * S, 1_764_460_800.0 + s
        if s % poll == 0:
            shown = start + Fraction(cum[max(0, s - lag)], 3_600_000_000)
            out.append(Reading("m", t, wall, "b", Quantity.ENERGY_MWH, register_mwh(shown)))
            out.append(Reading("m", t, wall, "b", Quantity.POWER_MW, watts[min(s, len(watts) - 1)] * 1000))
        out.append(Now(t, wall, True, "b"))
    return out, cum


def run(items: list[Reading | Now], settle_s: float) -> list[UsageRecord]:
    m = ApplianceMeter("kettle", builtin_profile("kettle"), energy=EnergySpec("register", "m", settle_s=settle_s))
    recs: list[UsageRecord] = []
    for it in items:
        recs += (m.tick(it) if isinstance(it, Now) else m.feed(it)).records
    last = items[-1]
    assert isinstance(last, Now)
    return recs + m.close(last).records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uses", type=int, default=300, help="traces (each has 1-2 uses)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    stats = {60.0: [0, 0, 0.0, 0], 0.0: [0, 0, 0.0, 0]}  # within, uses, worst (steps), boil mWh in standby after
    for _ in range(args.uses):
        start = Fraction(rng.randrange(0, (10_000_000 if rng.random() < 0.67 else 2_000) * 1024), 1024)
        poll, lag = rng.randint(1, 3), rng.randint(0, 6)
        phases = [(20 * poll, 1)]
        for _ in range(rng.randint(1, 2)):
            phases += [(rng.randint(5, 60) * poll, rng.randint(1001, 3000)), (rng.randint(10, 40) * poll, 1)]
        items, cum = trace(start, phases, poll, lag)
        step = step_mwh(float(start) + cum[-1] / 3.6e9)
        for settle_s, st in stats.items():
            recs = run(items, settle_s)
            part = [r for r in recs if r.kind in PARTITION_KINDS]
            for c in (r for r in recs if r.kind == RecordKind.CYCLE):
                a, b = (c.t_start_mono_ns - T0) // S, (c.t_end_mono_ns - T0) // S
                err = abs((c.cycle_energy_mwh or 0) - (cum[b] - cum[a]) / 3600)
                st[0] += err <= step + 3
                st[1] += 1
                st[2] = max(st[2], err / step)
            ends = sorted(r.t_end_mono_ns for r in part if r.function == "boil")
            for r in part:  # standby records of the 10 s after a boil, beyond its own standby power (1 W)
                if r.function == "standby" and any(0 <= r.t_start_mono_ns - e < 10 * S for e in ends):
                    own = (r.t_end_mono_ns - r.t_start_mono_ns) // S * 1000 // 3600  # 1 W for its duration
                    st[3] += max(0, r.energy_mwh - own - 2)
    for settle_s, (within, uses, worst, late) in stats.items():
        rule = "settle (60 s)" if settle_s else "split at once"
        print(f"{rule:14}: {within}/{uses} uses within one float32 step (+3 mWh); worst {worst:.2f} steps; "
              f"{late:,} mWh of boils billed to standby after them")


if __name__ == "__main__":
    main()
