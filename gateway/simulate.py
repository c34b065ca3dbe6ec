"""Simulated appliances: what a real washer, kettle or air conditioner draws over a cycle, as a function of time.

The demo and the soak runs feed these into the *real* driver stacks (a pymodbus RTU server on a pty, MockFactory
pins, replayed BTHome adverts), so everything from the bus up is the production code. A script is a list of phases
(name, seconds, watts, signals); `power_w(t)` is the draw at `t` seconds after the start, with a small deterministic
ripple like a real motor's, and `energy_wh(t)` the exact integral of the nominal draw (what a meter's register shows).
Figures are typical EU appliances' (see metering/profiles/ for their sources).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    watts: float
    signals: dict[str, str] = field(default_factory=dict)
    ripple: float = 0.03  # relative amplitude of the deterministic ripple on top of `watts`


@dataclass
class Script:
    """A sequence of phases, optionally repeated; time before the start and after the end is the last phase."""

    name: str
    phases: list[Phase]
    repeat: bool = False
    _starts: list[float] = field(init=False, repr=False)
    _energy_before: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        t = 0.0
        e = 0.0
        self._starts = []
        self._energy_before = []
        for p in self.phases:
            self._starts.append(t)
            self._energy_before.append(e)
            t += p.seconds
            e += p.watts * p.seconds / 3600.0
        self.length_s = t
        self.cycle_energy_wh = e

    def _locate(self, t: float) -> tuple[int, float, int]:
        """(phase index, seconds into it, completed repetitions) for time `t`."""
        reps = 0
        if self.repeat and t >= self.length_s:
            reps = int(t // self.length_s)
            t -= reps * self.length_s
        if t < 0:
            return 0, 0.0, 0
        if t >= self.length_s:
            return len(self.phases) - 1, self.phases[-1].seconds + (t - self.length_s), reps
        i = bisect_right(self._starts, t) - 1
        return i, t - self._starts[i], reps

    def phase(self, t: float) -> Phase:
        return self.phases[self._locate(t)[0]]

    def power_w(self, t: float) -> float:
        i, into, _ = self._locate(t)
        p = self.phases[i]
        if p.watts <= 0:
            return 0.0
        wobble = math.sin(into * 2.1) * 0.6 + math.sin(into * 0.37 + i) * 0.4
        return max(0.0, p.watts * (1.0 + p.ripple * wobble))

    def signals(self, t: float) -> dict[str, str]:
        return dict(self.phase(t).signals)

    def energy_wh(self, t: float) -> float:
        """Exact cumulative energy of the nominal draw from the start to `t` (a meter register's truth)."""
        i, into, reps = self._locate(t)
        p = self.phases[i]
        return reps * self.cycle_energy_wh + self._energy_before[i] + p.watts * into / 3600.0


def washer() -> Script:
    """A 40 °C cotton programme, shortened: fill, heat, wash, a short spin, fill, rinse, the final spin, standby.

    The drum tumbles as a real one does, in 12 s bursts with 4 s pauses at the electronics' draw (the washing machine
    profile tells tumbling from a spin by those pauses: a spin holds its power)."""

    def tumble(seconds: float, watts: float) -> list[Phase]:
        return [p for _ in range(round(seconds / 16)) for p in (Phase("wash", 12, watts), Phase("pause", 4, 6))]

    wash = [*tumble(160, 190), *tumble(160, 210)]
    return Script("washer", [
        Phase("standby", 60, 1.5, ripple=0.0),
        Phase("fill", 120, 14),
        Phase("heat", 540, 2050),
        *wash, *wash,
        Phase("spin", 90, 350, ripple=0.08),
        Phase("fill", 90, 14),
        *tumble(176, 200),
        Phase("spin", 300, 480, ripple=0.08),
        Phase("standby", 240, 1.5, ripple=0.0),
    ])


def kettle() -> Script:
    """Two boils: a full kettle (3 min 20 s at 2.2 kW), a pause, a half kettle."""
    return Script("kettle", [
        Phase("off", 90, 0),
        Phase("boil", 200, 2200, ripple=0.01),
        Phase("off", 600, 0),
        Phase("boil", 110, 2200, ripple=0.01),
        Phase("off", 900, 0),
    ])


def air_conditioner() -> Script:
    """A split unit cooling in the afternoon, then the reversing valve switches it to heating in the evening."""
    return Script("air_conditioner", [
        Phase("idle", 60, 4, {"mode": "off"}, ripple=0.0),
        Phase("cool", 720, 850, {"mode": "cool"}, ripple=0.06),
        Phase("idle", 180, 4, {"mode": "off"}, ripple=0.0),
        Phase("heat", 720, 1100, {"mode": "heat"}, ripple=0.06),
        Phase("idle", 600, 4, {"mode": "off"}, ripple=0.0),
    ])


SCRIPTS = {"washer": washer, "kettle": kettle, "air_conditioner": air_conditioner}
