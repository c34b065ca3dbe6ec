"""Learn mode (gateway/learn.py): how long `derive_rule` takes, and how well a rule learned from one run finds the
same function in other runs of the modelled traces (tests/support/appliance_traces.py, other seeds: other durations
and noise, and for the oven other machines).

    .venv/bin/python bench/learn_time.py [--seeds 5]

Time is the best of 3, with a 6-hour history of 1 Hz readings (the daemon's whole ring) and without one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.learn import derive_rule  # noqa: E402
from gateway.power_log import TracePoint  # noqa: E402
from gateway.profile_replay import replay  # noqa: E402
from metering.profile import builtin_profile  # noqa: E402
from tests.support.appliance_traces import LabelledTrace, kettle, oven  # noqa: E402

T0 = 1_764_921_600.0


def _points(watts: list[float] | tuple[float, ...], t0: float = T0) -> list[TracePoint]:
    return [TracePoint(t0 + i, round(w * 1000)) for i, w in enumerate(watts)]


def _until_last(tr: LabelledTrace, label: str) -> list[TracePoint]:
    end = max(i for i, lab in enumerate(tr.labels) if lab == label) + 1
    return _points(tr.watts[:end])


def _found(tr: LabelledTrace, profile: object, label: str) -> float:
    """The share of the truly-`label` energy the profile gives to `label`, replayed."""
    tl = replay(_points(tr.watts), profile)  # type: ignore[arg-type]
    truth = sum(w for w, lab in zip(tr.watts, tr.labels, strict=True) if lab == label) / 3.6
    return tl.energy_by_function().get(label, 0) / truth if truth else 0.0


def timing() -> None:
    from tests.gateway.test_learn import _keep_warm

    w: list[float] = []
    while len(w) < 6 * 3600:
        w += list(kettle("kettle-2.2kW").watts)
    history = _points(w[:6 * 3600], T0 - 6 * 3600 - 10)
    rec = _keep_warm(1)
    for label, hist in (("6 h history", history), ("no history", [])):
        best = min(_timed(lambda h=hist: derive_rule(builtin_profile("kettle"), "keep_warm", rec, history=h))
                   for _ in range(3))
        print(f"derive_rule, {len(rec)} recorded readings, {label} ({len(hist)} readings): {best * 1000:.0f} ms")


def _timed(f: object) -> float:
    t = time.perf_counter()
    f()  # type: ignore[operator]
    return time.perf_counter() - t


def detection(seeds: int) -> None:
    """Learned on one run of one machine; replayed on other runs of the same machine (what learn mode is for), and
    on another machine of the kind (what it is not for: a learned band fits the machine it was learned on)."""
    k3, fan = kettle("kettle-3kW"), oven("fan-oven-2kW")
    cases = [
        ("kettle boil", "kettle", "boil", _points(k3.watts[:270]),
         {"same kettle (3 kW)": [kettle("kettle-3kW", seed=9 + 10 * s) for s in range(1, seeds + 1)],
          "another kettle (2.2 kW)": [kettle("kettle-2.2kW", seed=9 + 10 * s) for s in range(1, seeds + 1)]}),
        ("oven heat", "oven", "heat", _until_last(fan, "heat"),
         {"same oven (fan, 2 kW)": [oven("fan-oven-2kW", seed=7 + 10 * s) for s in range(1, seeds + 1)],
          "another oven (top/bottom, 2.2 kW)": [oven("top-bottom-2.2kW", seed=7 + 10 * s)
                                                for s in range(1, seeds + 1)]}),
    ]
    for name, prof, label, rec, groups in cases:
        learned = derive_rule(builtin_profile(prof), label, rec, appliance=prof)
        r = learned.rule
        print(f"{name}: learned on >= {r.on_min_mw / 1000:.0f} W, min_off {r.min_off_ns / 1e9:.0f} s")
        for group, others in groups.items():
            found = [_found(t, learned.profile, label) for t in others]
            base = [_found(t, builtin_profile(prof), label) for t in others]
            print(f"  {group}: {len(others)} runs, learned rule finds {min(found) * 100:.1f}-{max(found) * 100:.1f} %"
                  f" of the true {label} energy (built-in {min(base) * 100:.1f}-{max(base) * 100:.1f} %)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    timing()
    detection(args.seeds)


if __name__ == "__main__":
    main()
