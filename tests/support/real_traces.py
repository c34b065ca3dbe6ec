"""Real appliance power traces (tracebase excerpts in tests/data/traces/), replayed through the real meter.

A tracebase plug reports every 1-6 s; a gateway polling it every second reads the last value it reported, so each
excerpt becomes a 1 Hz trace by holding each row's power until the next row. Real traces carry no labels of the
functions, so the score claims only what the power says unambiguously:

- *heater energy right*: of the energy in seconds at or above `HEATER_W` (1 kW: only a heating element draws that
  in a washer, dishwasher, dryer or kettle; motors, pumps and electronics stay far below), the share billed to the
  profile's heating function (`HEATERS`);
- *uses*: cycle records vs the true uses: one per excerpt for programme machines (each excerpt is cut around one
  programme, see the README), and for kettles and fridges the runs the power shows (`true_uses`);
- per function, the share of all billed energy, and the use boundaries, for a person to judge.

An excerpt ends 8-30 minutes after its programme (the held-out ones 20), while in a home the machine stays at rest
and a use with a long end dwell (a dishwasher's 30 minutes, a dishwasher left on: an hour) closes later. So an
excerpt whose last 10 minutes are at rest (all below `REST_W`) is continued with those 10 minutes, repeated, for
another `REST_S` (flicker and all, as the plug read them; the held-out selection rule saw at least 30 minutes at
or below 10 W after every programme). `load(..., rest_s=0)` gives the excerpt alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metering.profile import builtin_profile
from metering.records import RecordKind, UsageRecord

from .appliance_traces import LabelledTrace
from .attribution import T0_MONO, replay

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"
HELDOUT = Path(__file__).resolve().parents[1] / "data" / "heldout_traces"  # never tuned on
REST_W = 10  # an excerpt's last 10 minutes all below this: at rest, continued for REST_S (see above)
REST_S = 3600
HEATER_W = 1000
HEATERS = {"washing_machine": "heat", "dishwasher": "heat", "tumble_dryer": "heat", "kettle": "boil"}
# (power above which it runs, seconds below it that end a run, shortest run) for kinds whose uses are runs
RUNS = {"kettle": (1000, 60, 10), "fridge_freezer": (40, 120, 60)}


@dataclass(frozen=True)
class RealTrace:
    name: str
    profile: str
    origin: str  # the excerpt's first line: file and window in tracebase
    watts: tuple[float, ...]  # at 1 Hz, each row held until the next

    def labelled(self) -> LabelledTrace:
        heater = HEATERS.get(self.profile, "")
        labels = tuple(heater if heater and w >= HEATER_W else "" for w in self.watts)
        return LabelledTrace(self.name, self.profile, self.name.split("-")[1], self.watts, labels, true_uses(self))


def load(name: str, folder: Path = TRACES, rest_s: int = REST_S) -> RealTrace:
    path = folder / f"{name}.csv"
    lines = path.read_text().splitlines()
    origin = lines[0].lstrip("# ")
    profile = lines[1].removeprefix("# profile ").strip()
    rows = [(int(a), float(b)) for a, b in (ln.split(",") for ln in lines if ln and not ln.startswith("#"))]
    watts: list[float] = []
    for (t, w), (t_next, _) in zip(rows, [*rows[1:], (rows[-1][0] + 1, 0.0)], strict=True):
        watts += [w] * max(0, t_next - max(t, len(watts)))
    last = watts[-600:]
    if rest_s and len(last) == 600 and max(last) < REST_W:
        watts += (last * (rest_s // 600 + 1))[:rest_s]
    return RealTrace(name, profile, origin, tuple(watts))


def names(folder: Path = TRACES) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.csv"))


def true_uses(tr: RealTrace) -> tuple[tuple[int, int], ...]:
    """Programme machines: one use, from the first to the last second above 10 W. Kettles and fridges: each run
    above the kind's power (`RUNS`), runs closer than its pause merged, shorter than its shortest dropped."""
    w = tr.watts
    if tr.profile not in RUNS:
        on = [i for i, x in enumerate(w) if x > 10]
        return ((on[0], on[-1] + 1),) if on else ()
    above, pause, shortest = RUNS[tr.profile]
    runs: list[list[int]] = []
    for i, x in enumerate(w):
        if x > above:
            if runs and i - runs[-1][1] <= pause:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
    return tuple((a, b) for a, b in runs if b - a >= shortest)


@dataclass(frozen=True)
class RealScore:
    name: str
    heater_right: float | None  # None: no heater energy in the trace (or no heater in the profile)
    uses: int
    true_uses: int
    shares: dict[str, float]  # function -> share of the billed energy
    billed_mwh: int
    true_mwh: int
    start_lag_s: int  # the largest |detected - true| use start, and end, over matched uses
    end_lag_s: int


def score(tr: RealTrace, records: list[UsageRecord]) -> RealScore:
    lt = tr.labelled()
    billed: dict[str, int] = {}
    heat_right = heat_total = 0.0
    heater = HEATERS.get(tr.profile, "")
    for r in records:
        if r.kind == RecordKind.CYCLE:
            continue
        fn = r.function if r.kind != RecordKind.GAP else "(gap)"
        billed[fn] = billed.get(fn, 0) + r.energy_mwh
        a, b = _second(r.t_start_mono_ns), _second(r.t_end_mono_ns)
        hot = sum(x for x in tr.watts[a:b] if x >= HEATER_W)
        heat_total += hot
        if fn == heater:
            heat_right += hot
    total = sum(billed.values()) or 1
    cycles = [r for r in records if r.kind == RecordKind.CYCLE]
    start_lag = end_lag = 0
    for c in cycles:
        a, b = _second(c.t_start_mono_ns), _second(c.t_end_mono_ns)
        over = [(min(b, ue) - max(a, ua), ua, ue) for ua, ue in lt.uses if min(b, ue) > max(a, ua)]
        if over:
            _, ua, ue = max(over)
            start_lag, end_lag = max(start_lag, abs(a - ua)), max(end_lag, abs(b - ue))
    return RealScore(tr.name, heat_right / heat_total if heat_total else None, len(cycles), len(lt.uses),
                     {k: v / total for k, v in sorted(billed.items(), key=lambda kv: -kv[1])}, sum(billed.values()),
                     round(sum(tr.watts) / 3.6), start_lag, end_lag)


def _second(t_ns: int) -> int:
    return max(0, -(-(t_ns - T0_MONO) // 1_000_000_000))


def run(name: str, mode: str = "power", folder: Path = TRACES, rest_s: int = REST_S) -> tuple[RealTrace, RealScore]:
    tr = load(name, folder, rest_s)
    return tr, score(tr, replay(tr.labelled(), builtin_profile(tr.profile), mode))
