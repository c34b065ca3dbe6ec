"""What the detector's verdicts, uses and gaps do to the open segment, its mark, the held slices and the uses.

A segment closes into a `Slice` when its function ends (at the mark where the new function began, if a dwell
confirmed it later), when a use ends, every `interim_s`, and when coverage stops (a gap). Power sources emit a
slice at once; register and pulse sources hold it until the next authority reading's delta is split over the held
slices and the open segment (`allocate`).
"""

from __future__ import annotations

from koto.clock import Now

from ..detect import CANDIDATE, CYCLE_ENDED, CYCLE_STARTED, DROPPED, Detector
from ..energy import MW_NS_PER_MWH, float32_step_mwh, split_largest_remainder
from ..policy import Policy
from ..records import GapReason, RecordKind
from .emit import Recorder
from .results import MeterEvent, watts
from .state import Mark, MeterState, PendingGap, Segment, Slice


class Segments:
    """The segment side of one meter: shares `state` and the `events` list with it, makes records by `recorder`."""

    __slots__ = ("_interim_ns", "_power_kind", "_settles", "appliance", "detector", "events", "policy", "recorder",
                 "state")

    def __init__(self, appliance: str, state: MeterState, detector: Detector, recorder: Recorder,
                 events: list[MeterEvent], *, policy: Policy | None, interim_ns: int, power_kind: bool,
                 settles: bool = False) -> None:
        self.appliance = appliance
        self.state = state
        self.detector = detector
        self.recorder = recorder
        self.events = events
        self.policy = policy
        self._interim_ns = interim_ns
        self._power_kind = power_kind
        self._settles = settles  # a register: closed slices wait for late steps (see `settling`)

    def current(self) -> Segment:
        """The open segment, where one must be open (after a switch or a cut, which always reopen)."""
        seg = self.state.seg
        assert seg is not None
        return seg

    def open(self, at: Now) -> Segment:
        st = self.state
        seg = st.seg = Segment(self.detector.function, st.cycle_id, at, at.mono_ns + self._interim_ns)
        st.stopped = False
        return seg

    def close(self, kind: RecordKind, end: Now) -> Slice:
        """Close the open segment at `end`: emit it (power kind, or nothing to wait for) or hold it for the next
        authority reading's delta."""
        st = self.state
        s = self.current().close(kind, end)
        st.seg = None
        if self._power_kind or (not st.held and s.weight == 0 and s.dur_ns == 0):
            self.recorder.slice(s)  # (nothing to wait for: no time since the last split, no late step owed)
        else:
            st.held.append(s)
        return s

    def detected(self, sw: int, at: Now, p: int) -> None:
        """React to the detector: switch (back to the mark), mark a candidate's start, or drop the mark."""
        seg = self.state.seg
        if sw >= 0:
            self.switch(at, p)
        elif sw == CANDIDATE:
            if seg is not None:
                seg.mark = Mark(at, seg.peak_mw, self.state.cursor.power_mw)
        elif sw == DROPPED and seg is not None:
            seg.mark = None

    def cut(self, kind: RecordKind, at: Now, *, ends_cycle: bool = False) -> None:
        """Close the open segment at `at` and continue the same function in a new one (a pending candidate's mark
        moves to the cut)."""
        st = self.state
        seg = st.seg
        if seg is None:
            return
        if at.mono_ns > seg.start.mono_ns or ends_cycle:
            peak = st.cursor.power_mw
            mk = seg.mark
            s = self.close(kind, at)
            if ends_cycle:
                s.ends_cycle = True
                if not (st.held and st.held[-1] is s):
                    self.recorder.use(s.cycle_id)
                st.cycle_id = ""
            new = self.open(at)
            new.peak_mw = peak
            if mk is not None:
                new.mark = Mark(at, 0, max(mk.peak_mw, peak))
        else:
            seg.due_ns = at.mono_ns + self._interim_ns

    def switch(self, at: Now, p: int) -> None:
        """The detector switched to its current function at `at` (or back at the open segment's mark)."""
        seg = self.state.seg
        new_fn = self.detector.function
        if seg is not None:
            old = seg.function
            mk = seg.mark
            if mk is not None and mk.at.mono_ns >= seg.start.mono_ns:
                # the boundary goes back to where the candidate began; what came since moves with it
                boundary = mk.at
                moved = (mk.mwh, mk.weight, mk.dur_ns, max(mk.peak_mw, p))
                seg.mwh -= mk.mwh
                seg.weight -= mk.weight
                seg.dur_ns -= mk.dur_ns
                seg.peak_mw = mk.peak_before
            else:
                boundary = at
                moved = (0, 0, 0, 0)
            self.close(RecordKind.FUNCTION, boundary)
            self.events.append(MeterEvent("function_ended", self.appliance, old, p, at.wall,
                                          f"{self.appliance}: {old} ended"))
            new = self.open(boundary)
            new.mwh, new.weight, new.dur_ns, new.peak_mw = moved
        decision = self.policy.allows(self.appliance, new_fn, at.wall) if self.policy is not None else None
        msg = f"{self.appliance}: {new_fn} started ({watts(p)})"
        if decision is not None and not decision.entitled:
            msg += f" — not entitled{': ' + decision.reason if decision.reason else ''}; recorded and flagged"
        self.events.append(MeterEvent("function_started", self.appliance, new_fn, p, at.wall, msg, decision))

    def use_changed(self, cs: int, at: Now, p: int) -> None:
        """The cycle tracker says a use started or ended at `at`."""
        st = self.state
        fn = self.detector.function
        if cs == CYCLE_STARTED:
            self.detector.new_use()
            cid = f"{self.appliance}-{st.cursor.boot[:8]}-{at.mono_ns}"
            st.cycle_id = cid
            if st.seg is not None:
                st.seg.cycle_id = cid
            st.uses[cid] = None
            self.events.append(MeterEvent("cycle_started", self.appliance, fn, p, at.wall,
                                          f"{self.appliance}: use started ({fn}, {watts(p)})"))
        elif cs == CYCLE_ENDED and st.cycle_id:
            cid = st.cycle_id
            if st.seg is not None:
                self.cut(RecordKind.FUNCTION, at, ends_cycle=True)
            else:  # its last segment is already closed: mark it (held) or summarise now (emitted)
                st.cycle_id = ""
                mine = [s for s in st.held if s.cycle_id == cid]
                if mine:
                    mine[-1].ends_cycle = True
                else:
                    self.recorder.use(cid)
            self.events.append(MeterEvent("cycle_ended", self.appliance, fn, p, at.wall,
                                          f"{self.appliance}: use ended ({cid})"))

    def drop_empty(self) -> None:
        """Forget an open segment that covers nothing yet (opened at the cursor by a decision that took effect
        there just before coverage stops): it would be a record of no time and no energy."""
        st = self.state
        seg = st.seg
        if (seg is not None and seg.start.mono_ns == st.cursor.mono_ns and seg.start.boot_id == st.cursor.boot
                and seg.mwh == 0 and seg.weight == 0 and seg.dur_ns == 0):
            st.seg = None

    def settle(self, d: int, t: int, boot: str, settle_ns: int) -> None:
        """A register reading's delta `d` on a source with power samples: split it now, or let the held slices wait
        for late register steps (then `d` waits with them, in `unsettled_mwh`). The rule is docs/metering.md's:

        - The register's step is estimated from what it shows: the smallest rise, or difference between two
          consecutive rises, seen (and at least one float32 step at its value).
        - A register shows energy in the order it was used, late, in steps. What the power samples saw that the
          register has not shown yet (the backlog) stays a claim of the open segment: carried as its weight (its
          mark's first, the newest; at most what the segment itself saw) into the next split, where it weighs
          like power seen. A backlog of a whole step or more says the register is lagging; while it lags, any
          backlog of 1 mWh or more is carried; less than a step is otherwise its resolution, not a late step.
        - Closed slices wait while the register lags and their claims exceed what it has shown since the last split
          by half a step (its rounding) and 1 mWh, for at most `settle_ns` after the first of them closed (in the
          same boot). When slices waited, the register's delta pays their claims first, oldest first (whole mWh),
          and the rest is split as usual. What is still owed then is rounding or a power reading that runs high.
        """
        st = self.state
        a = st.authority
        for rise in (d, abs(d - a.last_delta_mwh) if a.last_delta_mwh and d else 0):
            if rise > 0:
                a.step_mwh = rise if a.step_mwh == 0 else min(a.step_mwh, rise)
        if d:
            a.last_delta_mwh = d
        step = max(1, a.step_mwh, float32_step_mwh(a.chain_mwh)) * MW_NS_PER_MWH
        held = st.held
        seg = st.seg
        total = a.unsettled_mwh + d
        shown = total * MW_NS_PER_MWH
        claims = sum(s.weight for s in held)
        if (held and a.lagging and claims - shown >= max(MW_NS_PER_MWH, step // 2)
                and held[0].end.boot_id == boot and t - held[0].end.mono_ns < settle_ns):
            a.unsettled_mwh = total
            return
        backlog = 0 if seg is None else max(0, min(seg.weight, claims + seg.weight - shown))
        mk = None if seg is None else seg.mark
        mark_weight = 0 if mk is None else mk.weight
        if a.unsettled_mwh:  # they waited: oldest claims first
            a.unsettled_mwh = 0
            for s in held:
                e = min(total, s.weight // MW_NS_PER_MWH)
                s.mwh += e
                total -= e
                s.weight = s.dur_ns = 0
            d = total
        self.allocate(d)
        a.lagging = backlog >= step or (a.lagging and backlog >= MW_NS_PER_MWH)
        if seg is not None and a.lagging:
            seg.weight = backlog  # (allocate left it 0)
            if mk is not None:
                mk.weight = min(backlog, mark_weight)

    def begin_gap(self, reason: GapReason) -> None:
        """Stop covering time at the cursor; what follows until the next reading (power) or authority reading
        (register/pulses) becomes a gap record."""
        st = self.state
        if st.seg is not None:
            self.close(RecordKind.FUNCTION, st.cursor.at())
        if st.gap is None:
            st.gap = PendingGap(reason, st.cursor.at())

    def end_gap(self, at: Now, mwh: int) -> None:
        """The pending gap (if any) ends at `at` with `mwh` that nobody watched being used."""
        gap = self.state.gap
        if gap is None:
            return
        self.recorder.gap(gap.start, at, mwh, gap.reason)
        self.events.append(MeterEvent("gap", self.appliance, self.detector.function, 0, at.wall,
                                      f"{self.appliance}: {gap.reason} gap of {max(0, at.wall - gap.start.wall):.0f} "
                                      f"s recorded ({mwh} mWh billed to no function)"))
        self.state.gap = None

    def allocate(self, d: int) -> None:
        """Split `d` mWh, and the delta that waited for the held slices to settle, over the held slices and the open
        segment (and its mark) in proportion to their integrated power, else their duration, else all to the latest;
        emit the held slices."""
        st = self.state
        d += st.authority.unsettled_mwh  # (what waited for the held slices to settle is split with it)
        st.authority.unsettled_mwh = 0
        held = st.held
        seg = st.seg
        if not held and seg is None:
            if d:  # nothing to attribute to (cannot happen by construction): never drop energy
                at = st.cursor.at()
                self.recorder.gap(at, at, d, GapReason.UNATTRIBUTED)
            return
        mk = None if seg is None else seg.mark
        weights = [s.weight for s in held]
        durations = [s.dur_ns for s in held]
        if seg is None:
            weights += [0, 0]
            durations += [0, 0]
        elif mk is None:
            weights += [seg.weight, 0]
            durations += [seg.dur_ns, 0]
        else:
            weights += [seg.weight - mk.weight, mk.weight]
            durations += [seg.dur_ns - mk.dur_ns, mk.dur_ns]
        pieces = weights if sum(weights) else durations
        if sum(pieces) == 0:
            pieces[-1 if mk is not None else (-2 if seg is not None else -3)] = 1
        parts = split_largest_remainder(d, pieces)
        for s, e in zip(held, parts, strict=False):
            s.mwh += e
        if seg is not None:
            seg.mwh += parts[-2] + parts[-1]
            seg.weight = seg.dur_ns = 0
            if mk is not None:
                mk.mwh += parts[-1]
                mk.weight = mk.dur_ns = 0
        st.held = []
        for s in held:
            self.recorder.slice(s)
