"""Recorded-style appliance traces, built from a script of (seconds, watts) phases.

Each builder returns a list of `Reading` and `Now` items in time order: feed the readings to a meter and `tick`
it at each `Now` (`run(meter, trace)` does exactly that). Power is sampled every `step_s`; a register (when asked)
is the exact integral of that power floored to `step_mwh`, like a meter's display; pulses are emitted at the moment
each pulse's energy is complete. The same builders drive the demo and the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from koto.clock import Now
from koto.reading import Quantity, Reading
from metering.meter import ApplianceMeter, FeedResult

BOOT = "00000000-0000-4000-8000-000000000000"
T0_MONO = 1_000_000_000
T0_WALL = 1_764_460_800.0  # 2025-11-30T00:00:00Z
MW_NS_PER_MWH = 3_600_000_000_000

Phase = tuple[float, float]  # (seconds, watts)
Item = Reading | Now


@dataclass
class Script:
    """Phases plus signal changes: `signals[i]` is set at the start of phase i."""

    phases: list[Phase]
    signals: dict[int, tuple[str, str]] = field(default_factory=dict)
    expected: list[str] = field(default_factory=list)  # expected function sequence (consecutive duplicates merged)
    cycles: int = 0


def washer_script() -> Script:
    """Fill, heat, wash with tumbling pauses, rinse fill, wash, spin with a redistribution dip, standby."""
    tumble = [(12.0, 180.0), (4.0, 10.0)] * 12
    phases: list[Phase] = [(30, 1.0), (60, 20.0), (300, 2100.0), *tumble, (30, 22.0), *tumble,
                           (40, 450.0), (5, 150.0), (60, 520.0), (200, 2.0)]
    return Script(phases, expected=["standby", "fill", "heat", "wash", "fill", "wash", "spin", "standby"], cycles=1)


def dryer_script() -> Script:
    """Heat with thermostat pauses (motor only), cool-down tumble (five minutes: longer than a thermostat pause),
    standby."""
    phases: list[Phase] = [(20, 1.0), (120, 2350.0), (30, 240.0), (120, 2350.0), (40, 250.0), (120, 2300.0),
                           (300, 230.0), (300, 1.5)]
    return Script(phases, expected=["standby", "heat", "tumble", "standby"], cycles=1)


def kettle_script() -> Script:
    """Two boils with a pause between: two uses."""
    phases: list[Phase] = [(30, 0.0), (150, 2200.0), (120, 0.0), (100, 2900.0), (120, 0.0)]
    return Script(phases, expected=["standby", "boil", "standby", "boil", "standby"], cycles=2)


def ac_script() -> Script:
    """Cool (with a fan-only spell while the compressor rests), then heat by the mode signal, then off."""
    phases: list[Phase] = [(60, 3.0), (600, 800.0), (120, 40.0), (300, 750.0), (600, 900.0), (400, 3.0)]
    return Script(phases, signals={1: ("mode", "cool"), 4: ("mode", "heat")},
                  expected=["standby", "cool", "fan", "cool", "heat", "standby"], cycles=1)


def build(script: Script, *, source: str, power: bool = True, register: bool = False, pulses: int = 0,
          step_s: float = 1.0, register_every_s: float = 10.0, step_mwh: int = 1, register_base: int = 0,
          signal_source: str = "", boot_id: str = BOOT, t0_mono: int = T0_MONO, t0_wall: float = T0_WALL,
          tick: bool = True, wall_synced: bool = True) -> list[Item]:
    """Sample the script. `pulses` > 0 emits cumulative PULSES readings at `pulses` imp/kWh (at each pulse)."""
    out: list[Item] = []
    step_ns = round(step_s * 1e9)
    reg_every = round(register_every_s * 1e9)
    t = t0_mono
    integral = 0  # mW·ns
    next_reg = t0_mono
    pulse_mwh_ns = 1_000_000 * MW_NS_PER_MWH // pulses if pulses else 0
    count = 0
    if pulses:
        out.append(_r(source, t, t0_mono, t0_wall, boot_id, Quantity.PULSES, 0, wall_synced))
    for i, (secs, watts) in enumerate(script.phases):
        if i in script.signals:
            name, value = script.signals[i]
            out.append(Reading(signal_source or source, t, t0_wall + (t - t0_mono) / 1e9, boot_id, Quantity.SIGNAL,
                               value, wall_synced=wall_synced, signal=name))
        p = round(watts * 1000)
        end = t + round(secs * 1e9)
        while t < end:
            if register and t >= next_reg:
                out.append(_r(source, t, t0_mono, t0_wall, boot_id, Quantity.ENERGY_MWH,
                              register_base + integral // MW_NS_PER_MWH // step_mwh * step_mwh, wall_synced))
                next_reg += reg_every
            if power:
                out.append(_r(source, t, t0_mono, t0_wall, boot_id, Quantity.POWER_MW, p, wall_synced))
            if tick:
                out.append(Now(t, t0_wall + (t - t0_mono) / 1e9, wall_synced, boot_id))
            dt = min(step_ns, end - t)
            if pulses and p > 0:
                # pulses complete within this step, at their exact moments
                while (count + 1) * pulse_mwh_ns <= integral + p * dt:
                    count += 1
                    tp = t + (count * pulse_mwh_ns - integral + p - 1) // p
                    out.append(_r(source, tp, t0_mono, t0_wall, boot_id, Quantity.PULSES, count, wall_synced))
            integral += p * dt
            t += dt
    if register:
        out.append(_r(source, t, t0_mono, t0_wall, boot_id, Quantity.ENERGY_MWH,
                      register_base + integral // MW_NS_PER_MWH // step_mwh * step_mwh, wall_synced))
    if tick:
        out.append(Now(t, t0_wall + (t - t0_mono) / 1e9, wall_synced, boot_id))
    return out


def _r(source: str, t: int, t0_mono: int, t0_wall: float, boot: str, q: Quantity, v: int, synced: bool) -> Reading:
    return Reading(source, t, t0_wall + (t - t0_mono) / 1e9, boot, q, v, wall_synced=synced)


def end_of(items: Sequence[Item]) -> Now:
    last = items[-1]
    if isinstance(last, Now):
        return last
    return Now(last.t_mono_ns, last.t_wall, last.wall_synced, last.boot_id)


def run(meter: ApplianceMeter, items: Iterable[Item], *, close: bool = True) -> list[FeedResult]:
    """Feed readings and ticks; return every FeedResult that carried something (and the close result)."""
    results: list[FeedResult] = []
    last: Item | None = None
    for it in items:
        res = meter.tick(it) if isinstance(it, Now) else meter.feed(it)
        if res:
            results.append(res)
        last = it
    if close and last is not None:
        res = meter.close(end_of([last]))
        if res:
            results.append(res)
    return results


def function_sequence(results: Iterable[FeedResult]) -> list[str]:
    """Functions in the order they started (from events), consecutive duplicates merged."""
    seq: list[str] = []
    for res in results:
        for ev in res.events:
            if ev.kind == "function_started" and (not seq or seq[-1] != ev.function):
                seq.append(ev.function)
    return seq
