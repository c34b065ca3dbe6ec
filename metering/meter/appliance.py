"""`ApplianceMeter`: readings of one appliance in, what happened out (events for people, records for the ledger).

Pure: no clock reads, no I/O, no threads. One meter per appliance and energy source.

Segments. The meter keeps one *open segment* (a function running since a moment), cut into records:
- `function`: the segment (or its last slice) when the function changes, a use ends, the source stops or goes stale;
- `interim`: a slice every `interim_s` of a long segment (and a cut before a zero-length `gap` at an implausible
  register jump), so the ledger never waits hours for a long function; outside any use (the appliance idle, its
  standby) every `idle_interim_s` instead (default: the same), so idle hours make few records;
- `gap`: energy for a time nobody watched (a restart, a stale source, an interval longer than `max_gap_s`, an
  implausible register jump), billed to no function and never dropped.
Per source these tile time in emission order (each record starts where the previous one ended; a reboot's gap has
zero monotonic length and names the previous boot) and, for registers, chain `register_start_mwh` to the previous
`register_end_mwh` on the continuous scale of `energy.py`. A `cycle` record summarises a finished use after its
last segment record: `uses` 1, `cycle_id`, `cycle_energy_mwh` (the ledger fills first/last seq from the cycle id);
its wall interval covers the whole use, its monotonic stamps and `boot_id` are those of the boot it ended in (a use
that went on across a reboot starts, on that clock, where it resumed, and names its first boot in `start_boot_id`).

Power sources emit a segment's record when it closes. Register and pulse sources hold closed segments until the next
authority reading, which splits its delta over them (see `energy.py`) and emits them in order; a register with power
samples holds them longer while its late steps settle (up to `settle_s`, see `energy.py` and docs/metering.md).

Restart (`state=` from `snapshot()`). The first reading after a restore continues as if nothing happened when it is
in the same boot and within `max_gap_s` of the last reading the snapshot saw (the interval is attributed to the open
segment). Otherwise, and always after a clean `close()`, everything from the last covered moment to the first
reading (register/pulses: the first authority reading) is one `gap` record with reason "restart" holding the whole
register delta, so conservation holds exactly across the restart.

Bad readings never raise: they are counted in `meter.rejected[reason]`, reported as a `rejected` event, and never
reach a total.

State. Everything carried from one reading to the next is `self.state` (see `state.py`), plus the detector's, the
cycle tracker's and the register's own; `snapshot()` is all of it through the generic codec (`checkpoint.py`).
Moments travel as `koto.clock.Now`. The hot path is `feed` with a power reading on a power source: it touches the
cursor, the open segment and its mark in place and builds no object unless something happens.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from koto.clock import Now
from koto.reading import Quality, Quantity, Reading

from ..detect import CYCLE_ENDED, NO_CHANGE, RUNNING, CycleTracker, Detector
from ..energy import MW_NS_PER_MWH, Authority, EnergySpec
from ..policy import Policy
from ..profile import Profile
from ..records import GapReason, RecordKind
from .checkpoint import VERSION, Checkpoint, dump, load
from .emit import Recorder
from .energy_feed import EnergyFeed, moment
from .results import EMPTY, FeedResult, Item, MeterEvent, clock_time
from .screen import Refusal, refuse_power, screen
from .segments import Segments
from .state import DETECT, INTERIM, USE, Deferred, MeterState

REJECT_FACTOR_NUM, REJECT_FACTOR_DEN = 3, 2  # power above 1.5 x the profile's max_power is rejected
IDENTITY_SIGNALS = frozenset({"serial", "meter_id"})  # a SIGNAL from the energy source naming the meter itself

_POWER = Quantity.POWER_MW
_SIGNAL = Quantity.SIGNAL
_ESTIMATED = Quality.ESTIMATED  # a power that is only an upper bound (S0 between pulses), except 0: `Cursor.bounded`
_INTERIM = RecordKind.INTERIM
_BACKWARDS = Refusal("time_backwards", "time went backwards")


class ApplianceMeter(EnergyFeed):
    """Meter one appliance. See the module docstring for the record rules.

    `feed(reading)`, `tick(now)` and `close(now)` return a `FeedResult` (the shared empty one when nothing
    happened). `snapshot()` returns JSON-able state (str/int only) to pass back as `state=`.
    """

    __slots__ = ("_auth", "_channel", "_ev", "_gap_ns", "_items", "_max_mw", "_power_kind", "_pulses", "_recorder",
                 "_reject_mw", "_restored_at", "_segments", "_settle_ns", "_settles", "_src", "appliance", "cycle",
                 "detector", "policy", "profile", "spec", "state")

    def __init__(self, appliance: str, profile: Profile, *, energy: EnergySpec, policy: Policy | None = None,
                 interim_s: int = 900, idle_interim_s: int | None = None,
                 state: dict[str, Any] | None = None) -> None:
        if interim_s <= 0:
            raise ValueError(f"interim_s must be > 0, not {interim_s!r}")
        if idle_interim_s is not None and idle_interim_s <= 0:
            raise ValueError(f"idle_interim_s must be > 0, not {idle_interim_s!r}")
        if profile.cycle is None:  # no uses to tell idle time by: every segment is sliced at interim_s
            idle_interim_s = None
        self.appliance = appliance
        self.profile = profile
        self.spec = energy
        self.policy = policy
        self._src = energy.source
        self._channel = energy.channel
        self._power_kind = energy.kind == "power"
        self._pulses = energy.kind == "pulses"
        self._gap_ns = int(energy.max_gap_s * 1_000_000_000)
        self._settles = energy.kind == "register"
        self._settle_ns = int(energy.settle_s * 1_000_000_000)
        self._max_mw = profile.max_power_mw
        self._reject_mw = profile.max_power_mw * REJECT_FACTOR_NUM // REJECT_FACTOR_DEN
        self._ev: list[MeterEvent] = []
        self._items: list[Item] = []
        cp = None if state is None else load(state, kind=energy.kind, origin=f"checkpoint of {appliance}")
        self.state = MeterState() if cp is None else cp.meter
        self.detector = Detector(profile, self.state.signals)
        self.cycle = CycleTracker(profile.cycle)
        self._auth = Authority(energy)
        self._recorder = Recorder(appliance, energy, policy, self.state, self._items)
        self._segments = Segments(appliance, self.state, self.detector, self._recorder, self._ev, policy=policy,
                                  interim_ns=int(interim_s) * 1_000_000_000, power_kind=self._power_kind,
                                  settles=self._settles,
                                  idle_interim_ns=None if idle_interim_s is None else int(idle_interim_s) * 10**9)
        # A restored meter calls the first silence before any new reading a restart, whatever its length.
        self._restored_at: int | None = None
        if cp is not None:
            self.detector.restore(cp.detector)
            self.cycle.restore(cp.cycle)
            self._auth.restore(cp.authority)
            self._restored_at = self.state.cursor.last_ns

    # ------------------------------------------------------------------ public

    @property
    def function(self) -> str:
        """The function running now ("" before the first reading)."""
        return self.detector.function

    @property
    def power_mw(self) -> int:
        return self.state.cursor.power_mw

    @property
    def last_raw(self) -> int | None:
        """The last raw register value or pulse count of the energy source (None before the first): where a pulse
        counter resumes after a restart, so nothing already counted is lost."""
        return self._auth.last_raw

    @property
    def readings(self) -> int:
        return self.state.counters.readings

    @property
    def ignored(self) -> int:
        """Diagnostic quantities (voltage, rssi...) and other channels of the source: not metered."""
        return self.state.counters.ignored

    @property
    def rejected(self) -> Counter[str]:
        """Readings that never reached a total, by reason."""
        return self.state.counters.rejected

    def feed(self, r: Reading) -> FeedResult:
        st = self.state
        st.counters.readings += 1
        if r.quantity is _POWER and self._power_kind:
            v = r.value
            if type(v) is not int or v < 0 or v > self._reject_mw or r.source != self._src:
                self._reject(r, refuse_power(r, self._src, self._max_mw))
            else:
                c = st.cursor
                seg = st.seg
                t = r.t_mono_ns
                if t < c.mono_ns and r.boot_id == c.boot and t >= c.last_ns:
                    r = self._at_cursor(r)
                    t = r.t_mono_ns
                if r.boot_id != c.boot or t - c.last_ns > self._gap_ns or seg is None:
                    if r.boot_id == c.boot and t < c.last_ns:
                        self._reject(r, _BACKWARDS)
                    else:
                        self._discontinuity(r, v)
                elif t < c.last_ns:
                    self._reject(r, _BACKWARDS)
                else:
                    if st.deferred:
                        self._settle_deferred(moment(r))
                        seg = self._segments.current()
                    c.last_ns = t
                    self._advance(seg, t, r.t_wall, r.wall_synced)
                    c.power_mw = v
                    c.bounded = r.quality is _ESTIMATED and v > 0
                    sw = self.detector.update(t, v)
                    if sw != NO_CHANGE:
                        self._segments.detected(sw, moment(r), v)
                        seg = self._segments.current()
                    if v > seg.peak_mw:
                        seg.peak_mw = v
                    mk = seg.mark
                    if mk is not None and v > mk.peak_mw:
                        mk.peak_mw = v
                    fl = seg.fall
                    if fl is not None and v > fl.peak_mw:
                        fl.peak_mw = v
                    cs = self.cycle.update(t, v)
                    if cs:
                        self._segments.use_changed(cs, moment(r), v, self.cycle.since)
                        seg = self._segments.current()
                    if t >= seg.due_ns:
                        self._segments.cut(_INTERIM, moment(r))
        else:
            self._feed_other(r)
        if self._ev or self._items:
            return self._result()
        return EMPTY

    def tick(self, now: Now) -> FeedResult:
        """Close what time alone closes: dwell-confirmed switches, the end of a use, interim slices, a stale source.

        A tick does not move the cursor past the last reading of the energy source: what it decides is deferred
        (`state.deferred`) until the next reading shows the energy up to that moment, and the boundary then falls at
        the tick. A source silent beyond `max_gap_s` ends the open function at its last reading, and what was
        deferred takes effect there: the gap starts where the silence started."""
        st = self.state
        c = st.cursor
        if not c.boot or now.boot_id != c.boot or now.mono_ns < c.mono_ns:
            return EMPTY
        t = now.mono_ns
        seg = st.seg
        if t - c.last_ns > self._gap_ns:
            if seg is not None:
                self._ev.append(MeterEvent("source_stale", self.appliance, self.function, c.power_mw, now.wall,
                                           f"no reading from {self.appliance}/{self._src} for "
                                           f"{(t - c.last_ns) // 1_000_000_000} s: energy from "
                                           f"{clock_time(c.wall)} is a gap until readings return"))
                self._stop_covering(GapReason.STALE)
        elif seg is not None:
            p = c.power_mw
            # A bare counter (no power samples): time without a count reads as no energy, but only once the next
            # reading (a count, or the S0 heartbeat's restated count) shows the counter was alive, so the tick
            # covers no time, like any other source's (docs/metering.md, "Gaps where the silence was").
            if not (self._power_kind or c.seen_power) and self._pulses and t > st.authority.last.mono_ns:
                # one more pulse could not have come later at more than this power
                bound = (1_000_000 * MW_NS_PER_MWH // self.spec.imp_per_kwh) // (t - st.authority.last.mono_ns)
                if bound < p:
                    p = c.power_mw = bound
                    c.bounded = True
            self._detect(t, p, now)
            seg = st.seg
            if seg is not None and t >= seg.due_ns and not any(d.action == INTERIM for d in st.deferred):
                self._decided(INTERIM, 0, now, p)
        return self._result() if self._ev or self._items else EMPTY

    def close(self, now: Now) -> FeedResult:
        """Clean stop: close the open segment with a `function` record (its energy as known; for register and pulse
        sources, energy after the last authority reading shows up after the restart as a "restart" gap)."""
        st = self.state
        c = st.cursor
        fresh = now.boot_id == c.boot and 0 <= now.mono_ns - c.last_ns <= self._gap_ns
        if st.deferred:
            self._settle_deferred(now if fresh else None)
            if not fresh:
                self._segments.drop_empty()
        if st.seg is not None:
            if fresh:
                self._advance(st.seg, now.mono_ns, now.wall, now.synced)
            st.seg.fall = None  # (a stop inside a use's low spell: it closes whole, as the use's)
            self._segments.close(RecordKind.FUNCTION, c.at())
        if st.held:
            self._segments.allocate(0)
        if st.fall is not None:
            self._recorder.flush_tail(out_of_use=False)
        st.stopped = True
        return self._result() if self._ev or self._items else EMPTY

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume exactly: JSON-able, strings and integers only (see `checkpoint.py`)."""
        return dump(Checkpoint(VERSION, self.appliance, self.spec.kind, self._src, self.state,
                               self.detector.snapshot(), self.cycle.snapshot(), self._auth.snapshot()))

    # ------------------------------------------------------------------ readings

    def _reject(self, r: Reading, why: Refusal) -> None:
        self.state.counters.rejected[why.reason] += 1
        self._ev.append(MeterEvent("rejected", self.appliance, self.detector.function, 0, r.t_wall,
                                   f"{self.appliance}: reading rejected: {why.words}"))

    def _feed_other(self, r: Reading) -> None:
        """Signals, diagnostics, and every reading of a register or pulse source."""
        q = r.quantity
        if q is _SIGNAL:
            self._feed_signal(r)
            return
        v = r.value
        if not (q is _POWER and type(v) is int and 0 <= v <= self._reject_mw and r.source == self._src
                and r.signal == self._channel):  # (not the common reading: look closer)
            checked = screen(r, self.spec, self._reject_mw, self._max_mw)
            if not isinstance(checked, int):
                if checked is None:
                    self.state.counters.ignored += 1
                else:
                    self._reject(r, checked)
                return
            v = checked
        st = self.state
        c = st.cursor
        t = r.t_mono_ns
        if r.boot_id == c.boot and t < c.last_ns:
            self._reject(r, _BACKWARDS)
            return
        if t < c.mono_ns and r.boot_id == c.boot and st.gap is None:  # (with a gap pending the cursor is its start,
            r = self._at_cursor(r)                                     # maybe in another boot: see `end_gap`)
            t = r.t_mono_ns
        if c.boot and (r.boot_id != c.boot or t - c.last_ns > self._gap_ns or st.stopped):
            self._stop_covering(self._gap_reason(r))
        elif st.deferred:
            self._settle_deferred(moment(r))
        first = not c.boot
        if r.boot_id != c.boot and c.boot:
            self.detector.rebase(t)
            self.cycle.rebase(t)
        c.last_ns = t
        c.boot = r.boot_id
        if q is not _POWER:
            self._authority(r, v)
            return
        c.seen_power = True
        if st.seg is not None:
            self._advance(st.seg, t, r.t_wall, r.wall_synced)
        c.power_mw = v
        c.bounded = r.quality is _ESTIMATED and v > 0
        if first:
            self.detector.start(v)
            self._segments.switch(moment(r), v)
        self._detect(t, v, r)
        seg = st.seg
        if seg is not None and v > seg.peak_mw:
            seg.peak_mw = v
        fl = None if seg is None else seg.fall
        if fl is not None and v > fl.peak_mw:
            fl.peak_mw = v

    def _at_cursor(self, r: Reading) -> Reading:
        """A reading taken after the last one but stamped before the cursor (which a tick, a stop or a deferred
        decision moved on meanwhile: the reading was queued behind them — a slow bus, a busy loop, a compressed
        clock) counts from the cursor, on both clocks: records never overlap, and no interval runs backwards."""
        c = self.state.cursor
        return replace(r, t_mono_ns=c.mono_ns, t_wall=c.wall, wall_synced=c.synced)

    def _feed_signal(self, r: Reading) -> None:
        v = r.value
        if not isinstance(v, str):
            self._reject(r, Refusal("bad_signal", f"signal {r.signal!r} value must be a string, got "
                                                  f"{type(v).__name__}"))
            return
        st = self.state
        if r.source == self._src and r.signal in IDENTITY_SIGNALS:
            a = st.authority
            if a.identity and v != a.identity:
                a.swap_pending = True
            a.identity = v
            return
        changed = st.signals.get(r.signal) != v
        st.signals[r.signal] = v
        c = st.cursor
        if changed and st.seg is not None and r.boot_id == c.boot and r.t_mono_ns - c.last_ns <= self._gap_ns:
            # A signal is not a reading of the energy source: like a tick's, its switch waits for the next
            # reading (or, at its moment, the one it came with) and takes its boundary at the signal.
            at = moment(r) if r.t_mono_ns >= c.mono_ns else c.at()
            sw = self.detector.update(at.mono_ns, c.power_mw)
            if sw != NO_CHANGE:
                self._decided(DETECT, sw, at, c.power_mw)

    def _gap_reason(self, r: Reading) -> GapReason:
        st = self.state
        if st.stopped or st.cursor.last_ns == self._restored_at:
            return GapReason.RESTART
        if r.boot_id != st.cursor.boot:
            return GapReason.REBOOT
        return GapReason.MAX_GAP

    def _discontinuity(self, r: Reading, v: int) -> None:
        """Power kind: first reading, a new boot, an interval beyond max_gap, or after a stop/stale."""
        st = self.state
        c = st.cursor
        t = r.t_mono_ns
        at = moment(r)
        if c.boot:
            if st.seg is not None or st.gap is None:
                self._stop_covering(self._gap_reason(r))
            if r.boot_id != c.boot:
                self.detector.rebase(t)
                self.cycle.rebase(t)
            at = self._segments.end_gap(at, 0)
        c.last_ns = t
        c.boot = r.boot_id
        c.move(at)
        c.power_mw = v
        c.bounded = r.quality is _ESTIMATED and v > 0
        if self.detector.cur < 0:
            self.detector.start(v)
            self._segments.switch(at, v)
        elif self.detector.update(t, v) >= 0:
            self._segments.switch(at, v)
        seg = self._segments.open(at)
        if v > seg.peak_mw:
            seg.peak_mw = v
        cs = self.cycle.update(t, v)
        if cs:
            self._segments.use_changed(cs, at, v, self.cycle.since)

    def _detect(self, t: int, p: int, src: Reading | Now) -> None:
        """Feed the detector and the cycle tracker the power `p` at `t`, the moment of `src`, and act on what they
        say (at once for a reading; for a tick's moment, once a reading covers it: see `_decided`)."""
        sw = self.detector.update(t, p)
        if sw != NO_CHANGE:
            self._decided(DETECT, sw, src if isinstance(src, Now) else moment(src), p)
        cs = self.cycle.update(t, p)
        if cs:
            self._decided(USE, cs, src if isinstance(src, Now) else moment(src), p)

    def _decided(self, action: str, code: int, at: Now, p: int) -> None:
        """Act on a decision taken at `at` now if the cursor has reached it; else defer it to the next reading of the
        energy source (a tick or a signal between readings), so no record ends where no reading has been."""
        st = self.state
        if st.deferred or at.mono_ns > st.cursor.mono_ns:
            c = st.cursor
            st.deferred.append(Deferred(action, code, at, p, c.bounded and p == c.power_mw))
        else:
            self._act(action, code, at, p)

    def _act(self, action: str, code: int, at: Now, p: int) -> None:
        if action == DETECT:
            self._segments.detected(code, at, p)
        elif action == USE:
            # (decided by a tick: the tracker still knows when the power rose while the use runs, and where the
            # use ended until the next reading, which may start another, is fed to it)
            known = self.cycle.state == RUNNING or code == CYCLE_ENDED
            self._segments.use_changed(code, at, p, self.cycle.since if known else None)
        elif self.state.seg is not None and at.mono_ns >= self.state.seg.due_ns:
            # (a slice due when the tick decided, unless a decision deferred before it opened a new segment since)
            self._segments.cut(_INTERIM, at)

    def _settle_deferred(self, upto: Now | None) -> None:
        """Apply the deferred decisions in order: each at its own moment, integrating up to it, when a reading at
        `upto` (or a stop within `max_gap_s`) covers it; at the cursor (the last reading) when `upto` is None — the
        source went silent, the energy after its last reading is a gap, not the function's. A decision taken after
        the reading that now arrives (a reading stamped before the tick that decided) takes effect at the reading's
        moment, on both clocks (mixing the reading's monotonic stamp with the tick's wall time made records whose
        wall intervals overlapped under a compressed clock); one before the cursor, at the cursor."""
        st = self.state
        c = st.cursor
        todo, st.deferred = st.deferred, []
        for d in todo:
            at = d.at
            if upto is None or at.boot_id != c.boot:
                at = c.at()
            elif at.mono_ns > upto.mono_ns:
                at = upto if upto.mono_ns >= c.mono_ns else c.at()
            elif at.mono_ns < c.mono_ns:
                at = c.at()
            if st.seg is not None and at.mono_ns > c.mono_ns:
                self._advance(st.seg, at.mono_ns, at.wall, at.synced)
            self._act_as_decided(d, at)

    def _act_as_decided(self, d: Deferred, at: Now) -> None:
        """Act on `d` at `at`, with the cursor saying whether its power was a bound (for the messages:
        `Segments.power_text`); a bare counter's power meanwhile is what the tick that decided bounded it to (a cut's
        new segment starts with it as its peak). Then the latest again."""
        c = self.state.cursor
        latest = c.power_mw, c.bounded
        if not (self._power_kind or c.seen_power):
            c.power_mw = d.power_mw
        c.bounded = d.bound
        self._act(d.action, d.code, at, d.power_mw)
        c.power_mw, c.bounded = latest

    def _stop_covering(self, reason: GapReason) -> None:
        """Coverage stops at the cursor (the last reading): deferred decisions take effect there, then a gap begins."""
        if self.state.deferred:
            self._settle_deferred(None)
            self._segments.drop_empty()
        self._segments.begin_gap(reason)

    def _result(self) -> FeedResult:
        res = FeedResult(tuple(self._ev), tuple(self._items), self.appliance)
        self._ev.clear()
        self._items.clear()
        return res
