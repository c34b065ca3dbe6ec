"""The meter's state as values: where it stands, the open segment and its mark, the held slices, a pending gap, the
uses under way, what it knows of its register, its counters, decisions deferred to the next reading.

Every moment is a `koto.clock.Now` (monotonic ns, wall seconds, whether the wall clock was synchronised, and the
boot that ties them): a moment never travels without its boot, so the rule "monotonic stamps of two boots do not
compare" can be checked where it matters (a gap across a reboot, a use that went on across one). The one exception
is the `Cursor`, which moves with every reading and keeps the same four facts as plain fields so that the hot path
allocates nothing.

`MeterState` is everything the meter checkpoints (with the detector's, the cycle tracker's and the register's own
small states, see `checkpoint.py`); the codec walks these declarations, so a field added here is checkpointed and
restored with no other edit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from koto.clock import Now

from ..records import GapReason, RecordKind

NEVER = Now(0, 0.0, True, "")  # before anything was seen
NO_DUE = 2**63  # no interim slice due (no open segment yet)


@dataclass(slots=True)
class Cursor:
    """Where metering stands on the energy source.

    `last_ns`/`boot`: the last accepted reading of the energy source ("" before the first), the reference for
    staleness and time order. `mono_ns`/`wall`/`synced` (in `boot`): the moment up to which the open segment covers
    time; `power_mw` is the power in force since then, `acc` the power kind's integral remainder below one mWh
    (mW·ns). `seen_power`: the source gives power samples (else a register's or counter's deltas stand in).
    `bounded`: `power_mw` is only an upper bound, not a measurement — an S0 source's power between pulses (an
    `ESTIMATED` reading), or a bare counter's that a tick lowered because no pulse has come since (the next count
    replaces it); messages then say "under" that power.
    """

    last_ns: int = 0
    boot: str = ""
    mono_ns: int = 0
    wall: float = 0.0
    synced: bool = True
    power_mw: int = 0
    acc: int = 0
    seen_power: bool = False
    bounded: bool = False

    def at(self) -> Now:
        return Now(self.mono_ns, self.wall, self.synced, self.boot)

    def move(self, at: Now) -> None:
        self.mono_ns, self.wall, self.synced = at.mono_ns, at.wall, at.synced


@dataclass(slots=True)
class Mark:
    """Where a pending candidate function began inside the open segment. A dwell only confirms a switch: when it
    does, the boundary goes back here and what accumulated since (`mwh`, `weight`, `dur_ns`) moves to the new
    segment. `peak_before` is the segment's peak up to the mark, `peak_mw` the peak since."""

    at: Now
    peak_before: int
    peak_mw: int
    mwh: int = 0
    weight: int = 0
    dur_ns: int = 0


@dataclass(slots=True)
class Segment:
    """The open segment: `function` running since `start`, in use `cycle_id` ("" = none).

    `mwh` is its energy so far (power kind: integrated; register and pulses: allocated at each authority reading);
    `weight` (mW·ns of power) and `dur_ns` (time) accumulate since the last authority reading and weigh the next
    split. `due_ns`: when the next interim slice is cut.
    """

    function: str
    cycle_id: str
    start: Now
    due_ns: int
    peak_mw: int = 0
    mwh: int = 0
    weight: int = 0
    dur_ns: int = 0
    mark: Mark | None = None
    fall: Mark | None = None  # where the use's power fell, inside this segment (see `Segments.use_changed`)

    def close(self, kind: RecordKind, end: Now) -> Slice:
        return Slice(kind, self.function, self.cycle_id, self.start, end, self.peak_mw, self.mwh, self.weight,
                     self.dur_ns)


@dataclass(slots=True)
class Slice:
    """A closed piece of a segment: emitted at once (power kind), or held until the next authority reading splits
    its delta over the held slices (register and pulses). `ends_cycle`: its use's summary follows it."""

    kind: RecordKind
    function: str
    cycle_id: str
    start: Now
    end: Now
    peak_mw: int
    mwh: int
    weight: int
    dur_ns: int
    ends_cycle: bool = False


