"""What the detector's verdicts, uses and gaps do to the open segment, its mark, the held slices and the uses.

A segment closes into a `Slice` when its function ends (at the mark where the new function began, if a dwell
confirmed it later), when a use ends, every `interim_s`, and when coverage stops (a gap). Power sources emit a
slice at once; register and pulse sources hold it until the next authority reading's delta is split over the held
slices and the open segment (`allocate`).
"""

from __future__ import annotations

from koto.clock import Now

from ..detect import CANDIDATE, CYCLE_BACK, CYCLE_ENDED, CYCLE_LOW, CYCLE_STARTED, DROPPED, Detector
from ..energy import MW_NS_PER_MWH, float32_step_mwh, split_largest_remainder
from ..policy import Policy
from ..records import GapReason, RecordKind
from .emit import Recorder
from .results import MeterEvent, clock_time, watts
from .state import Mark, MeterState, PendingGap, Segment, Slice

MAX_LAG_NS = 10_000_000_000  # a register showing energy later than this is not lagging (see Segments.settle)


def _since(s: Slice | Segment, fall: Now) -> bool:
    """`s` began at or after `fall`, in its boot."""
    return s.start.boot_id == fall.boot_id and s.start.mono_ns >= fall.mono_ns


class Segments:
    """The segment side of one meter: shares `state` and the `events` list with it, makes records by `recorder`."""

    __slots__ = ("_idle_interim_ns", "_interim_ns", "_power_kind", "_settles", "appliance", "detector", "events",
                 "policy", "recorder", "state")

    def __init__(self, appliance: str, state: MeterState, detector: Detector, recorder: Recorder,
                 events: list[MeterEvent], *, policy: Policy | None, interim_ns: int, power_kind: bool,
                 settles: bool = False, idle_interim_ns: int | None = None) -> None:
        self.appliance = appliance
        self.state = state
        self.detector = detector
        self.recorder = recorder
        self.events = events
        self.policy = policy
        self._interim_ns = interim_ns
        self._idle_interim_ns = interim_ns if idle_interim_ns is None else idle_interim_ns  # (outside a use)
        self._power_kind = power_kind
        self._settles = settles  # a register: closed slices wait for late steps (see `settling`)

    def current(self) -> Segment:
        """The open segment, where one must be open (after a switch or a cut, which always reopen)."""
        seg = self.state.seg
        assert seg is not None
        return seg

    def open(self, at: Now) -> Segment:
        st = self.state
        seg = st.seg = Segment(self.detector.function, st.cycle_id, at, at.mono_ns + self._due_after())
        st.stopped = False
        return seg

    def _due_after(self) -> int:
        """How long an open segment runs before an interim slice is cut: `interim_s` in a use, `idle_interim_s`
        outside one (the appliance idle: its standby energy waits longer for a record, and is never lost)."""
        return self._interim_ns if self.state.cycle_id else self._idle_interim_ns

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

    def power_text(self, p: int) -> str:
        """The power `p` for a message: "under 480 W" when it is only a bound (`Cursor.bounded`: no pulse since),
        where "480 W" would read as a measurement, and a kettle in standby at 480 W as a wrong detection. The
        meter sets `bounded` for the power it passes (a deferred decision's own, while it acts on it)."""
        return f"under {watts(p)}" if self.state.cursor.bounded else watts(p)

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
        if seg.fall is not None:
            self.cut_at_fall()
            seg = self.current()
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
            seg.due_ns = at.mono_ns + self._due_after()

    def switch(self, at: Now, p: int) -> None:
        """The detector switched to its current function at `at` (or back at the open segment's mark)."""
        seg = self.state.seg
        new_fn = self.detector.function
        fall = None
        if seg is not None and seg.fall is not None:
            mk = seg.mark
            b = mk.at.mono_ns if mk is not None and mk.at.mono_ns >= seg.start.mono_ns else at.mono_ns
            if seg.fall.at.mono_ns < b:  # the fall is in the part that closes: a boundary of its own first
                self.cut_at_fall()
                seg = self.current()
            else:  # in the part that moves to the new segment: its mark moves with it
                fall, seg.fall = seg.fall, None
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
            if boundary.mono_ns == seg.start.mono_ns and seg.mwh == seg.weight == seg.dur_ns == 0 and mk is not None:
                self.state.seg = None  # the candidate began where the segment did (a use opened there): nothing left
            else:
                self.close(RecordKind.FUNCTION, boundary)
            self.events.append(MeterEvent("function_ended", self.appliance, old, p, at.wall,
                                          f"{self.appliance}: {old} ended"))
            new = self.open(boundary)
            new.mwh, new.weight, new.dur_ns, new.peak_mw = moved
            new.fall = fall
        decision = self.policy.allows(self.appliance, new_fn, at.wall) if self.policy is not None else None
        msg = f"{self.appliance}: {new_fn} started ({self.power_text(p)})"
        if decision is not None and not decision.entitled:
            msg += f" — not entitled{': ' + decision.reason if decision.reason else ''}; recorded and flagged"
        self.events.append(MeterEvent("function_started", self.appliance, new_fn, p, at.wall, msg, decision))

    def use_changed(self, cs: int, at: Now, p: int, rise_ns: int | None = None) -> None:
        """The cycle tracker says a use started or ended at `at` (a start: its power rose at `rise_ns`; an end: the
        confirming rule's low spell began at `rise_ns`; in the cursor's boot, when known), or that its power fell
        to an ending level at `at`, or rose again.

        A use ends where its power fell, not where the end dwell (up to an hour for a machine left on) confirmed
        it. The fall is marked in the open segment (`Segment.fall`, no record: a washer's tumbling pauses fall
        every few seconds); anything that would cut the segment during the low spell, and the confirmed end, cut
        it at the fall first (`cut_at_fall`), and the use's records from there wait in the tail (`Recorder`). At
        the end they go out as records of no use, with the open segment, and the use's summary ends at the fall;
        if the power rises again first, it was a pause: they go out as the use's, and the mark is dropped."""
        st = self.state
        fn = self.detector.function
        seg = st.seg
        if cs == CYCLE_LOW:
            if st.cycle_id and seg is not None and st.gap is None:
                seg.fall = Mark(at, seg.peak_mw, p)
                st.fall = at
            return
        if cs == CYCLE_BACK:
            if st.fall is not None:
                if seg is not None:
                    seg.fall = None
                self.recorder.flush_tail(out_of_use=False)
            return
        if cs == CYCLE_ENDED and st.fall is not None:
            fall = st.fall
            ended = fall.mono_ns if rise_ns is None else max(rise_ns, fall.mono_ns)
            if st.cycle_id and self._end_at_fall(fall, ended, at, p):
                return
            if st.seg is not None:  # (no boundary where it ended: the use ends here, where it was confirmed)
                st.seg.fall = None
            self.recorder.flush_tail(out_of_use=False)
        if cs == CYCLE_STARTED:
            self.detector.new_use()
            cid = f"{self.appliance}-{st.cursor.boot[:8]}-{at.mono_ns}"
            st.cycle_id = cid
            if st.seg is not None:
                if rise_ns is not None:
                    self.split_at_mark(rise_ns)
                seg = self.current()
                seg.cycle_id = cid
                seg.due_ns = min(seg.due_ns, seg.start.mono_ns + self._interim_ns)  # (in a use now)
            st.uses[cid] = None
            self.events.append(MeterEvent("cycle_started", self.appliance, fn, p, at.wall,
                                          f"{self.appliance}: use started ({fn}, {self.power_text(p)})"))
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

    def cut_at_fall(self) -> None:
        """Make the open segment's fall mark a boundary: what came before it closes as the use's (an interim
        slice), what came since goes on as the same function from the fall (the tail's first: see `Recorder`),
        with a pending candidate's mark (moved to the fall if it began before)."""
        st = self.state
        seg = st.seg
        f = None if seg is None else seg.fall
        if seg is None or f is None:
            return
        seg.fall = None
        if f.at.boot_id != seg.start.boot_id or f.at.mono_ns <= seg.start.mono_ns:
            return  # (the segment begins at the fall already)
        mk = seg.mark
        if mk is not None and mk.at.mono_ns < f.at.mono_ns:  # began before the fall: from it, on the new segment
            mk = Mark(f.at, 0, max(mk.peak_mw, f.peak_mw), f.mwh, f.weight, f.dur_ns)
        seg.mark = None
        self._split_at(f, RecordKind.INTERIM).mark = mk

    def _split_at(self, m: Mark, kind: RecordKind) -> Segment:
        """Close the open segment at `m` as a `kind` slice, without what accumulated since `m`, which goes on in a
        new segment of the same function from `m` (returned)."""
        seg = self.current()
        seg.mwh -= m.mwh
        seg.weight -= m.weight
        seg.dur_ns -= m.dur_ns
        seg.peak_mw = m.peak_before
        self.close(kind, m.at)
        new = self.open(m.at)
        new.mwh, new.weight, new.dur_ns, new.peak_mw = m.mwh, m.weight, m.dur_ns, m.peak_mw
        return new

    def _end_at_fall(self, fall: Now, ended_ns: int, at: Now, p: int) -> bool:
        """The use under way ended at `ended_ns` (at or after its low spell's `fall`; confirmed at `at`): what began
        since leaves it — the tail's records, the held slices and the open segment — and its summary follows its
        last record before. The fall mark is a boundary; a later end needs one there already (a function switch,
        an interim slice). False, and nothing done, when the open segment spans the end."""
        st = self.state
        seg = st.seg
        if ended_ns == fall.mono_ns:
            self.cut_at_fall()
            seg = st.seg
        end = Now(ended_ns, fall.wall, fall.synced, fall.boot_id)
        if seg is not None and not _since(seg, end):
            return False
        if seg is not None:
            seg.fall = None
        cid = st.cycle_id
        tail, st.tail, st.fall = st.tail, [], None
        inside = [s for s in tail if not _since(s, end)]
        outside = tail[len(inside):]
        for s in inside:
            self.recorder.slice(s)
        st.cycle_id = ""
        for s in outside:
            s.cycle_id = ""
        for s in st.held:
            if s.cycle_id == cid and _since(s, end):
                s.cycle_id = ""
        if seg is not None:
            seg.cycle_id = ""
            seg.due_ns = seg.start.mono_ns + self._idle_interim_ns
        mine = [s for s in st.held if s.cycle_id == cid]
        if mine:
            mine[-1].ends_cycle = True
        else:
            self.recorder.use(cid)
        for s in outside:
            self.recorder.slice(s)
        u_end = (inside[-1].end if inside else fall) if not mine else mine[-1].end
        self.events.append(MeterEvent("cycle_ended", self.appliance, self.detector.function, p, at.wall,
                                      f"{self.appliance}: use ended at {clock_time(u_end.wall)}, when its power "
                                      f"fell ({cid})"))
        return True

    def split_at_mark(self, rise_ns: int) -> None:
        """A use starts (its power rose at `rise_ns`) while the open segment began before that rise and a candidate
        function is still in its dwell: the use begins where the candidate began, not with the segment (the standby
        before a washer's fill). So the open segment is cut at the candidate's mark: what came before the mark is
        closed outside the use; what came since continues the same function from the mark, the mark at its start
        (when the dwell confirms the candidate, the whole segment becomes the candidate's; if the candidate is
        dropped, the segment stays in the use). A segment that began at or after the rise is the use's already
        (a dishwasher's wash, with a take-over candidate marked inside it), and stays whole."""
        st = self.state
        seg = self.current()
        mk = seg.mark
        if (mk is None or seg.start.mono_ns >= rise_ns or mk.at.mono_ns <= seg.start.mono_ns
                or mk.at.boot_id != seg.start.boot_id or seg.start.boot_id != st.cursor.boot):
            return
        self._split_at(mk, RecordKind.FUNCTION).mark = mk
        mk.peak_before = 0

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
        for late register steps (then `d` waits with them, in `unsettled_mwh`). The rule (docs/metering.md):

        - The register's step is estimated from what it shows: its smallest rise, or change between two rises of
          more than 2 mWh (its own rounding to mWh), and at least one float32 step at its value.
        - What the power samples saw and the register has not shown yet is the backlog (`behind_mws`, never below
          0). A backlog of a whole step or more says the register lags. While it lags (until the backlog is under
          1 mWh) the backlog is the open segment's claim, carried as its weight (its mark's first, the newest) into
          the next split, where it weighs like power seen; at most what the segment's peak power would use in
          `MAX_LAG_NS` (a register further behind reads low, or the power reads high: that is no lag).
        - Closed slices wait while the register lags and their claims exceed what it has shown since the last split
          by half a step (its rounding) and 1 mWh, for at most `settle_ns` after the first of them closed (in the
          same boot). When the register caught up, its delta pays their claims first, oldest first (whole mWh), and
          the rest is split as usual. After `settle_ns` it is split as usual, and the backlog is forgotten: a
          register that never catches up reads low, or the power reads high, and does not lag.
        """
        st = self.state
        a = st.authority
        for rise in (d, abs(d - a.last_delta_mwh) if a.last_delta_mwh and d else 0):
            if rise > 2 or (rise > 0 and rise == d):
                a.step_mwh = rise if a.step_mwh == 0 else min(a.step_mwh, rise)
        if d:
            a.last_delta_mwh = d
        step = max(1, a.step_mwh, float32_step_mwh(a.chain_mwh)) * MW_NS_PER_MWH
        held = st.held
        seg = st.seg
        total = a.unsettled_mwh + d
        shown = total * MW_NS_PER_MWH
        claims = sum(s.weight for s in held)
        seg_w = 0 if seg is None else seg.weight
        owed = held and a.lagging and claims - shown >= max(MW_NS_PER_MWH, step // 2)
        if owed and held[0].end.boot_id == boot and t - held[0].end.mono_ns < settle_ns:
            a.unsettled_mwh = total
            return
        unshown = (0 if a.lagging else a.behind_mws) + claims + seg_w - shown
        if owed:  # waited long enough: not a late register but one that reads low (or power that reads high)
            unshown = 0  # so the backlog is forgotten, and the register no longer counts as lagging
        mk = None if seg is None else seg.mark
        mark_weight = 0 if mk is None else mk.weight
        fl = None if seg is None else seg.fall
        fall_weight = 0 if fl is None else fl.weight
        if a.unsettled_mwh and not owed:  # the register caught up with what waited: oldest claims first
            a.unsettled_mwh = 0
            for s in held:
                e = min(total, s.weight // MW_NS_PER_MWH)
                s.mwh += e
                total -= e
                s.weight = s.dur_ns = 0
            d = total
        self.allocate(d)
        peak = max(st.cursor.power_mw, 0 if seg is None else seg.peak_mw)
        behind = max(0, min(unshown, peak * MAX_LAG_NS + step))
        was = a.lagging
        a.lagging = seg is not None and (behind >= step or (was and behind >= MW_NS_PER_MWH))
        if a.lagging and seg is not None:
            seg.weight = behind  # (allocate left it 0)
            if mk is not None:
                mk.weight = min(behind, mark_weight)
            if fl is not None:
                fl.weight = min(behind, fall_weight)
            a.behind_mws = 0  # (it is in the weights now)
        else:
            a.behind_mws = behind

    def begin_gap(self, reason: GapReason) -> None:
        """Stop covering time at the cursor; what follows until the next reading (power) or authority reading
        (register/pulses) becomes a gap record."""
        st = self.state
        if st.seg is not None:
            st.seg.fall = None  # (it closes whole, as the use's)
            self.close(RecordKind.FUNCTION, st.cursor.at())
        if st.fall is not None:  # the records of a fall go out as the use's (its end is no longer where it fell)
            self.recorder.flush_tail(out_of_use=False)
        if st.gap is None:
            st.gap = PendingGap(reason, st.cursor.at())

    def end_gap(self, at: Now, mwh: int) -> Now:
        """The pending gap (if any) ends at `at` with `mwh` that nobody watched being used; returns where coverage
        resumes: `at`, or the gap's start for a reading stamped before it (queued behind the tick that stopped
        coverage), so the gap is empty rather than backwards."""
        gap = self.state.gap
        if gap is None:
            return at
        if at.boot_id == gap.start.boot_id and at.mono_ns < gap.start.mono_ns:
            at = gap.start
        self.recorder.gap(gap.start, at, mwh, gap.reason)
        self.events.append(MeterEvent("gap", self.appliance, self.detector.function, 0, at.wall,
                                      f"{self.appliance}: {gap.reason} gap of {max(0, at.wall - gap.start.wall):.0f} "
                                      f"s recorded ({mwh} mWh billed to no function)"))
        self.state.gap = None
        return at

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
        # The open segment is split at its marks (a candidate's, the fall's): each accumulates since its moment,
        # so the pieces are the differences between them, oldest first; the newest piece takes all if nothing weighs.
        marks = [] if seg is None else sorted((m for m in (seg.mark, seg.fall) if m is not None),
                                              key=lambda m: m.at.mono_ns)
        weights = [s.weight for s in held]
        durations = [s.dur_ns for s in held]
        if seg is not None:
            ws = [seg.weight] + [m.weight for m in marks] + [0]
            ds = [seg.dur_ns] + [m.dur_ns for m in marks] + [0]
            weights += [ws[i] - ws[i + 1] for i in range(len(marks) + 1)]
            durations += [ds[i] - ds[i + 1] for i in range(len(marks) + 1)]
        pieces = weights if sum(weights) else durations
        if sum(pieces) == 0:
            pieces[-1] = 1
        parts = split_largest_remainder(d, pieces)
        for s, e in zip(held, parts, strict=False):
            s.mwh += e
        if seg is not None:
            mine = parts[len(held):]
            seg.mwh += sum(mine)
            seg.weight = seg.dur_ns = 0
            for i, m in enumerate(marks):
                m.mwh += sum(mine[i + 1:])
                m.weight = m.dur_ns = 0
        st.held = []
        for s in held:
            self.recorder.slice(s)
