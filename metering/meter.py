"""`ApplianceMeter`: readings of one appliance in, what happened out (events for people, records for the ledger).

Pure: no clock reads, no I/O, no threads. One meter per appliance and energy source.

Segments. The meter keeps one *open segment* (a function running since a moment), cut into records:
- `function`: the segment (or its last slice) when the function changes, a use ends, the source stops or goes stale;
- `interim`: a slice every `interim_s` of a long segment (and a cut before a zero-length `gap` at an implausible
  register jump), so the ledger never waits hours for a long function;
- `gap`: energy for a time nobody watched (a restart, a stale source, an interval longer than `max_gap_s`, an
  implausible register jump), billed to no function and never dropped.
Per source these tile time in emission order (each record starts where the previous one ended; a reboot's gap has
zero monotonic length and names the previous boot) and, for registers, chain `register_start_mwh` to the previous
`register_end_mwh` on the continuous scale of `energy.py`. A `cycle` record summarises a finished use after its
last segment record: `uses` 1, `cycle_id`, `cycle_energy_mwh` (the ledger fills first/last seq from the cycle id);
its wall interval covers the whole use, its monotonic stamps and `boot_id` are those of the boot it ended in (a use
that went on across a reboot starts, on that clock, where it resumed, and names its first boot in `start_boot_id`).

Power sources emit a segment's record when it closes. Register and pulse sources hold closed segments until the next
authority reading, which splits its delta over them (see `energy.py`) and emits them in order.

Restart (`state=` from `snapshot()`). The first reading after a restore continues as if nothing happened when it is
in the same boot and within `max_gap_s` of the last reading the snapshot saw (the interval is attributed to the open
segment). Otherwise, and always after a clean `close()`, everything from the last covered moment to the first
reading (register/pulses: the first authority reading) is one `gap` record with reason "restart" holding the whole
register delta, so conservation holds exactly across the restart.

Bad readings never raise: they are counted in `meter.rejected[reason]`, reported as a `rejected` event, and never
reach a total.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from koto.clock import Now
from koto.reading import Quantity, Reading

from .detect import CANDIDATE, CYCLE_ENDED, CYCLE_STARTED, DROPPED, NO_CHANGE, CycleTracker, Detector
from .energy import FIRST, JUMP, MW_NS_PER_MWH, OK, RESET, SWAP, WRAP, Authority, EnergySpec, split_largest_remainder
from .policy import Decision, Policy
from .profile import Profile
from .records import LIFECYCLE_TYPE, Draft, RecordKind, TimeStatus, UsageRecord, usage_draft

REJECT_FACTOR_NUM, REJECT_FACTOR_DEN = 3, 2  # power above 1.5 x the profile's max_power is rejected
IDENTITY_SIGNALS = frozenset({"serial", "meter_id"})  # a SIGNAL from the energy source naming the meter itself
STATE_VERSION = 1

_POWER = Quantity.POWER_MW
_ENERGY = Quantity.ENERGY_MWH
_PULSES = Quantity.PULSES
_SIGNAL = Quantity.SIGNAL
_U = TimeStatus.UNSYNCED
_S = TimeStatus.SYNCED


@dataclass(frozen=True, slots=True)
class LifecycleNote:
    """Something that happened to a source that a bill reader must be told (register reset, wrap, swap...)."""

    event: str
    source: str
    t_wall: float
    t_mono_ns: int
    boot_id: str
    time_status: TimeStatus
    details: dict[str, str | int] = field(default_factory=dict)

    def draft(self, subject: str, appliance: str) -> Draft:
        data: dict[str, Any] = {"event": self.event, "appliance": appliance, "source": self.source,
                                "boot_id": self.boot_id, "mono_ns": self.t_mono_ns,
                                "timestatus": str(self.time_status)}
        for k, v in self.details.items():
            data.setdefault(k, v)
        return Draft(LIFECYCLE_TYPE, subject, self.t_wall, self.time_status, data)


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """A human-meaningful event: function_started, function_ended, cycle_started, cycle_ended, rejected, gap,
    source_stale, register_reset, register_wrap, meter_swap, implausible_jump. `message` is plain words."""

    kind: str
    appliance: str
    function: str
    power_mw: int
    t_wall: float
    message: str
    decision: Decision | None = None


Item = UsageRecord | LifecycleNote


@dataclass(frozen=True, slots=True)
class FeedResult:
    events: tuple[MeterEvent, ...] = ()
    items: tuple[Item, ...] = ()
    appliance: str = ""

    @property
    def records(self) -> list[UsageRecord]:
        return [i for i in self.items if isinstance(i, UsageRecord)]

    @property
    def notes(self) -> list[LifecycleNote]:
        return [i for i in self.items if isinstance(i, LifecycleNote)]

    def drafts(self, subject: str) -> list[Draft]:
        """The items as ledger drafts, in order (usage records and lifecycle notes)."""
        return [usage_draft(i, subject) if isinstance(i, UsageRecord) else i.draft(subject, self.appliance)
                for i in self.items]

    def __bool__(self) -> bool:
        return bool(self.events or self.items)


EMPTY = FeedResult()


class _Slice:
    """A closed piece of a segment waiting for (or done with) its energy."""

    __slots__ = ("boot", "cycle_id", "dur", "e", "ends_cycle", "function", "kind", "peak", "s0", "s1",
                 "t0", "t1", "w", "w0", "w1")

    def __init__(self, kind: RecordKind, function: str, cycle_id: str, t0: int, w0: float, s0: bool, boot: str,
                 t1: int, w1: float, s1: bool, peak: int, e: int, w: int, dur: int) -> None:
        self.kind, self.function, self.cycle_id = kind, function, cycle_id
        self.t0, self.w0, self.s0, self.boot = t0, w0, s0, boot
        self.t1, self.w1, self.s1 = t1, w1, s1
        self.peak, self.e, self.w, self.dur = peak, e, w, dur
        self.ends_cycle = False

    def dump(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "function": self.function, "cycle_id": self.cycle_id, "t0": self.t0,
                "w0": repr(self.w0), "s0": int(self.s0), "boot": self.boot, "t1": self.t1, "w1": repr(self.w1),
                "s1": int(self.s1), "peak": self.peak, "e": self.e, "w": self.w, "dur": self.dur,
                "ends_cycle": int(self.ends_cycle)}

    @classmethod
    def load(cls, d: dict[str, Any]) -> _Slice:
        s = cls(RecordKind(d["kind"]), str(d["function"]), str(d["cycle_id"]), int(d["t0"]), float(d["w0"]),
                bool(int(d["s0"])), str(d["boot"]), int(d["t1"]), float(d["w1"]), bool(int(d["s1"])),
                int(d["peak"]), int(d["e"]), int(d["w"]), int(d["dur"]))
        s.ends_cycle = bool(int(d["ends_cycle"]))
        return s


def _w(x: float) -> str:
    return f"{x / 1000:.0f} W" if x >= 10_000 else f"{x / 1000:.1f} W"


class ApplianceMeter:
    """Meter one appliance. See the module docstring for the record rules.

    `feed(reading)`, `tick(now)` and `close(now)` return a `FeedResult` (the shared empty one when nothing
    happened). `snapshot()` returns JSON-able state (str/int only) to pass back as `state=`.
    """

    def __init__(self, appliance: str, profile: Profile, *, energy: EnergySpec, policy: Policy | None = None,
                 interim_s: int = 900, state: dict[str, Any] | None = None) -> None:
        if interim_s <= 0:
            raise ValueError(f"interim_s must be > 0, not {interim_s!r}")
        self.appliance = appliance
        self.profile = profile
        self.spec = energy
        self.policy = policy
        self.rejected: Counter[str] = Counter()
        self.ignored = 0  # diagnostic quantities (voltage, rssi...), not metered
        self.readings = 0
        self._src = energy.source
        self._power_kind = energy.kind == "power"
        self._gap_ns = int(energy.max_gap_s * 1_000_000_000)
        self._interim_ns = int(interim_s) * 1_000_000_000
        self._max_mw = profile.max_power_mw
        self._reject_mw = profile.max_power_mw * REJECT_FACTOR_NUM // REJECT_FACTOR_DEN
        self.signals: dict[str, str] = {}
        self.detector = Detector(profile, self.signals)
        self.cycle = CycleTracker(profile.cycle)
        self._auth = Authority(energy)
        self._ev: list[MeterEvent] = []
        self._items: list[Item] = []
        # last accepted reading of the energy source
        self._last_t = 0
        self._last_boot = ""
        # cursor: the moment up to which the open segment covers time (and power is integrated / weighted)
        self._ct = 0
        self._cw = 0.0
        self._cs = True
        self._p = 0  # power in force since the cursor, mW
        self._acc = 0  # power kind: integral remainder below one mWh, mW·ns
        self._seen_power = False
        self._auth_t = 0
        self._auth_wall = 0.0
        self._auth_boot = ""
        self._chain = 0  # register kind: continuous register value at the end of the last emitted record
        # the open segment
        self._open = False
        self._o_fn = ""
        self._o_cyc = ""
        self._o_t0 = 0
        self._o_w0 = 0.0
        self._o_s0 = True
        self._o_peak = 0
        self._o_e = 0
        self._o_w = 0
        self._o_dur = 0
        self._due = 2**63  # interim due (mono ns)
        # the mark: where a pending candidate function began; what accumulated since moves to it on a switch
        self._m_on = False
        self._m_t = 0
        self._m_w = 0.0
        self._m_s = True
        self._m_e = 0
        self._m_pw = 0
        self._m_dur = 0
        self._m_peak = 0
        self._m_prepeak = 0
        self._held: list[_Slice] = []
        # a gap that started at `_g_t` (cursor at the time) and ends at the next reading (power) / authority reading
        self._gap = ""  # reason, "" = none
        self._g_t = 0
        self._g_w = 0.0
        self._g_s = True
        self._g_boot = ""
        self._awaiting = not self._power_kind  # register/pulses: no authority baseline yet
        self._restored = False
        self._restored_t = 0
        self._stopped = False
        self._cycle_id = ""
        self._cycles: dict[str, dict[str, Any]] = {}
        self._identity = ""
        self._swap_pending = False
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ public

    @property
    def function(self) -> str:
        """The function running now ("" before the first reading)."""
        return self.detector.function

    @property
    def power_mw(self) -> int:
        return self._p

    def feed(self, r: Reading) -> FeedResult:
        self.readings += 1
        if r.quantity is _POWER and self._power_kind:
            v = r.value
            if type(v) is not int or v < 0 or v > self._reject_mw or r.source != self._src:
                self._reject_power(r)
            else:
                t = r.t_mono_ns
                dt = t - self._ct
                if r.boot_id != self._last_boot or t - self._last_t > self._gap_ns or not self._open:
                    if r.boot_id == self._last_boot and t < self._last_t:
                        self._reject(r, "time_backwards", "time went backwards")
                    else:
                        self._discontinuity(r)
                        self._power_step(r, v)
                elif t < self._last_t:
                    self._reject(r, "time_backwards", "time went backwards")
                else:
                    self._last_t = t
                    if dt > 0:
                        acc = self._acc + self._p * dt
                        if acc >= MW_NS_PER_MWH:
                            e = acc // MW_NS_PER_MWH
                            self._o_e += e
                            if self._m_on:
                                self._m_e += e
                            acc -= e * MW_NS_PER_MWH
                        self._acc = acc
                        self._ct = t
                        self._cw = r.t_wall
                        self._cs = r.wall_synced
                    self._p = v
                    sw = self.detector.update(t, v)
                    if sw != NO_CHANGE:
                        self._det(sw, t, r.t_wall, r.wall_synced, v)
                    if v > self._o_peak:
                        self._o_peak = v
                    if self._m_on and v > self._m_peak:
                        self._m_peak = v
                    st = self.cycle.update(t, v)
                    if st:
                        self._cycle_change(st, r)
                    if t >= self._due:
                        self._cut(RecordKind.INTERIM, r.t_mono_ns, r.t_wall, r.wall_synced)
        else:
            self._feed_other(r)
        if self._ev or self._items:
            return self._result()
        return EMPTY

    def tick(self, now: Now) -> FeedResult:
        """Close what time alone closes: dwell-confirmed switches, the end of a use, interim slices, a stale source."""
        if not self._last_boot or now.boot_id != self._last_boot or now.mono_ns < self._ct:
            return EMPTY
        t = now.mono_ns
        if t - self._last_t > self._gap_ns:
            if self._open:
                self._ev.append(MeterEvent("source_stale", self.appliance, self.function, self._p, now.wall,
                                           f"{self.appliance}: no readings from {self._src} for "
                                           f"{(t - self._last_t) // 1_000_000_000} s; metering paused"))
                self._begin_gap("stale")
        elif self._open:
            self._advance(t, now.wall, now.synced)
            p = self._p
            if not self._seen_power and self.spec.kind == "pulses" and t > self._auth_t:
                # no power samples: one more pulse could not have come later at more than this power
                bound = (1_000_000 * MW_NS_PER_MWH // self.spec.imp_per_kwh) // (t - self._auth_t)
                if bound < p:
                    p = self._p = bound
            sw = self.detector.update(t, p)
            if sw != NO_CHANGE:
                self._det(sw, t, now.wall, now.synced, p)
            st = self.cycle.update(t, p)
            if st:
                self._cycle_change_at(st, t, now.wall, now.synced, p)
            if t >= self._due:
                self._cut(RecordKind.INTERIM, t, now.wall, now.synced)
        return self._result() if self._ev or self._items else EMPTY

    def close(self, now: Now) -> FeedResult:
        """Clean stop: close the open segment with a `function` record (its energy as known; for register and pulse
        sources, energy after the last authority reading shows up after the restart as a "restart" gap)."""
        if self._open:
            if now.boot_id == self._last_boot and 0 <= now.mono_ns - self._last_t <= self._gap_ns:
                self._advance(now.mono_ns, now.wall, now.synced)
            self._close_open(RecordKind.FUNCTION, self._ct, self._cw, self._cs)
        if self._held:
            self._allocate(0)
        self._stopped = True
        self._open = False
        return self._result() if self._ev or self._items else EMPTY

    # ------------------------------------------------------------------ readings

    def _reject_power(self, r: Reading) -> None:
        v = r.value
        if r.source != self._src:
            self._reject(r, "wrong_source", f"reading from {r.source!r}, this meter's energy source is {self._src!r}")
        elif isinstance(v, float) and not math.isfinite(v):
            self._reject(r, "not_a_number", "power is not a number")
        elif type(v) is not int:
            self._reject(r, "not_integer", f"power must be an integer in mW, got {type(v).__name__}")
        elif v < 0:
            self._reject(r, "negative", f"negative power ({v} mW)")
        else:
            self._reject(r, "beyond_max", f"power {_w(v)} is far beyond the profile's maximum {_w(self._max_mw)}")

    def _reject(self, r: Reading, reason: str, words: str) -> None:
        self.rejected[reason] += 1
        self._ev.append(MeterEvent("rejected", self.appliance, self.detector.function, 0, r.t_wall,
                                   f"{self.appliance}: reading rejected: {words}"))

    def _feed_other(self, r: Reading) -> None:
        q = r.quantity
        if q is _SIGNAL:
            self._feed_signal(r)
            return
        if q is not _POWER and q is not _ENERGY and q is not _PULSES:
            self.ignored += 1
            return
        if r.source != self._src:
            self._reject(r, "wrong_source", f"reading from {r.source!r}, this meter's energy source is {self._src!r}")
            return
        if r.signal != self.spec.channel:
            # A meter may report several channels (an SDM630's phases L1-L3 beside the total, an SDM120's import
            # register beside its total register): the meter takes exactly one, the configured channel.
            self.ignored += 1
            return
        kind = self.spec.kind
        if (q is _ENERGY and kind != "register") or (q is _PULSES and kind != "pulses"):
            self._reject(r, "wrong_quantity", f"{q.value} reading on a {kind} source")
            return
        v = r.value
        if type(v) is not int:
            if isinstance(v, float) and not math.isfinite(v):
                self._reject(r, "not_a_number", f"{q.value} is not a number")
            else:
                self._reject(r, "not_integer", f"{q.value} must be an integer, got {type(v).__name__}")
            return
        if v < 0:
            self._reject(r, "negative", f"negative {'register' if q is _ENERGY else q.value} ({v})")
            return
        if q is _POWER and v > self._reject_mw:
            self._reject(r, "beyond_max", f"power {_w(v)} is far beyond the profile's maximum {_w(self._max_mw)}")
            return
        t = r.t_mono_ns
        if r.boot_id == self._last_boot and t < self._last_t:
            self._reject(r, "time_backwards", "time went backwards")
            return
        if self._last_boot and (r.boot_id != self._last_boot or t - self._last_t > self._gap_ns or self._stopped):
            self._begin_gap(self._gap_reason(r))
        first = not self._last_boot
        if r.boot_id != self._last_boot and self._last_boot:
            self.detector.rebase(t)
            self.cycle.rebase(t)
        self._last_t = t
        self._last_boot = r.boot_id
        if q is _POWER:
            self._seen_power = True
            if self._open:
                self._advance(t, r.t_wall, r.wall_synced)
            self._p = v
            if first:
                self.detector.start(v)
                self._switch_at(t, r.t_wall, r.wall_synced, v)
            self._detect(r, v)
            if self._open and v > self._o_peak:
                self._o_peak = v
        else:
            self._authority(r, v)

    def _feed_signal(self, r: Reading) -> None:
        v = r.value
        if not isinstance(v, str):
            self._reject(r, "bad_signal", f"signal {r.signal!r} value must be a string, got {type(v).__name__}")
            return
        if r.source == self._src and r.signal in IDENTITY_SIGNALS:
            if self._identity and v != self._identity:
                self._swap_pending = True
            self._identity = v
            return
        changed = self.signals.get(r.signal) != v
        self.signals[r.signal] = v
        if self._open and r.boot_id == self._last_boot and r.t_mono_ns - self._last_t <= self._gap_ns:
            # Integrate up to the signal's moment whether or not its value changed, as a tick would: otherwise
            # whether the power before a stale spell counts would depend on the signal happening to change.
            t = max(r.t_mono_ns, self._ct)
            self._advance(t, r.t_wall, r.wall_synced)
            if changed:
                sw = self.detector.update(t, self._p)
                if sw != NO_CHANGE:
                    self._det(sw, t, r.t_wall, r.wall_synced, self._p)

    def _power_step(self, r: Reading, v: int) -> None:
        """Power kind, after `_discontinuity` opened a new segment at this reading."""
        self._p = v
        if v > self._o_peak:
            self._o_peak = v
        st = self.cycle.update(r.t_mono_ns, v)
        if st:
            self._cycle_change(st, r)

    def _gap_reason(self, r: Reading) -> str:
        if self._stopped or (self._restored and self._last_t == self._restored_t):
            return "restart"
        if r.boot_id != self._last_boot:
            return "reboot"
        return "max_gap"

    def _discontinuity(self, r: Reading) -> None:
        """Power kind: first reading, a new boot, an interval beyond max_gap, or after a stop/stale."""
        t = r.t_mono_ns
        v = r.value
        assert isinstance(v, int)
        if self._last_boot:
            if self._open or not self._gap:
                self._begin_gap(self._gap_reason(r))
            if r.boot_id != self._last_boot:
                self.detector.rebase(t)
                self.cycle.rebase(t)
            self._end_gap(r, 0)
        self._last_t = t
        self._last_boot = r.boot_id
        self._ct, self._cw, self._cs = t, r.t_wall, r.wall_synced
        self._p = v
        if self.detector.cur < 0:
            self.detector.start(v)
            self._switch_at(t, r.t_wall, r.wall_synced, v)
        elif self.detector.update(t, v) >= 0:
            self._switch_at(t, r.t_wall, r.wall_synced, v)
        self._open_segment(t, r.t_wall, r.wall_synced, r)

    # ------------------------------------------------------------------ energy

    def _advance(self, t: int, wall: float, synced: bool) -> None:
        """Move the cursor to `t`, integrating (power kind) or weighting (register/pulses) the power in force."""
        dt = t - self._ct
        if dt <= 0:
            return
        if self._power_kind:
            acc = self._acc + self._p * dt
            e = acc // MW_NS_PER_MWH
            self._o_e += e
            self._acc = acc - e * MW_NS_PER_MWH
            if self._m_on:
                self._m_e += e
        else:
            if self._seen_power:
                self._o_w += self._p * dt
                if self._m_on:
                    self._m_pw += self._p * dt
            self._o_dur += dt
            if self._m_on:
                self._m_dur += dt
        self._ct, self._cw, self._cs = t, wall, synced

    def _authority(self, r: Reading, raw: int) -> None:
        t = r.t_mono_ns
        if r.boot_id == self._auth_boot:
            dt = t - self._auth_t
        else:  # monotonic time is not comparable across boots: judge plausibility by the wall clock
            dt = max(0, round((r.t_wall - self._auth_wall) * 1e9))
        if self._open:
            self._advance(t, r.t_wall, r.wall_synced)
        swapped = self._swap_pending
        self._swap_pending = False
        before_raw = self._auth.last_raw
        status, d = self._auth.observe(raw, dt, self._max_mw, swapped=swapped)
        self._auth_t, self._auth_wall, self._auth_boot = t, r.t_wall, r.boot_id
        if status == FIRST:
            self._chain = self._auth.mwh(self._auth.cont)
            self._awaiting = False
            self._gap = ""  # nothing was covered before the first authority reading: nothing to fill
            if not self._open:
                if self.detector.cur < 0:
                    self.detector.start(self._p)
                    self._switch_at(t, r.t_wall, r.wall_synced, self._p)
                self._ct, self._cw, self._cs = t, r.t_wall, r.wall_synced
                self._open_segment(t, r.t_wall, r.wall_synced, r)
            return
        if status != OK:
            self._note_anomaly(r, status, before_raw, raw, d)
        if self._gap:
            if self._held:
                self._allocate(0)
            self._end_gap(r, d)
            self._awaiting = False
            self._ct, self._cw, self._cs = t, r.t_wall, r.wall_synced
            self._open_segment(t, r.t_wall, r.wall_synced, r)
        elif status == JUMP:
            self._allocate(0)
            self._cut(RecordKind.INTERIM, t, r.t_wall, r.wall_synced)
            self._emit_gap(t, r.t_wall, r.wall_synced, r.boot_id, t, r.t_wall, r.wall_synced, d, "implausible", "")
        else:
            self._allocate(d)
        if not self._seen_power and dt > 0 and status != JUMP:
            # no power samples on this source: detect on the power the authority implies over the interval
            p = d * MW_NS_PER_MWH // dt
            self._p = p
            self._detect(r, p)
            if self._open and p > self._o_peak:
                self._o_peak = p

    def _allocate(self, d: int) -> None:
        """Split `d` mWh over the held slices and the open segment; emit the held slices."""
        held = self._held
        if not held and not self._open:
            if d:  # nothing to attribute to (cannot happen by construction): never drop energy
                self._emit_gap(self._ct, self._cw, self._cs, self._last_boot, self._ct, self._cw, self._cs, d,
                               "unattributed", "")
            return
        op = self._open
        mk = op and self._m_on
        pieces_w = [s.w for s in held]
        pieces_w += [self._o_w - self._m_pw, self._m_pw] if mk else [self._o_w if op else 0, 0]
        if sum(pieces_w) == 0:
            pieces_w = [s.dur for s in held]
            pieces_w += [self._o_dur - self._m_dur, self._m_dur] if mk else [self._o_dur if op else 0, 0]
        if sum(pieces_w) == 0:
            pieces_w[-1 if mk else (-2 if op else -3)] = 1  # nothing to weigh by: the latest piece takes it
        parts = split_largest_remainder(d, pieces_w)
        for s, e in zip(held, parts, strict=False):
            s.e += e
        if op:
            self._o_e += parts[-2] + parts[-1]
            self._o_w = 0
            self._o_dur = 0
            if mk:
                self._m_e += parts[-1]
                self._m_pw = 0
                self._m_dur = 0
        self._held = []
        for s in held:
            self._emit(s)

    def _note_anomaly(self, r: Reading, status: str, before: int | None, raw: int, d: int) -> None:
        event, words = {
            WRAP: ("register_wrap", f"register wrapped from {before} to {raw}; counted {d} mWh across the wrap"),
            RESET: ("register_reset", f"register dropped from {before} to {raw}; counted {d} mWh from zero"),
            SWAP: ("meter_swap", f"meter changed (register {before} -> {raw}); re-based, nothing counted across"),
            JUMP: ("implausible_jump", f"register jumped from {before} to {raw} ({d} mWh), beyond what "
                   f"{_w(self._max_mw)} could use; recorded as a gap, billed to no function"),
        }[status]
        unit = "pulses" if self.spec.kind == "pulses" else "mwh"
        ts = _S if r.wall_synced else _U
        self._items.append(LifecycleNote(event, self._src, r.t_wall, r.t_mono_ns, r.boot_id, ts, {
            f"raw_before_{unit}": "" if before is None else before, f"raw_after_{unit}": raw,
            "offset": self._auth.offset, "counted_mwh": d, "message": words}))
        self._ev.append(MeterEvent(event, self.appliance, self.function, self._p, r.t_wall,
                                   f"{self.appliance}: {words}"))

    # ------------------------------------------------------------------ segments

    def _open_segment(self, t: int, wall: float, synced: bool, r: Reading | None) -> None:
        self._open = True
        self._stopped = False
        self._o_fn = self.detector.function
        self._o_cyc = self._cycle_id
        self._o_t0, self._o_w0, self._o_s0 = t, wall, synced
        self._o_peak = 0
        self._o_e = self._o_w = self._o_dur = 0
        self._due = t + self._interim_ns
        self._m_on = False

    def _set_mark(self, t: int, wall: float, synced: bool) -> None:
        self._m_on = True
        self._m_t, self._m_w, self._m_s = t, wall, synced
        self._m_e = self._m_pw = self._m_dur = 0
        self._m_prepeak = self._o_peak
        self._m_peak = self._p

    def _det(self, sw: int, t: int, wall: float, synced: bool, p: int) -> None:
        """React to the detector: switch (retroactively to the mark), mark a candidate's start, or drop it."""
        if sw >= 0:
            self._switch_at(t, wall, synced, p)
        elif sw == CANDIDATE:
            if self._open:
                self._set_mark(t, wall, synced)
        elif sw == DROPPED:
            self._m_on = False

    def _close_open(self, kind: RecordKind, t: int, wall: float, synced: bool) -> _Slice:
        s = _Slice(kind, self._o_fn, self._o_cyc, self._o_t0, self._o_w0, self._o_s0, self._last_boot, t, wall,
                   synced, self._o_peak, self._o_e, self._o_w, self._o_dur)
        self._open = False
        self._m_on = False
        if self._power_kind or (not self._held and s.w == 0 and s.dur == 0):
            self._emit(s)
        else:
            self._held.append(s)
        return s

    def _cut(self, kind: RecordKind, t: int, wall: float, synced: bool, ends_cycle: bool = False) -> None:
        """Close the open segment at `t` and continue the same function in a new one."""
        if not self._open:
            return
        if t > self._o_t0 or ends_cycle:
            peak = self._p
            marked, mpeak = self._m_on, self._m_peak
            s = self._close_open(kind, t, wall, synced)
            if ends_cycle:
                s.ends_cycle = True
                if s not in self._held:
                    self._emit_cycle(s.cycle_id)
                self._cycle_id = ""
            self._open_segment(t, wall, synced, None)
            self._o_peak = peak
            if marked:  # the pending candidate now begins at the cut
                self._set_mark(t, wall, synced)
                self._m_peak = max(mpeak, peak)
                self._m_prepeak = 0
        else:
            self._due = t + self._interim_ns

    def _detect(self, r: Reading, p: int) -> None:
        t = r.t_mono_ns
        sw = self.detector.update(t, p)
        if sw != NO_CHANGE:
            self._det(sw, t, r.t_wall, r.wall_synced, p)
        st = self.cycle.update(t, p)
        if st:
            self._cycle_change_at(st, t, r.t_wall, r.wall_synced, p)

    def _switch_at(self, t: int, wall: float, synced: bool, p: int) -> None:
        old = self._o_fn
        new = self.detector.function
        if self._open:
            if self._m_on and self._m_t >= self._o_t0:
                # the boundary goes back to where the candidate began; what came since moves with it
                bt, bw, bs = self._m_t, self._m_w, self._m_s
                post = (self._m_e, self._m_pw, self._m_dur, max(self._m_peak, p))
                self._o_e -= self._m_e
                self._o_w -= self._m_pw
                self._o_dur -= self._m_dur
                self._o_peak = self._m_prepeak
            else:
                bt, bw, bs = t, wall, synced
                post = (0, 0, 0, 0)
            self._close_open(RecordKind.FUNCTION, bt, bw, bs)
            self._ev.append(MeterEvent("function_ended", self.appliance, old, p, wall,
                                       f"{self.appliance}: {old} ended"))
            self._open_segment(bt, bw, bs, None)
            self._o_e, self._o_w, self._o_dur, self._o_peak = post
        decision = self.policy.allows(self.appliance, new, wall) if self.policy is not None else None
        msg = f"{self.appliance}: {new} started ({_w(p)})"
        if decision is not None and not decision.entitled:
            msg += f" — not entitled{': ' + decision.reason if decision.reason else ''}; recorded and flagged"
        self._ev.append(MeterEvent("function_started", self.appliance, new, p, wall, msg, decision))

    def _cycle_change(self, st: int, r: Reading) -> None:
        v = r.value
        assert isinstance(v, int)
        self._cycle_change_at(st, r.t_mono_ns, r.t_wall, r.wall_synced, v)

    def _cycle_change_at(self, st: int, t: int, wall: float, synced: bool, p: int) -> None:
        if st == CYCLE_STARTED:
            cid = f"{self.appliance}-{self._last_boot[:8]}-{t}"
            self._cycle_id = cid
            if self._open:
                self._o_cyc = cid
            self._cycles[cid] = {}
            self._ev.append(MeterEvent("cycle_started", self.appliance, self.function, p, wall,
                                       f"{self.appliance}: use started ({self.function}, {_w(p)})"))
        elif st == CYCLE_ENDED and self._cycle_id:
            cid = self._cycle_id
            if self._open:
                self._cut(RecordKind.FUNCTION, t, wall, synced, ends_cycle=True)
            else:  # its last segment is already closed: mark it (held) or summarise now (emitted)
                self._cycle_id = ""
                mine = [s for s in self._held if s.cycle_id == cid]
                if mine:
                    mine[-1].ends_cycle = True
                else:
                    self._emit_cycle(cid)
            self._ev.append(MeterEvent("cycle_ended", self.appliance, self.function, p, wall,
                                       f"{self.appliance}: use ended ({cid})"))

    def _begin_gap(self, reason: str) -> None:
        """Stop covering time at the cursor; what follows until the next reading (power) or authority reading
        (register/pulses) becomes a gap record."""
        if self._open:
            self._close_open(RecordKind.FUNCTION, self._ct, self._cw, self._cs)
        if not self._gap:
            self._gap = reason
            self._g_t, self._g_w, self._g_s, self._g_boot = self._ct, self._cw, self._cs, self._last_boot
        self._awaiting = not self._power_kind

    def _end_gap(self, r: Reading, d: int) -> None:
        if not self._gap:
            return
        if r.boot_id != self._g_boot:
            t0 = r.t_mono_ns  # never compute across boots: zero monotonic length, the previous boot named
            prev = self._g_boot
        else:
            t0 = self._g_t
            prev = ""
        self._emit_gap(t0, self._g_w, self._g_s, r.boot_id, r.t_mono_ns, r.t_wall, r.wall_synced, d, self._gap, prev)
        self._ev.append(MeterEvent("gap", self.appliance, self.function, 0, r.t_wall,
                                   f"{self.appliance}: {self._gap} gap of {max(0, r.t_wall - self._g_w):.0f} s "
                                   f"recorded ({d} mWh billed to no function)"))
        self._gap = ""

    # ------------------------------------------------------------------ records

    def _emit(self, s: _Slice) -> None:
        rec = UsageRecord(
            kind=s.kind, appliance=self.appliance, source=self._src, function=s.function,
            t_start_mono_ns=s.t0, t_end_mono_ns=s.t1, t_start_wall=s.w0, t_end_wall=s.w1, boot_id=s.boot,
            time_status=_S if (s.s0 and s.s1) else _U, energy_mwh=s.e,
            duration_ms=max(0, s.t1 - s.t0) // 1_000_000, cycle_id=s.cycle_id, peak_power_mw=s.peak)
        if self.spec.kind == "register":
            rec.register_start_mwh = self._chain
            self._chain += s.e
            rec.register_end_mwh = self._chain
        self._out(rec)
        if s.cycle_id:
            acc = self._cycles.get(s.cycle_id)
            if acc is not None:
                if not acc:
                    acc.update(t0=s.t0, w0=repr(s.w0), s0=int(s.s0), boot=s.boot, e=0, dur=0, peak=0)
                elif acc["boot"] != s.boot:
                    # The use went on across a reboot. Monotonic stamps of two boots do not compare, so the summary
                    # keeps the clock of the boot it ends in (from where the use resumed) and names the first boot.
                    acc.setdefault("start_boot", acc["boot"])
                    acc.update(t0=s.t0, boot=s.boot)
                acc["e"] += s.e
                acc["dur"] += rec.duration_ms
                acc["peak"] = max(acc["peak"], s.peak)
                acc.update(t1=s.t1, w1=repr(s.w1), s1=int(s.s1))
            if s.ends_cycle:
                self._emit_cycle(s.cycle_id)

    def _emit_cycle(self, cid: str) -> None:
        acc = self._cycles.pop(cid, None)
        if not acc:
            return
        rec = UsageRecord(
            kind=RecordKind.CYCLE, appliance=self.appliance, source=self._src, function="",
            t_start_mono_ns=int(acc["t0"]), t_end_mono_ns=int(acc["t1"]), t_start_wall=float(acc["w0"]),
            t_end_wall=float(acc["w1"]), boot_id=str(acc["boot"]),
            time_status=_S if (acc["s0"] and acc["s1"]) else _U, energy_mwh=0, duration_ms=int(acc["dur"]),
            cycle_id=cid, uses=1, peak_power_mw=int(acc["peak"]), cycle_energy_mwh=int(acc["e"]))
        if "start_boot" in acc:
            rec.extra["start_boot_id"] = str(acc["start_boot"])
        self._out(rec)

    def _emit_gap(self, t0: int, w0: float, s0: bool, boot: str, t1: int, w1: float, s1: bool, d: int,
                  reason: str, prev_boot: str) -> None:
        rec = UsageRecord(
            kind=RecordKind.GAP, appliance=self.appliance, source=self._src, function="", t_start_mono_ns=t0,
            t_end_mono_ns=t1, t_start_wall=w0, t_end_wall=w1, boot_id=boot, time_status=_S if (s0 and s1) else _U,
            energy_mwh=d, duration_ms=max(0, t1 - t0) // 1_000_000, reason=reason)
        if prev_boot:
            rec.extra["prev_boot_id"] = prev_boot
        if self.spec.kind == "register":
            rec.register_start_mwh = self._chain
            self._chain += d
            rec.register_end_mwh = self._chain
        self._out(rec)

    def _out(self, rec: UsageRecord) -> None:
        if self.policy is not None:
            self.policy.price(rec)
        self._items.append(rec)

    def _result(self) -> FeedResult:
        res = FeedResult(tuple(self._ev), tuple(self._items), self.appliance)
        self._ev.clear()
        self._items.clear()
        return res

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume exactly: JSON-able, strings and integers only."""
        return {
            "v": STATE_VERSION, "appliance": self.appliance, "kind": self.spec.kind, "source": self._src,
            "last_t": self._last_t, "last_boot": self._last_boot,
            "ct": self._ct, "cw": repr(self._cw), "cs": int(self._cs), "p": self._p, "acc": self._acc,
            "seen_power": int(self._seen_power), "auth": self._auth.snapshot(), "auth_t": self._auth_t,
            "auth_wall": repr(self._auth_wall), "auth_boot": self._auth_boot,
            "chain": self._chain,
            "open": int(self._open), "o_fn": self._o_fn, "o_cyc": self._o_cyc, "o_t0": self._o_t0,
            "o_w0": repr(self._o_w0), "o_s0": int(self._o_s0), "o_peak": self._o_peak, "o_e": self._o_e,
            "o_w": self._o_w, "o_dur": self._o_dur, "due": self._due,
            "mark": [int(self._m_on), self._m_t, repr(self._m_w), int(self._m_s), self._m_e, self._m_pw, self._m_dur,
                     self._m_peak, self._m_prepeak],
            "held": [s.dump() for s in self._held],
            "gap": self._gap, "g_t": self._g_t, "g_w": repr(self._g_w), "g_s": int(self._g_s), "g_boot": self._g_boot,
            "awaiting": int(self._awaiting), "stopped": int(self._stopped),
            "cycle_id": self._cycle_id, "cycles": {k: dict(v) for k, v in self._cycles.items()},
            "identity": self._identity, "swap_pending": int(self._swap_pending),
            "signals": dict(self.signals), "detector": self.detector.snapshot(), "cycle": self.cycle.snapshot(),
            "rejected": dict(self.rejected), "readings": self.readings,
        }

    def _restore(self, s: dict[str, Any]) -> None:
        if int(s.get("v", 0)) != STATE_VERSION or s.get("kind") != self.spec.kind:
            return  # an incompatible checkpoint: start fresh (the first authority reading becomes the baseline)
        self._last_t, self._last_boot = int(s["last_t"]), str(s["last_boot"])
        self._ct, self._cw, self._cs = int(s["ct"]), float(s["cw"]), bool(int(s["cs"]))
        self._p, self._acc = int(s["p"]), int(s["acc"])
        self._seen_power = bool(int(s["seen_power"]))
        self._auth.restore(s["auth"])
        self._auth_t, self._chain = int(s["auth_t"]), int(s["chain"])
        self._auth_wall, self._auth_boot = float(s["auth_wall"]), str(s["auth_boot"])
        self._open = bool(int(s["open"]))
        self._o_fn, self._o_cyc = str(s["o_fn"]), str(s["o_cyc"])
        self._o_t0, self._o_w0, self._o_s0 = int(s["o_t0"]), float(s["o_w0"]), bool(int(s["o_s0"]))
        self._o_peak, self._o_e, self._o_w, self._o_dur = int(s["o_peak"]), int(s["o_e"]), int(s["o_w"]), int(
            s["o_dur"])
        self._due = int(s["due"])
        mk = s["mark"]
        self._m_on, self._m_t, self._m_w, self._m_s = bool(int(mk[0])), int(mk[1]), float(mk[2]), bool(int(mk[3]))
        self._m_e, self._m_pw, self._m_dur, self._m_peak, self._m_prepeak = (int(x) for x in mk[4:9])
        self._held = [_Slice.load(d) for d in s["held"]]
        self._gap, self._g_t, self._g_w = str(s["gap"]), int(s["g_t"]), float(s["g_w"])
        self._g_s, self._g_boot = bool(int(s["g_s"])), str(s["g_boot"])
        self._awaiting, self._stopped = bool(int(s["awaiting"])), bool(int(s["stopped"]))
        self._cycle_id = str(s["cycle_id"])
        self._cycles = {str(k): dict(v) for k, v in s["cycles"].items()}
        self._identity, self._swap_pending = str(s["identity"]), bool(int(s["swap_pending"]))
        self.signals.update({str(k): str(v) for k, v in s["signals"].items()})
        self.detector.restore(s["detector"])
        self.cycle.restore(s["cycle"])
        self.rejected.update({str(k): int(v) for k, v in s["rejected"].items()})
        self.readings = int(s["readings"])
        self._restored = True
        self._restored_t = self._last_t