@dataclass(frozen=True, slots=True)
class PendingGap:
    """Coverage stopped at `start` (the cursor then, in the boot it stopped in) for `reason`; the next reading (power
    kind) or authority reading (register and pulses) ends it with a `gap` record."""

    reason: GapReason
    start: Now


DETECT, USE, INTERIM = "detect", "use", "interim"  # what a deferred decision does (see `Deferred`)


@dataclass(frozen=True, slots=True)
class Deferred:
    """A decision taken between readings of the energy source — by a tick (a dwell confirmed, a use ended, an interim
    slice due) or by a signal — at `at`: `action` DETECT (the detector's verdict `code`), USE (the cycle tracker's
    `code`) or INTERIM. It takes effect when the next reading covers `at` (the boundary falls at `at`), or at the
    last reading if the source falls silent or stops first. `power_mw`: the power the decision saw; `bound`: it
    was only an upper bound (see `Cursor.bounded`)."""

    action: str
    code: int
    at: Now
    power_mw: int
    bound: bool = False


@dataclass(slots=True)
class UseTotals:
    """A use (cycle) under way, summed over its emitted records, for its `cycle` summary.

    Its wall interval covers the whole use (`start_wall`/`start_synced`: where it began). Its monotonic start
    `start_ns` is on the clock of the boot of its latest record (`end.boot_id`): where it resumed if it went on
    across a reboot, in which case `start_boot` names the boot it began in ("" otherwise).
    """

    start_ns: int
    start_wall: float
    start_synced: bool
    end: Now
    start_boot: str = ""
    mwh: int = 0
    duration_ms: int = 0
    peak_mw: int = 0


@dataclass(slots=True)
class AuthorityTrack:
    """What the meter knows of its register or pulse counter besides the raw scale (`energy.Authority`): when it was
    last read (plausibility needs the elapsed time: monotonic within a boot, wall across boots), where the register
    chain of the emitted records stands, the meter's identity (a change means the meter was swapped), and the register
delta not yet split while closed slices wait for late register steps, with what settling needs to know of the
register (`Segments.settle`)."""

    last: Now = NEVER
    chain_mwh: int = 0
    identity: str = ""
    swap_pending: bool = False
    unsettled_mwh: int = 0  # register delta since the last split, held while closed slices settle (energy.py)
    step_mwh: int = 0  # the register's step as seen (0: not yet): its smallest rise or change of rise (settling)
    last_delta_mwh: int = 0  # its last rise
    behind_mws: int = 0  # what the power saw and it has not shown (mW·ns), while not `lagging` (then: in weights)
    lagging: bool = False  # it showed a backlog of a step or more (see Segments.settle)


@dataclass(slots=True)
class Counters:
    readings: int = 0
    ignored: int = 0  # diagnostic quantities (voltage, rssi...) and other channels: not metered
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count; never reached a total


@dataclass(slots=True)
class MeterState:
    """Everything `ApplianceMeter` carries from one reading to the next (besides its detector, cycle tracker and
    register, which keep their own). `cycle_id` is the use under way ("" = none); `uses` holds the totals of each
    use whose summary is still to come (None until its first record); `stopped`: closed cleanly since.

    `fall`: where the use's power fell to an ending level (None when it has not, or it rose again); `tail`: the
    use's records since then, complete but not yet handed out, because the use may have ended at `fall` (then they
    go out without its cycle id) or the fall was a pause (then with it). See `Segments.use_changed`."""

    cursor: Cursor = field(default_factory=Cursor)
    seg: Segment | None = None
    held: list[Slice] = field(default_factory=list)
    gap: PendingGap | None = None
    stopped: bool = False
    authority: AuthorityTrack = field(default_factory=AuthorityTrack)
    cycle_id: str = ""
    uses: dict[str, UseTotals | None] = field(default_factory=dict)
    signals: dict[str, str] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    deferred: list[Deferred] = field(default_factory=list)
    fall: Now | None = None
    tail: list[Slice] = field(default_factory=list)
