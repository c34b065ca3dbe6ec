"""Pure state machines: which function is running, and whether a use (cycle) is under way.

Both take (t_mono_ns, power_mw[, signals]) and keep only integers, so they snapshot to plain data and cost a few
comparisons per reading when nothing changes (the common case: the current function still holds).

Switching rule (see `profile.py`): the current function holds while its *off* band and signal hold (hysteresis
beats priority). Once it fails, the candidate is the first function in profile order whose *on* band and signal
hold, else the `unmatched` function. The switch happens at the reading where the current function has been failing
for its `min_off_s` and the candidate has held for its `min_on_s`. The dwell only *confirms*: the boundary is put
back at the reading where the confirmed candidate began (`cand_since`), and the meter moves what it accumulated
since then to the new segment. `update` reports that moment (`CANDIDATE`) so the meter can mark it, and `DROPPED`
when the current function holds again (the mark is void).

Two profile rules extend this. `takes_over`: while the current function still holds, a function that may take it
over and whose on band holds becomes the candidate all the same, and replaces it after its `min_on_s` (a spin is
told from tumbling by lasting, not by power). `only_after`: a function enters only once one of the named functions
has run in the current use; the meter calls `new_use()` when its cycle rule starts a use.
"""

from __future__ import annotations

from dataclasses import dataclass

from .profile import CycleRule, Profile

NO_TIME = -(2**63)
NO_CHANGE, CANDIDATE, DROPPED = -1, -2, -3


@dataclass(frozen=True, slots=True)
class DetectorState:
    """A detector's checkpoint: functions by name (a profile update may reorder or drop them), dwell timers."""

    cur: str
    cand: str
    cand_since: int
    fail_since: int
    seen: str = ""  # the functions run in the current use, comma-separated (for `only_after`)


