"""Replay a labelled trace through the real meter, as the daemon feeds it, and score what it billed.

`replay(trace, profile, mode)` builds the readings a gateway would see (1 Hz power; or 1 Hz power plus the energy
register; or an S0 pulse train alone), feeds them to `ApplianceMeter` with a tick every second, and returns the
usage records. `score()` compares them with the labels:

- energy right: each function/interim record's energy is spread over its samples in proportion to their true power,
  and the share whose label is the record's function counts as right (gap records are never right); for a power
  source this is exactly the true energy of the samples billed to their own function;
- time right: the share of samples whose record names their labelled function;
- uses: cycle records vs the trace's true uses, and how far each detected use's end is from the true end.

`baseline()` is the naive meter measured beside it: one on/off threshold (on above `BASELINE_ON_W`), every "on"
sample billed to the kind's principal function (the one with most true energy in the suite), every rising edge a use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from koto.clock import Now
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.meter import ApplianceMeter
from metering.profile import Profile
from metering.records import RecordKind, UsageRecord

from .appliance_traces import LabelledTrace

BOOT = "00000000-0000-4000-8000-00000000a77b"
T0_MONO = 10_000_000_000
T0_WALL = 1_764_460_800.0
MW_NS_PER_MWH = 3_600_000_000_000
IMP_PER_KWH = 1000
BASELINE_ON_W = 10.0
MODES = ("power", "register", "pulses")


def resample(trace: LabelledTrace, every: int) -> LabelledTrace:
    """The trace as a meter polled every `every` samples would see it (each poll reads the power of that moment; the
    labels and uses follow the polls)."""
    if every <= 1:
        return trace
    from dataclasses import replace

    return replace(trace, watts=trace.watts[::every], labels=trace.labels[::every],
                   uses=tuple((-(-a // every), -(-b // every)) for a, b in trace.uses),
                   signals=tuple((-(-i // every), n, v) for i, n, v in trace.signals), step_s=trace.step_s * every)


def readings(trace: LabelledTrace, mode: str = "power", source: str = "meter",
             imp_per_kwh: int = IMP_PER_KWH) -> Iterable[Reading | Now]:
    """The readings a gateway sees for `trace`, with a tick (`Now`) after each second."""
    step = round(trace.step_s * 1e9)
    sig = {i: (n, v) for i, n, v in trace.signals}
    integral = 0  # mW*ns
    pulse = 1_000_000 * MW_NS_PER_MWH // imp_per_kwh
    count = 0
    if mode == "pulses":
        yield Reading(source, T0_MONO, T0_WALL, BOOT, Quantity.PULSES, 0)
    for i, w in enumerate(trace.watts):
        t = T0_MONO + i * step
        wall = T0_WALL + i * trace.step_s
        if i in sig:
            yield Reading(source, t, wall, BOOT, Quantity.SIGNAL, sig[i][1], signal=sig[i][0])
        p = round(w * 1000)
        if mode == "register":
            yield Reading(source, t, wall, BOOT, Quantity.ENERGY_MWH, integral // MW_NS_PER_MWH)
        if mode in ("power", "register"):
            yield Reading(source, t, wall, BOOT, Quantity.POWER_MW, p)
        elif p > 0:
            while (count + 1) * pulse <= integral + p * step:
                count += 1
                tp = t + (count * pulse - integral + p - 1) // p
                yield Reading(source, tp, T0_WALL + (tp - T0_MONO) / 1e9, BOOT, Quantity.PULSES, count)
        integral += p * step
        yield Now(t + step, wall + trace.step_s, True, BOOT)
    t_end = T0_MONO + len(trace.watts) * step
    if mode == "register":
        yield Reading(source, t_end, T0_WALL + len(trace.watts) * trace.step_s, BOOT, Quantity.ENERGY_MWH,
                      integral // MW_NS_PER_MWH)


def replay(trace: LabelledTrace, profile: Profile, mode: str = "power",
           imp_per_kwh: int = IMP_PER_KWH) -> list[UsageRecord]:
    """Every usage record the real meter makes of `trace` (closed at its end, as a clean stop would)."""
    spec = EnergySpec(mode, "meter", imp_per_kwh=imp_per_kwh, max_gap_s=600.0, step_mwh=1000)
    meter = ApplianceMeter(trace.profile, profile, energy=spec, interim_s=900)
    out: list[UsageRecord] = []
    last: Now | None = None
    for it in readings(trace, mode, imp_per_kwh=imp_per_kwh):
        if isinstance(it, Now):
            res = meter.tick(it)
            last = it
        else:
            res = meter.feed(it)
        if res:
            out += res.records
    if last is not None:
        out += meter.close(last).records
    return out


@dataclass(frozen=True)
class Score:
    trace: str
    energy_right: float  # share of billed energy given to the true function
    time_right: float
    uses: int
    true_uses: int
    end_lag_s: float  # the largest |detected end - true end| over matched uses (0 when none)
    billed_mwh: int
    wrong: dict[str, float]  # "label->billed": share of energy

    @property
    def ok(self) -> bool:
        return self.energy_right >= TARGET_ENERGY and self.uses == self.true_uses


TARGET_ENERGY = 0.90


def _sample_of(trace: LabelledTrace, t_ns: int) -> int:
    step = round(trace.step_s * 1e9)
    return max(0, min(len(trace.watts), -(-(t_ns - T0_MONO) // step)))


def score(trace: LabelledTrace, records: Sequence[UsageRecord]) -> Score:
    n = len(trace.watts)
    det = [""] * n
    right = total = 0.0
    wrong: dict[str, float] = {}
    for r in records:
        if r.kind == RecordKind.CYCLE:
            continue
        a, b = _sample_of(trace, r.t_start_mono_ns), _sample_of(trace, r.t_end_mono_ns)
        fn = r.function if r.kind != RecordKind.GAP else "(gap)"
        for i in range(a, b):
            det[i] = fn
        e = float(r.energy_mwh)
        total += e
        weights = trace.watts[a:b]
        wsum = sum(weights)
        if wsum <= 0:
            continue
        for i in range(a, b):
            share = e * trace.watts[i] / wsum
            if trace.labels[i] == fn:
                right += share
            else:
                k = f"{trace.labels[i]}->{fn}"
                wrong[k] = wrong.get(k, 0.0) + share
    time_right = sum(1 for i in range(n) if det[i] == trace.labels[i]) / n
    cycles = [r for r in records if r.kind == RecordKind.CYCLE]
    lag = 0.0
    for c in cycles:
        a, b = _sample_of(trace, c.t_start_mono_ns), _sample_of(trace, c.t_end_mono_ns)
        over = [(min(b, ue) - max(a, ua), ue) for ua, ue in trace.uses if min(b, ue) > max(a, ua)]
        if over:
            lag = max(lag, abs(b - max(over)[1]) * trace.step_s)
    tot = total or 1.0
    return Score(trace.name, right / tot, time_right, len(cycles), len(trace.uses), lag, round(total),
                 {k: v / tot for k, v in sorted(wrong.items(), key=lambda kv: -kv[1])})


def principal_functions(traces: Iterable[LabelledTrace]) -> dict[str, str]:
    """Per profile, the function with the most true energy over the traces: what a one-threshold meter bills."""
    energy: dict[str, dict[str, float]] = {}
    for tr in traces:
        per = energy.setdefault(tr.profile, {})
        for w, lab in zip(tr.watts, tr.labels, strict=True):
            per[lab] = per.get(lab, 0.0) + w
    return {p: max(per, key=lambda k: per[k]) for p, per in energy.items()}


def baseline(trace: LabelledTrace, on_function: str, off_function: str = "standby") -> Score:
    """The naive meter: on above BASELINE_ON_W billed to `on_function`, else `off_function`; each rising edge a use."""
    right = total = 0.0
    right_t = 0
    uses = 0
    on = False
    for w, lab in zip(trace.watts, trace.labels, strict=True):
        now_on = w > BASELINE_ON_W
        uses += now_on and not on
        on = now_on
        fn = on_function if on else off_function
        total += w
        if fn == lab:
            right += w
            right_t += 1
    return Score(trace.name, right / (total or 1.0), right_t / len(trace.watts), uses, len(trace.uses), 0.0,
                 round(total * trace.step_s / 3.6), {})
