"""Gaps where the silence was (issue 9): a source silent beyond `max_gap_s` leaves a `gap` record that starts at its
last reading, the function before it ends there, and the log names the true length of the silence.

The property drives a meter as the daemon does — readings every poll, a tick every second in between, signals from
another source now and then — through any sequence of power phases and silences (short ones within `max_gap_s` and
long ones beyond), with a power source, a register with power samples, or a counter without (a register alone, S0
pulses alone, whose every poll restates its count as the S0 heartbeat does). For every silence longer than `max_gap_s`:
a gap record's interval contains it, no function or interim record reaches into it by more than one poll interval
(in fact not at all), and the gap's event says how long it really was. Energy is conserved as everywhere else.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from koto.clock import Now
from koto.reading import Quantity, Reading
from metering.energy import MW_NS_PER_MWH, EnergySpec
from metering.meter import ApplianceMeter, FeedResult
from metering.profile import builtin_profile
from metering.records import PARTITION_KINDS, RecordKind, UsageRecord

S = 1_000_000_000
GAP_S = 30
T0 = 1_000 * S
WALL0 = 1_764_460_800.0
BOOT = "boot-a"
IMP_PER_KWH = 100_000  # (a fine counter, so that the short phases below count something)
PULSE_MWH = 1_000_000 // IMP_PER_KWH

phase = st.one_of(
    st.tuples(st.just("run"), st.integers(1, 40), st.sampled_from([0, 2, 150, 900, 2_000, 2_900])),  # n seconds, W
    st.tuples(st.just("silent"), st.integers(GAP_S + 1, 200), st.sampled_from([0, 2_000])),  # beyond max_gap
    st.tuples(st.just("silent"), st.integers(1, GAP_S - 1), st.sampled_from([0, 2_000])),  # within max_gap
    st.tuples(st.just("mode"), st.just(0), st.sampled_from([0, 1])),
)


@dataclass
class Run:
    kind: str
    poll_s: int
    meter: ApplianceMeter
    t: int = T0
    p_mw: int = 0  # the appliance's true power now
    truth: int = 0  # mW·ns used since the start (what a register shows, floored to mWh)
    last_read: int | None = None
    first_reg: int | None = None
    last_reg: int | None = None
    silences: list[tuple[int, int]] = field(default_factory=list)  # (last reading before, first reading after)
    powers: list[tuple[int, int]] = field(default_factory=list)  # (t, mW) of every power reading fed
    regs: dict[int, int] = field(default_factory=dict)  # t -> register value fed
    results: list[FeedResult] = field(default_factory=list)
    modes: itertools.cycle[str] = field(default_factory=lambda: itertools.cycle(["heat", "cool"]))

    def now(self) -> Now:
        return Now(self.t, WALL0 + (self.t - T0) / S, True, BOOT)

    def take(self, res: FeedResult) -> None:
        if res:
            self.results.append(res)

    def reading(self, q: Quantity, v: int | str, *, source: str = "m", signal: str = "") -> Reading:
        n = self.now()
        return Reading(source, n.mono_ns, n.wall, BOOT, q, v, signal=signal)

    def poll(self) -> None:
        if self.last_read is not None and self.t - self.last_read > GAP_S * S:
            self.silences.append((self.last_read, self.t))
        if self.kind != "power":
            # a register (with or without power samples) in mWh; an S0 count (its heartbeat restates it)
            reg = self.truth // MW_NS_PER_MWH // (PULSE_MWH if self.kind == "pulses" else 1)
            self.first_reg = reg if self.first_reg is None else self.first_reg
            self.last_reg = reg
            self.regs[self.t] = reg
            q = Quantity.PULSES if self.kind == "pulses" else Quantity.ENERGY_MWH
            self.take(self.meter.feed(self.reading(q, reg)))
        if self.kind in ("power", "register"):
            self.take(self.meter.feed(self.reading(Quantity.POWER_MW, self.p_mw)))
            self.powers.append((self.t, self.p_mw))
        self.last_read = self.t

    def second(self, *, polling: bool) -> None:
        """One second of the daemon's life: a poll when one is due, then the second passes and a tick."""
        if polling and (self.t - T0) // S % self.poll_s == 0:
            self.poll()
        self.truth += self.p_mw * S
        self.t += S
        self.take(self.meter.tick(self.now()))

    def do(self, what: str, n: int, v: int) -> None:
        if what == "mode":
            self.take(self.meter.feed(self.reading(Quantity.SIGNAL, next(self.modes), source="ir", signal="mode")))
            return
        self.p_mw = v * 1000
        for _ in range(n):
            self.second(polling=what == "run")