class Detector:
    """Current function of one appliance, from power and signals, with hysteresis and dwell."""

    __slots__ = (
        "_after",
        "_funcs",
        "_min_off",
        "_n",
        "_off_max",
        "_off_min",
        "_sig",
        "_signals",
        "_takers",
        "_val",
        "cand",
        "cand_since",
        "cur",
        "fail_since",
        "names",
        "seen",
    )

    def __init__(self, profile: Profile, signals: dict[str, str]) -> None:
        self._funcs = profile.functions
        self._n = len(profile.functions)
        self.names: tuple[str, ...] = (*tuple(f.name for f in profile.functions), profile.unmatched)
        self._signals = signals
        self.cur = -1  # -1 = nothing seen yet; index n = unmatched
        self.cand = -1
        self.cand_since = NO_TIME
        self.fail_since = NO_TIME
        self._off_min = 1  # an empty band: nothing "stays" before the first reading
        self._off_max = 0
        self._sig = ""
        self._val = ""
        self._min_off = 0
        idx = {f.name: i for i, f in enumerate(profile.functions)}
        # only_after as a bit mask of the functions one of which must have run (0 = no condition)
        self._after = tuple(sum(1 << idx[n] for n in f.only_after) for f in profile.functions)
        # for each function, the functions that may take it over (by index, in priority order)
        takers = [tuple(j for j, g in enumerate(profile.functions) if f.name in g.takes_over)
                  for f in profile.functions]
        self._takers: tuple[tuple[int, ...], ...] = (*takers, ())
        self.seen = 0  # bit i: function i ran in the current use

    @property
    def function(self) -> str:
        return self.names[self.cur] if self.cur >= 0 else ""

    def _set(self, idx: int) -> None:
        self.cur = idx
        self.seen |= 1 << idx
        self.cand = -1
        self.cand_since = NO_TIME
        self.fail_since = NO_TIME
        if idx < self._n:
            f = self._funcs[idx]
            self._off_min, self._off_max, self._sig, self._val = f.off_min_mw, f.off_max_mw, f.signal, f.value
            self._min_off = f.min_off_ns
        else:  # unmatched: "stays" only while nothing else enters; checked by scanning
            self._off_min, self._off_max, self._sig, self._val, self._min_off = 1, 0, "", "", 0

    def _entering(self, p: int) -> int:
        sig = self._signals
        for i, f in enumerate(self._funcs):
            if f.on_min_mw <= p <= f.on_max_mw and (not f.signal or sig.get(f.signal) == f.value) and (
                    not self._after[i] or self.seen & self._after[i]):
                return i
        return self._n

    def _taking(self, p: int) -> int:
        """The first function that may take over the current one and whose on band holds, else -1."""
        sig = self._signals
        for i in self._takers[self.cur]:
            f = self._funcs[i]
            if f.on_min_mw <= p <= f.on_max_mw and (not f.signal or sig.get(f.signal) == f.value) and (
                    not self._after[i] or self.seen & self._after[i]):
                return i
        return -1

    def new_use(self) -> None:
        """A use starts: only the function running now counts as having run in it (for `only_after`)."""
        self.seen = 1 << self.cur if self.cur >= 0 else 0

    def start(self, p: int) -> int:
        """First reading: take the matching function at once (no dwell: there is nothing to confirm against)."""
        self._set(self._entering(p))
        return self.cur

    def update(self, t: int, p: int) -> int:
        """Feed one observation. Returns the new function's index if it switches now (the boundary is
        `cand_since` as it was before the call, i.e. the last CANDIDATE time, or `t`), CANDIDATE if a new candidate
        begins at `t`, DROPPED if the current function holds again after failing, else NO_CHANGE."""
        if self._off_min <= p <= self._off_max and (not self._sig or self._signals.get(self._sig) == self._val):
            if self._takers[self.cur]:
                c = self._taking(p)
                if c >= 0:
                    res = NO_CHANGE
                    if c != self.cand:
                        self.cand, self.cand_since, res = c, t, CANDIDATE
                    self.fail_since = NO_TIME
                    if t - self.cand_since >= self._funcs[c].min_on_ns:
                        self._set(c)
                        return c
                    return res
                if self.cand >= 0:  # a take-over that did not last (or a switch the current function outlived)
                    self.cand = -1
                    self.fail_since = NO_TIME
                    return DROPPED
            if self.fail_since != NO_TIME:
                self.fail_since = NO_TIME
                self.cand = -1
                return DROPPED
            return NO_CHANGE
        if self.cur < 0:
            return self.start(p)
        c = self._entering(p)
        if c == self.cur:  # only possible for unmatched: nothing else enters, so it holds
            if self.fail_since != NO_TIME:
                self.fail_since = NO_TIME
                self.cand = -1
                return DROPPED
            return NO_CHANGE
        if self.fail_since == NO_TIME:
            self.fail_since = t
        res = NO_CHANGE
        if c != self.cand:
            self.cand = c
            self.cand_since = t
            res = CANDIDATE
        min_on = self._funcs[c].min_on_ns if c < self._n else 0
        if t - self.fail_since >= self._min_off and t - self.cand_since >= min_on:
            self._set(c)
            return c
        return res

    def rebase(self, t: int) -> None:
        """Monotonic time restarted (new boot): restart running dwell timers at `t`."""
        if self.fail_since != NO_TIME:
            self.fail_since = t
        if self.cand_since != NO_TIME:
            self.cand_since = t

    def snapshot(self) -> DetectorState:
        seen = ",".join(n for i, n in enumerate(self.names) if self.seen >> i & 1)
        if self.cand < 0:  # no candidate: its start time is left over from the last one, and never read again
            return DetectorState(self.function, "", NO_TIME, self.fail_since, seen)
        return DetectorState(self.function, self.names[self.cand], self.cand_since, self.fail_since, seen)

    def restore(self, s: DetectorState) -> None:
        """Restore; a function name the (possibly updated) profile no longer has falls back to `unmatched`."""
        if s.cur:
            self._set(self.names.index(s.cur) if s.cur in self.names else self._n)
        if s.seen:
            self.seen = sum(1 << self.names.index(n) for n in s.seen.split(",") if n in self.names)
        if s.cand in self.names and self.cur >= 0:
            self.cand = self.names.index(s.cand)
            self.cand_since = s.cand_since
            self.fail_since = s.fail_since


IDLE, STARTING, RUNNING, ENDING = 0, 1, 2, 3
CYCLE_STARTED, CYCLE_ENDED = 1, 2
CYCLE_LOW, CYCLE_BACK = 3, 4  # a running use's power fell to an ending level, and rose again: see `fall`


@dataclass(frozen=True, slots=True)
class CycleState:
    state: int
    since: int
    low_since: int = NO_TIME  # running: power below the left-on level since then (else NO_TIME)
    fall: int = NO_TIME  # running: power below an ending level since then (else NO_TIME)


