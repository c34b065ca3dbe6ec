"""How energy reaches the open segment: `EnergyFeed`, the part of `ApplianceMeter` that moves its cursor over time
(integrating power, or weighting it for a register or pulse source) and hands each authority reading's delta to the
held slices, the open segment, a pending gap, or a gap of its own. Kept apart from `appliance.py`, which routes
readings and decisions, because this is where energy is conserved: every mWh a register counts lands here once."""

from __future__ import annotations

from koto.clock import Now
from koto.reading import Reading

from ..detect import Detector
from ..energy import DIP, FIRST, JUMP, MW_NS_PER_MWH, OK, SWAP, Authority
from ..records import GapReason, RecordKind
from .emit import Recorder
from .results import MeterEvent
from .segments import Segments
from .state import MeterState, Segment

_INTERIM = RecordKind.INTERIM


def moment(r: Reading) -> Now:
    return Now(r.t_mono_ns, r.t_wall, r.wall_synced, r.boot_id)


class EnergyFeed:
    """Mixed into `ApplianceMeter`, which owns every attribute declared here (it has the slots)."""

    __slots__ = ()

    appliance: str
    state: MeterState
    detector: Detector
    _auth: Authority
    _ev: list[MeterEvent]
    _max_mw: int
    _power_kind: bool
    _recorder: Recorder
    _segments: Segments
    _settle_ns: int
    _settles: bool

    def _detect(self, t: int, p: int, src: Reading | Now) -> None:
        raise NotImplementedError  # ApplianceMeter's

    def _advance(self, seg: Segment, t: int, wall: float, synced: bool) -> None:
        """Move the cursor to `t`, integrating (power kind) or weighting (register/pulses) the power in force over
        the open segment `seg` and its mark. The moment comes as three values, not a `Now`: this runs for every
        reading, and a moment object per reading would be the hot path's only allocation."""
        c = self.state.cursor
        dt = t - c.mono_ns
        if dt <= 0:
            return
        if self._power_kind:
            acc = c.acc + c.power_mw * dt
            if acc >= MW_NS_PER_MWH:
                e = acc // MW_NS_PER_MWH
                seg.mwh += e
                mk = seg.mark
                if mk is not None:
                    mk.mwh += e
                fl = seg.fall
                if fl is not None:
                    fl.mwh += e
                acc -= e * MW_NS_PER_MWH
            c.acc = acc
        else:
            mk = seg.mark
            fl = seg.fall
            if c.seen_power:
                seg.weight += c.power_mw * dt
                if mk is not None:
                    mk.weight += c.power_mw * dt
                if fl is not None:
                    fl.weight += c.power_mw * dt
            seg.dur_ns += dt
            if mk is not None:
                mk.dur_ns += dt
            if fl is not None:
                fl.dur_ns += dt
        c.mono_ns = t
        c.wall = wall
        c.synced = synced

    def _authority(self, r: Reading, raw: int) -> None:
        """A register or pulse reading: its delta since the previous one goes to the held slices and the open
        segment, or to the pending gap, or (an implausible jump) to a gap of its own."""
        st = self.state
        c = st.cursor
        a = st.authority
        segs = self._segments
        t = r.t_mono_ns
        if r.boot_id == a.last.boot_id:
            dt = t - a.last.mono_ns
        else:  # monotonic time is not comparable across boots: judge plausibility by the wall clock
            dt = max(0, round((r.t_wall - a.last.wall) * 1e9))
        if st.seg is not None:
            self._advance(st.seg, t, r.t_wall, r.wall_synced)
        swapped = a.swap_pending
        a.swap_pending = False
        before_raw = self._auth.last_raw
        status, d = self._auth.observe(raw, dt, self._max_mw, swapped=swapped)
        if status == DIP:  # held, not believed: nothing moves until the next reading says what it was
            self._ev.append(MeterEvent("register_dip", self.appliance, self.detector.function, c.power_mw, r.t_wall,
                                       f"{self.appliance}: register read {raw}, below its last {before_raw}; held "
                                       "until the next reading shows a reset, a meter change or a bad reading"))
            return
        at = a.last = moment(r)
        if status == FIRST:
            a.chain_mwh = self._auth.mwh(self._auth.cont)
            st.gap = None  # nothing was covered before the first authority reading: nothing to fill
            if st.seg is None:
                if self.detector.cur < 0:
                    self.detector.start(c.power_mw)
                    segs.switch(at, c.power_mw)
                c.move(at)
                segs.open(at)
            return
        if status != OK:  # a swap re-based at the value it went to (`rebase_raw`); what came since is counted
            after, noted = (self._auth.rebase_raw, 0) if status == SWAP else (raw, d)
            event, words = self._recorder.anomaly(status, at, before_raw, after, noted, self._auth.offset,
                                                  self._max_mw)
            self._ev.append(MeterEvent(event, self.appliance, self.detector.function, c.power_mw, r.t_wall,
                                       f"{self.appliance}: {words}"))
        if st.gap is not None:
            if st.held:
                segs.allocate(0)
            resume = segs.end_gap(at, d)
            c.move(resume)
            segs.open(resume)
        elif status == JUMP:
            segs.allocate(0)
            segs.cut(_INTERIM, at)
            self._recorder.gap(at, at, d, GapReason.IMPLAUSIBLE)
        elif self._settles and c.seen_power:
            segs.settle(d, t, r.boot_id, self._settle_ns)
        else:
            segs.allocate(d)
        if not c.seen_power and dt > 0 and status != JUMP:
            # no power samples on this source: detect on the power the authority implies over the interval
            p = d * MW_NS_PER_MWH // dt
            c.power_mw = p
            c.bounded = False
            self._detect(t, p, r)
            seg = st.seg
            if seg is not None and p > seg.peak_mw:
                seg.peak_mw = p
