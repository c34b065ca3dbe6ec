"""Replay a recorded power trace through the real meter with a profile: which function it gives each stretch of
time, and the uses it counts — what `koto profile check` shows and `koto profile suggest` tunes.

The readings go to an `ApplianceMeter` exactly as the daemon feeds them (power in mW, signals, one boot), so what
is shown is what would have been billed with that profile, dwell and hysteresis included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from koto.clock import Now
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.meter import ApplianceMeter
from metering.profile import Profile
from metering.records import RecordKind, UsageRecord

from .power_log import TracePoint

BOOT = "00000000-0000-4000-8000-00000000c0de"
GAP = "(gap)"


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of time given to one function (consecutive records of it merged), wall seconds."""

    start: float
    end: float
    function: str
    energy_mwh: int
    peak_mw: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Use:
    start: float
    end: float
    energy_mwh: int


@dataclass(frozen=True)
class Timeline:
    points: tuple[TracePoint, ...]  # the power readings replayed
    signals: tuple[TracePoint, ...]  # and the signal readings
    spans: tuple[Span, ...]
    uses: tuple[Use, ...]
    profile: Profile
    open_use: bool = False  # a use was still running when the period ended (it never came to rest)

    @property
    def start(self) -> float:
        return self.points[0].t if self.points else 0.0

    @property
    def end(self) -> float:
        return self.points[-1].t if self.points else 0.0

    def seconds_by_function(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.spans:
            out[s.function] = out.get(s.function, 0.0) + s.seconds
        return out

    def energy_by_function(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.spans:
            out[s.function] = out.get(s.function, 0) + s.energy_mwh
        return out


def replay(points: Sequence[TracePoint], profile: Profile, *, appliance: str = "appliance",
           since: float | None = None, max_gap_s: float = 300.0, signals: Sequence[TracePoint] = ()) -> Timeline:
    """Feed `points` and `signals` (time order; those before `since` skipped) to a fresh power meter with
    `profile`."""
    pts = [p for p in points if since is None or p.t >= since]
    if signals:
        pts = sorted([*pts, *(s for s in signals if since is None or s.t >= since)],
                     key=lambda p: (p.t, p.power_mw is not None))
    power = tuple(p for p in pts if p.power_mw is not None)
    meter = ApplianceMeter(appliance, profile, energy=EnergySpec("power", "trace", max_gap_s=max_gap_s))
    records: list[UsageRecord] = []
    t0 = pts[0].t if pts else 0.0
    reject = profile.max_power_mw * 3 // 2
    for p in pts:
        mono = 1_000_000_000 + round((p.t - t0) * 1e9)
        if p.power_mw is not None:
            r = Reading("trace", mono, p.t, BOOT, Quantity.POWER_MW, min(p.power_mw, reject))
        else:
            r = Reading("trace", mono, p.t, BOOT, Quantity.SIGNAL, p.value, signal=p.signal)
        res = meter.feed(r)
        if res:
            records += res.records
    running = meter.cycle.running
    if pts:
        last = pts[-1]
        records += meter.close(Now(1_000_000_000 + round((last.t - t0) * 1e9), last.t, True, BOOT)).records
    sigs = tuple(p for p in pts if p.power_mw is None)
    return Timeline(power, sigs, tuple(_spans(records)), tuple(_uses(records)), profile, running)


def _spans(records: Sequence[UsageRecord]) -> list[Span]:
    out: list[Span] = []
    for r in records:
        if r.kind == RecordKind.CYCLE:
            continue
        fn = GAP if r.kind == RecordKind.GAP else r.function
        if r.t_end_wall <= r.t_start_wall and r.kind != RecordKind.GAP:
            continue
        peak = r.peak_power_mw or 0
        if out and out[-1].function == fn:
            last = out[-1]
            out[-1] = Span(last.start, r.t_end_wall, fn, last.energy_mwh + (r.energy_mwh or 0), max(last.peak_mw, peak))
        else:
            out.append(Span(r.t_start_wall, r.t_end_wall, fn, r.energy_mwh or 0, peak))
    return out


def _uses(records: Sequence[UsageRecord]) -> list[Use]:
    return [Use(r.t_start_wall, r.t_end_wall, r.cycle_energy_mwh or 0) for r in records if r.kind == RecordKind.CYCLE]