class CycleTracker:
    """One use: power above `start_mw` for `start_ns` starts it; below `end_mw` for `end_ns` ends it, and so does
    power below `left_on_mw` for `left_on_ns` (a machine left on after its programme, drawing only its electronics:
    a longer dwell than a pause inside a programme at that level).

    Anything shorter than `end_ns` below `end_mw` (or `left_on_ns` below `left_on_mw`) is a pause inside the use.
    Power dipping to or below `start_mw` while starting cancels the start (the start must be sustained).

    Either dwell only confirms an end that happened when the power fell: `update` reports that moment
    (`CYCLE_LOW`, kept as `fall`) and `CYCLE_BACK` when the power rises again (it was a pause), so the meter can
    end the use where its power fell, not half an hour later where a long dwell confirmed it; after the end,
    `since` is where the confirming rule's low spell began.
    """

    __slots__ = ("_end_mw", "_end_ns", "_hi_mw", "_left_mw", "_left_ns", "_start_mw", "_start_ns", "fall",
                 "low_since", "since", "state")

    def __init__(self, rule: CycleRule | None) -> None:
        if rule is None:  # no cycle rule: never starts
            self._start_mw, self._start_ns, self._end_mw, self._end_ns = 2**62, 0, 0, 0
            self._left_mw, self._left_ns = 0, 0
        else:
            self._start_mw, self._start_ns = rule.start_mw, rule.start_ns
            self._end_mw, self._end_ns = rule.end_mw, rule.end_ns
            self._left_mw, self._left_ns = rule.left_on_mw, rule.left_on_ns  # 0: no left-on rule (p < 0 never)
        self._hi_mw = max(self._end_mw, self._left_mw)  # at or above it, a running use is not falling
        self.state = IDLE
        self.since = NO_TIME
        self.low_since = NO_TIME
        self.fall = NO_TIME

    @property
    def running(self) -> bool:
        return self.state >= RUNNING

    def update(self, t: int, p: int) -> int:
        st = self.state
        if st == IDLE:
            if p > self._start_mw:
                self.state, self.since = STARTING, t
                if self._start_ns == 0:
                    self.state = RUNNING
                    return CYCLE_STARTED
            return 0
        if st == STARTING:
            if p <= self._start_mw:
                self.state = IDLE
            elif t - self.since >= self._start_ns:
                self.state = RUNNING
                return CYCLE_STARTED
            return 0
        if st == RUNNING and p >= self._hi_mw and self.fall == NO_TIME:
            return 0  # (the common case: a use running well above its ending levels)
        if p < self._left_mw:  # running, at most the electronics of a machine left on
            if self.low_since == NO_TIME:
                self.low_since = t
            elif t - self.low_since >= self._left_ns and (st != ENDING or p >= self._end_mw):  # (else the end
                # rule decides: the power is below its level, and the use ends where it went there, if it stays)
                return self._ended(self.low_since)
        else:
            self.low_since = NO_TIME
        if st == RUNNING:
            if p < self._end_mw:
                self.state, self.since = ENDING, t
                if self._end_ns == 0:
                    return self._ended(t)
        elif p >= self._end_mw:  # ENDING, and the power is back up: a pause
            self.state = RUNNING
        elif t - self.since >= self._end_ns:
            return self._ended(self.since)
        low = self.state == ENDING or self.low_since != NO_TIME
        if low and self.fall == NO_TIME:
            self.fall = t
            return CYCLE_LOW
        if not low and self.fall != NO_TIME:
            self.fall = NO_TIME
            return CYCLE_BACK
        return 0

    def _ended(self, fell: int) -> int:
        """The use ended; `since` keeps where it ended by the rule that confirmed it (`fell`) until the next start
        (the end rule's fall may come later than the low spell's, `fall`: a passive drying at 2.8 W, above the end
        level and below the left-on level, then the rest below it)."""
        self.state, self.since, self.low_since, self.fall = IDLE, fell, NO_TIME, NO_TIME
        return CYCLE_ENDED

    def rebase(self, t: int) -> None:
        if self.since != NO_TIME:
            self.since = t
        if self.low_since != NO_TIME:
            self.low_since = t
        if self.fall != NO_TIME:
            self.fall = t

    def snapshot(self) -> CycleState:
        return CycleState(self.state, self.since, self.low_since, self.fall)

    def restore(self, s: CycleState) -> None:
        self.state = s.state
        self.since = s.since
        self.low_since = s.low_since
        self.fall = s.fall