def records(run: Run) -> list[UsageRecord]:
    return [i for r in run.results for i in r.items if isinstance(i, UsageRecord)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["power", "register", "bare_register", "pulses"]),
       st.sampled_from(["kettle", "air_conditioner", "washing_machine"]),
       st.integers(1, 5), st.lists(phase, min_size=1, max_size=14))
# the kettle: boiling, the meter falls silent for 91 s, readings return
@example("register", "kettle", 2, [("run", 20, 0), ("run", 30, 2_000), ("silent", 91, 2_000), ("run", 20, 0)])
@example("power", "air_conditioner", 3, [("run", 10, 900), ("mode", 0, 0), ("silent", 40, 900), ("run", 10, 0)])
# a counter without power samples (S0 pulses alone): its ticks once covered time at once, so the silence's first
# max_gap_s went to the function and the gap began at the tick that found the source stale
@example("pulses", "kettle", 1, [("run", 20, 2_000), ("silent", 91, 2_000), ("run", 20, 0)])
@example("bare_register", "kettle", 2, [("run", 20, 2_000), ("silent", 91, 2_000), ("run", 20, 0)])
def test_a_silence_is_a_gap_from_the_last_reading_and_no_function_reaches_into_it(
        kind: str, profile: str, poll_s: int, phases: list[tuple[str, int, int]]) -> None:
    spec = EnergySpec("register" if kind == "bare_register" else kind, "m", max_gap_s=GAP_S,  # type: ignore[arg-type]
                      imp_per_kwh=IMP_PER_KWH)
    meter = ApplianceMeter("app", builtin_profile(profile), energy=spec, interim_s=60)
    run = Run(kind, poll_s, meter)
    for ph in [("run", 3, 0), *phases, ("run", 2, 0)]:
        run.do(*ph)
    run.poll()  # a last reading, then a clean stop at it
    run.take(meter.close(run.now()))

    recs = records(run)
    part = [r for r in recs if r.kind in PARTITION_KINDS]
    for a, b in itertools.pairwise(part):  # the partition tiles time (and the register chain)
        assert b.t_start_mono_ns == a.t_end_mono_ns, (a, b)
        if kind != "power":
            assert b.register_start_mwh == a.register_end_mwh
    gaps = [r for r in part if r.kind == RecordKind.GAP]
    funcs = [r for r in part if r.kind != RecordKind.GAP]
    gap_words = [e.message for r in run.results for e in r.events if e.kind == "gap"]
    stale_words = [e.message for r in run.results for e in r.events if e.kind == "source_stale"]
    for t_a, t_b in run.silences:
        holding = [g for g in gaps if g.t_start_mono_ns <= t_a and g.t_end_mono_ns >= t_b]
        assert len(holding) == 1, (t_a, t_b, gaps)
        assert holding[0].t_start_mono_ns == t_a  # the gap starts at the last reading
        for r in funcs:
            reach = min(r.t_end_mono_ns, t_b) - max(r.t_start_mono_ns, t_a)
            assert reach <= 0, (r, t_a, t_b)  # (the issue allows one poll interval; nothing reaches in at all)
        silent_s = (t_b - t_a) // S
        assert any(f"gap of {silent_s} s recorded" in w for w in gap_words), (silent_s, gap_words)
        if kind != "power":  # what the register showed across the silence went to the gap, none to a function
            assert holding[0].energy_mwh == (run.regs[t_b] - run.regs[t_a]) * (PULSE_MWH if kind == "pulses" else 1)
        assert any(f"for {s} s: energy from" in w for w in stale_words for s in range(GAP_S, silent_s + 1))
    assert len(gaps) == len(run.silences)  # and a silence within max_gap_s is no gap

    total = sum(r.energy_mwh for r in part)
    if kind != "power":
        assert run.first_reg is not None and run.last_reg is not None
        assert total == (run.last_reg - run.first_reg) * (PULSE_MWH if kind == "pulses" else 1)
    else:
        assert all(g.energy_mwh == 0 for g in gaps)
        assert total == _integral_between_readings(run) // MW_NS_PER_MWH


def _integral_between_readings(run: Run) -> int:
    """An independent integration of the power readings: each reading's power until the next, only where the next
    came within max_gap_s (the clean stop is at the last reading, adding nothing)."""
    return sum(p * (t1 - t0) for (t0, p), (t1, _) in itertools.pairwise(run.powers) if t1 - t0 <= GAP_S * S)
