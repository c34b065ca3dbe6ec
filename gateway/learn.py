"""Learn mode: record one function's power while a person runs it, derive its band and dwell rule, check it by
replaying, and save it into the appliance's own profile — what `koto learn` and the status page share.

The API (pure apart from `save_learned`, which writes files):

    session = LearnSession("kettle", "boil", baseline_mw=rest)   # rest: the power before the start (or None)
    session.feed(TracePoint(t, power_mw))                         # every reading, in time order
    session.state                                                 # waiting -> running -> rested (or stopped)
    session.stop()                                                # Enter / the page's Stop button
    learned = derive_rule(profile, "boil", session.samples, rest_mw=rest, history=older_points)

    # or, from the daemon's RAM ring (gw.power_log.rings[appliance].points()) between two marks:
    rec = cut_recording(ring_points, started_wall, stopped_wall)
    learned = derive_rule(profile, "boil", rec.samples, rest_mw=rec.rest_mw, history=rec.history)
    learned.summary()                                             # the numbers, as lines for a person
    learned.timeline                                              # the recording replayed with the new rule
    saved = save_learned(learned, config_path=Path("/etc/koto/koto.toml"), appliance="kettle")

`derive_rule` raises `LearnRefused` (its `reason` is one sentence for a person) rather than return a rule that would
not work or would break the appliance's other functions. What it derives, from the readings between the marks:

- the rest level (`rest_mw`: the readings before the start; else what the profile calls standby in the recording;
  else its 5th percentile) and from it the *active* threshold, twice the rest and at least 1.5 W above it;
- the run: first to last active reading. Its levels (weighted by energy, so a heater's level and not its
  thermostat pauses': 5th, 50th, 98th percentile, peak) give the band: `on_above` 0.8 x p5, `off_below` 0.7 x p1
  but clear of the rest, `on_below` 1.25 x p98 — left open when no other function of the profile draws more, as a
  heater's band is; its pauses (stretches below the band inside the run, shorter than 5 minutes and together with
  at most 5 % of its energy: a thermostat, a drum reversing) give `min_off_s` 1.2 x the longest pause + 2 s, so
  the function holds through them; its first stretch in band gives the dwell `min_on_s` (a quarter of it, 1 to
  10 s, at most the profile's `cycle.start_for_s`);
- relearning a function the profile has keeps its place, description, signal and its `takes_over`/`only_after`
  rules (and, with `takes_over`, its dwell, which is what defines it); a new function goes before the first function
  whose band holds its median level (else before standby, else last).

Other functions are not clobbered. Their levels are measured by replaying the history (the daemon's ring outside
the recording, and the recording before and after the run) with the current profile. A neighbour whose band reaches
into the learned one (the kettle's standby "everything below 999 W" and a learned 60 W keep-warm) gives up the
learned band (or, when the two measured levels are close, everything past their geometric mean); when the measured
levels overlap, power alone cannot tell the two apart and learning is refused (functions told apart by a signal,
cool and heat by the mode, are no rivals). Then two replays decide: the recorded run with the new profile
must give the learned function at least `MIN_DETECTED` of its energy, and the history with the new profile must
leave every other function at least `MIN_KEPT` of the energy it had with the old one.

`save_learned` writes the profile atomically to `STATE_DIR/profiles/APPLIANCE.toml` (for a built-in, a copy named
`BUILTIN-APPLIANCE`: a local customisation, which a cloud-sent update of the built-in no longer replaces) and points
the appliance at it from `STATE_DIR/household.toml`; the installer's config is never written (gateway/learn_files.py,
gateway/config_household.py). The meter uses it from the gateway's next start.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from koto.errors import KotoError
from metering.errors import ProfileError
from metering.profile import NO_MAX, NO_MIN, FunctionRule, Profile, parse_profile

from .learn_files import Saved, learned_toml, save_learned  # writing the files; re-exported here
from .power_log import TracePoint
from .profile_replay import GAP, Timeline, replay
from .profile_suggest import PAUSE_MAX_S, profile_toml

MIN_ACTIVE = 5  # readings above the rest a run needs
MIN_DETECTED = 0.8  # share of the recorded run's energy the learned rule must detect when replayed
MIN_KEPT = 0.9  # share of its energy every other function must keep in the history replayed with the new rule
MIN_SEEN = 10  # readings of another function that say where it sits (else its band stands for it)
MAX_PAUSE_S = PAUSE_MAX_S  # a lower stretch this long or longer is another function (or rest), not a pause
IDLE_S = 30.0  # LearnSession: back at rest this long after running = the function ended
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class LearnRefused(KotoError, ValueError):
    """The recording does not give a rule that works: `reason` says why, in one sentence a person can act on."""

    def __init__(self, function: str, reason: str) -> None:
        self.function = function
        self.reason = reason
        super().__init__(f"{function}: not learned: {reason}")


# ------------------------------------------------------------------------------------------------ the session


class LearnSession:
    """One recording between two marks. Feed it every reading; it says when the function ran and came back to rest.

    States: `waiting` (nothing above the rest yet), `running` (active readings seen), `rested` (back at rest for
    `idle_s` after running: the function ended; the caller stops), `stopped` (`stop()` was called). Readings fed after
    `stopped` are ignored. The threshold is the one `derive_rule` uses, from `baseline_mw` (the rest before the
    start) or, without one, from the first readings (the recording starts at rest: the person starts the function
    after starting the recording). Each reading costs a few comparisons, however long the recording.
    """

    FIRST = 3  # readings that give the rest when no baseline is known

    def __init__(self, appliance: str, function: str, *, baseline_mw: int | None = None,
                 idle_s: float = IDLE_S) -> None:
        self.appliance = appliance
        self.function = function
        self.baseline_mw = baseline_mw
        self.idle_s = idle_s
        self.state = "waiting"
        self.peak_mw = 0
        self._points: list[TracePoint] = []
        self._first: list[int] = []
        self._threshold = None if baseline_mw is None else active_threshold(baseline_mw)
        self._active = 0
        self._quiet_since: float | None = None

    @property
    def samples(self) -> tuple[TracePoint, ...]:
        return tuple(self._points)

    @property
    def threshold_mw(self) -> int | None:
        """The power at or above which the function counts as running (None until the rest is known)."""
        return self._threshold

    def feed(self, point: TracePoint) -> str:
        """Add one reading (power or signal); returns the state after it."""
        if self.state == "stopped":
            return self.state
        self._points.append(point)
        if point.power_mw is None:
            return self.state
        self.peak_mw = max(self.peak_mw, point.power_mw)
        if self._threshold is None:
            self._first.append(point.power_mw)
            if len(self._first) < self.FIRST:
                return self.state
            self._threshold = active_threshold(min(self._first))
        if point.power_mw >= self._threshold:
            self._active += 1
            self._quiet_since = None
            if (self.state == "waiting" and self._active >= 2) or self.state == "rested":
                self.state = "running"  # (from rested: it went on, a long pause, not the end)
        elif self.state == "running":
            if self._quiet_since is None:
                self._quiet_since = point.t
            elif point.t - self._quiet_since >= self.idle_s:
                self.state = "rested"
        return self.state

    def stop(self) -> tuple[TracePoint, ...]:
        self.state = "stopped"
        return self.samples


@dataclass(frozen=True)
class Recording:
    """A recording cut out of a longer trace (the daemon's power ring): the readings between the marks, the rest
    before them (median of the last `BASELINE_S`; None without 3 readings there), and everything else (history)."""

    samples: tuple[TracePoint, ...]
    rest_mw: int | None
    history: tuple[TracePoint, ...]


BASELINE_S = 60.0


def cut_recording(trace: Sequence[TracePoint], start: float, end: float) -> Recording:
    """Split `trace` (e.g. `gw.power_log.rings[appliance].points()`) at the marks `start`..`end` (wall seconds)."""
    before = sorted(p.power_mw for p in trace if p.power_mw is not None and start - BASELINE_S <= p.t < start)
    return Recording(tuple(p for p in trace if start <= p.t <= end),
                     before[(len(before) - 1) // 2] if len(before) >= 3 else None,
                     tuple(p for p in trace if not start <= p.t <= end))


# ------------------------------------------------------------------------------------------------ deriving


@dataclass(frozen=True)
class Levels:
    """What the recording showed: the rest, the threshold, the run and its levels (mW), its pauses (s)."""

    rest_mw: int
    threshold_mw: int
    start: float
    end: float
    p5_mw: int
    p50_mw: int
    p98_mw: int
    peak_mw: int
    longest_pause_s: float
    pauses: int
    energy_mwh: int
    readings: int
    band_mw: int  # the lowest level that is the function running, not one of its pauses
    breaks: int = 0  # lower stretches of MAX_PAUSE_S or more inside the run: another function or rest, not pauses
    phases: int = 0  # shorter lower stretches that carry more than 5 % of the energy: other phases, not pauses

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Learned:
    """A learned rule and the profile it makes: `profile` (new) replaces `base` for `appliance`."""

    appliance: str
    function: str
    rule: FunctionRule
    profile: Profile
    base: Profile
    levels: Levels
    detected: float  # share of the recorded run's energy the new profile gives the function
    timeline: Timeline  # the recording replayed with the new profile (what the chart shows)
    relearned: bool  # True: an existing function's rule was replaced
    adjusted: tuple[str, ...] = ()  # what else changed, and why
    kept: dict[str, float] = field(default_factory=dict)  # other functions: share of their history energy kept

    def summary(self) -> list[str]:
        lv, r = self.levels, self.rule
        top = "no upper limit" if r.on_max_mw == NO_MAX else f"up to {_w(r.on_max_mw)} W"
        lines = [
            f"{self.function}: {'relearned' if self.relearned else 'new function'} from {lv.seconds:.0f} s of "
            f"running ({lv.readings} readings, {lv.energy_mwh / 1e6:.3f} kWh)",
            f"  at rest {_w(lv.rest_mw)} W; running {_w(lv.p5_mw)} / {_w(lv.p50_mw)} / {_w(lv.p98_mw)} W "
            f"(p5 / median / p98), peak {_w(lv.peak_mw)} W; {lv.pauses} pause(s), longest {lv.longest_pause_s:.0f} s"
            + (f"; {lv.breaks} break(s) of {MAX_PAUSE_S / 60:.0f} min or more (not pauses)" if lv.breaks else "")
            + (f"; {lv.phases} lower stretch(es) with more than 5 % of the energy: other phases, not pauses"
               if lv.phases else ""),
            f"  rule: starts at {_w(r.on_min_mw)} W ({top}) held {r.min_on_ns / 1e9:g} s; stays down to "
            f"{_w(r.off_min_mw)} W, ends after {r.min_off_ns / 1e9:g} s out of its band",
            f"  replayed: the rule finds {100 * self.detected:.0f} % of the recorded run's energy",
        ]
        lines += [f"  also: {a}" for a in self.adjusted]
        lines += [f"  {f} keeps {100 * k:.0f} % of its energy in the history" for f, k in sorted(self.kept.items())]
        return lines


def active_threshold(rest_mw: int) -> int:
    """Readings at or above this are the function running: twice the rest, and at least 1.5 W above it."""
    return max(2 * rest_mw, rest_mw + 1500)


def _w(mw: int) -> float:
    return round(mw / 1000, 1)


def _pct(values: Sequence[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0


def _energy_mwh(points: Sequence[TracePoint]) -> int:
    """Each reading held until the next one (at most 60 s): mWh."""
    e = 0.0
    for a, b in itertools.pairwise(points):
        e += (a.power_mw or 0) * min(60.0, max(0.0, b.t - a.t)) / 3600
    return round(e)


def _power(points: Sequence[TracePoint]) -> list[TracePoint]:
    return sorted((p for p in points if p.power_mw is not None), key=lambda p: p.t)


def _epct(values: Sequence[int], q: float) -> int:
    """The power below which the share `q` of the energy lies (readings of equal duration): a heater's level, not
    the level of the pauses between its bursts, which are many readings but little energy."""
    s = sorted(values)
    total = sum(s)
    if not s or total <= 0:
        return _pct(s, q)
    acc = 0
    for v in s:
        acc += v
        if acc >= q * total:
            return v
    return s[-1]


def measure(samples: Sequence[TracePoint], *, rest_mw: int) -> Levels:
    """The run in `samples` (first to last reading at or above the active threshold), its levels by energy (so the
    pauses inside it do not set the band) and its pauses (stretches below the band inside the run)."""
    pts = _power(samples)
    thr = active_threshold(rest_mw)
    active = [i for i, p in enumerate(pts) if (p.power_mw or 0) >= thr]
    if len(active) < MIN_ACTIVE:
        peak = max((p.power_mw or 0 for p in pts), default=0)
        raise LearnRefused("", f"no function seen: the power stayed at or below {_w(peak)} W (the rest is about "
                           f"{_w(rest_mw)} W); start the function while recording, and record until it ends")
    run = pts[active[0]:active[-1] + 1]
    low = max(thr, _epct([p.power_mw or 0 for p in run if (p.power_mw or 0) >= thr], 0.05) * 4 // 5)
    on = [p.power_mw or 0 for p in run if (p.power_mw or 0) >= low]
    pauses: list[tuple[float, float]] = []  # (seconds, mWh) of each lower stretch inside the run
    quiet: float | None = None
    below = 0.0
    for a, b in itertools.pairwise(run):
        if (a.power_mw or 0) < low:
            quiet = a.t if quiet is None else quiet
            below += (a.power_mw or 0) * min(60.0, b.t - a.t) / 3600
        if quiet is not None and (b.power_mw or 0) >= low:
            pauses.append((b.t - quiet, below))
            quiet, below = None, 0.0
    short = [p for p in pauses if p[0] < MAX_PAUSE_S]
    energy = _energy_mwh(run)
    phases = 0
    if short and sum(e for _, e in short) * 20 > energy:  # they carry more than 5 % of the energy: phases of their
        phases, short = len(short), []  # own (a washer's tumbling between heats), not pauses (profile suggest's rule)
    return Levels(rest_mw=rest_mw, threshold_mw=thr, start=run[0].t, end=run[-1].t, p5_mw=_pct(on, 0.05),
                  p50_mw=_pct(on, 0.5), p98_mw=_pct(on, 0.98), peak_mw=max(on),
                  longest_pause_s=max((s for s, _ in short), default=0), pauses=len(short), energy_mwh=energy,
                  readings=len(run), band_mw=low, breaks=len(pauses) - len(short) - phases, phases=phases)


def _rest_from_profile(profile: Profile, samples: Sequence[TracePoint]) -> int:
    """Without a baseline: the median of what the profile calls standby in the recording, else its 5th percentile."""
    pts = _power(samples)
    tl = replay(pts, profile, appliance="learn")
    rest = [p.power_mw or 0 for s in tl.spans if s.function == "standby" for p in pts if s.start <= p.t < s.end]
    return _pct(rest, 0.5) if len(rest) >= 3 else _pct([p.power_mw or 0 for p in pts], 0.05)


def _first_stretch_s(run: Sequence[TracePoint], lo: int, hi: int) -> float:
    start: float | None = None
    for p in run:
        if lo <= (p.power_mw or 0) <= hi:
            start = p.t if start is None else start
        elif start is not None:
            return p.t - start
    return (run[-1].t - start) if start is not None and run else 0.0


def _derive_band(lv: Levels, run: Sequence[TracePoint], others: Sequence[FunctionRule],
                 start_for_ns: int) -> FunctionRule:
    p1 = _pct([p.power_mw or 0 for p in run if (p.power_mw or 0) >= lv.band_mw], 0.01)
    on_min = lv.band_mw
    off_min = min(on_min, max(p1 * 7 // 10, lv.threshold_mw * 3 // 4))
    drawing_more = any(f.has_power_rule and f.on_max_mw > lv.p98_mw for f in others)
    on_max = max(on_min, lv.p98_mw * 5 // 4) if drawing_more else NO_MAX
    off_max = max(on_max, lv.peak_mw * 11 // 10) if drawing_more else NO_MAX
    # the dwell: a quarter of its first stretch in band, 1-10 s, and no longer than a use takes to start (a use
    # that starts before its first function is confirmed takes in the segment before it: docs/profiles.md)
    min_on_ns = min(10, max(1, round(_first_stretch_s(run, on_min, on_max) / 4))) * 1_000_000_000
    if start_for_ns > 0:
        min_on_ns = max(1_000_000_000, min(min_on_ns, start_for_ns))
    min_off_s = max(2, math.ceil(lv.longest_pause_s * 1.2 + 2)) if lv.pauses else 2
    return FunctionRule(name="", on_min_mw=on_min, on_max_mw=on_max, off_min_mw=off_min, off_max_mw=off_max,
                        min_on_ns=min_on_ns, min_off_ns=min_off_s * 1_000_000_000)


def _levels_of(tl: Timeline, skip: tuple[float, float]) -> dict[str, tuple[int, int, int]]:
    """Per function of the replayed history: (readings, p2, p98) of its power, leaving out the recorded run."""
    out: dict[str, list[int]] = {}
    spans = list(tl.spans)
    i = 0
    for p in tl.points:
        if skip[0] <= p.t <= skip[1]:
            continue
        while i < len(spans) and spans[i].end <= p.t:
            i += 1
        if i < len(spans) and spans[i].start <= p.t and spans[i].function not in (GAP, tl.profile.unmatched):
            out.setdefault(spans[i].function, []).append(p.power_mw or 0)
    return {f: (len(v), _epct(v, 0.02), _epct(v, 0.98)) for f, v in out.items()}


def _carve(new: FunctionRule, lv: Levels, other: FunctionRule, seen: tuple[int, int, int] | None,
           ) -> tuple[FunctionRule, FunctionRule, str]:
    """Make `other` and the learned rule `new` not reach into each other's measured levels. Returns both rules and a
    sentence saying what changed ("" when nothing had to); raises LearnRefused when their levels overlap."""
    new2, other2, why = _carve_bands(new, lv, other, seen)
    changed = [f"{key} {_band_w(a)} -> {_band_w(b)}" for key, a, b in (
        ("on_above_w", other.on_min_mw, other2.on_min_mw), ("off_below_w", other.off_min_mw, other2.off_min_mw),
        ("on_below_w", other.on_max_mw, other2.on_max_mw), ("off_above_w", other.off_max_mw, other2.off_max_mw))
        if a != b]
    if not changed:
        return new2, other2, ""
    return new2, other2, f"{other.name}: {', '.join(changed)} ({why})"


def _band_w(mw: int) -> str:
    return "none" if mw in (NO_MIN, NO_MAX) else f"{_w(mw):g}"


def _exclusive(a: FunctionRule, b: FunctionRule) -> bool:
    """Told apart by a signal (cool and heat by the mode), whatever their power."""
    return bool(a.signal) and a.signal == b.signal and a.value != b.value


def _carve_bands(new: FunctionRule, lv: Levels, other: FunctionRule, seen: tuple[int, int, int] | None,
                 ) -> tuple[FunctionRule, FunctionRule, str]:
    if not other.has_power_rule:
        return new, other, ""
    lo_new, hi_new = lv.p5_mw, lv.p98_mw
    if seen is not None and seen[0] >= MIN_SEEN:
        lo_o, hi_o = seen[1], seen[2]
        how = "measured"
    else:
        lo_o, hi_o = other.on_min_mw, other.on_max_mw
        how = "its band; not seen in the history"
    reach_new = (new.off_min_mw, new.off_max_mw)
    reach_o = (min(other.on_min_mw, other.off_min_mw), max(other.on_max_mw, other.off_max_mw))
    if reach_new[1] < reach_o[0] or reach_o[1] < reach_new[0]:
        return new, other, ""  # the bands do not touch
    if hi_o < new.off_min_mw:  # the other one sits below the learned band: it gives up only that band
        other = replace(other, on_max_mw=min(other.on_max_mw, new.off_min_mw - 1),
                        off_max_mw=min(other.off_max_mw, new.on_min_mw - 1))
        return new, other, f"it sat at up to {_w(hi_o)} W, {how}"
    if lo_o > new.off_max_mw:  # above it
        other = replace(other, on_min_mw=max(other.on_min_mw, new.off_max_mw + 1),
                        off_min_mw=max(other.off_min_mw, new.on_max_mw + 1))
        return new, other, f"it sat at {_w(lo_o)} W and up, {how}"
    if hi_o < lo_new:  # below, close to it: a boundary between the two levels (their geometric mean)
        b = math.isqrt(max(1, hi_o) * lo_new)
        new = replace(new, on_min_mw=max(new.on_min_mw, b + 1), off_min_mw=max(new.off_min_mw, b + 1))
        other = replace(other, on_max_mw=min(other.on_max_mw, b), off_max_mw=min(other.off_max_mw, b))
        return new, other, f"it sat at up to {_w(hi_o)} W, {how}: the boundary is between the two levels"
    if lo_o > hi_new:  # above, close to it
        b = math.isqrt(hi_new * lo_o)
        new = replace(new, on_max_mw=min(new.on_max_mw, b), off_max_mw=min(new.off_max_mw, b))
        other = replace(other, on_min_mw=max(other.on_min_mw, b + 1), off_min_mw=max(other.off_min_mw, b + 1))
        return new, other, f"it sat at {_w(lo_o)} W and up, {how}: the boundary is between the two levels"
    top = "no upper limit" if hi_o == NO_MAX else f"{_w(hi_o)} W"
    bottom = 0.0 if lo_o == NO_MIN else _w(lo_o)
    raise LearnRefused(new.name, f"power alone cannot tell it ({_w(lo_new)}-{_w(hi_new)} W) from {other.name} "
                       f"({bottom}-{top}, {how}); relearn {other.name} instead, or tell them apart by a signal "
                       "in a profile edit (docs/profiles.md)")


def _place(functions: list[FunctionRule], rule: FunctionRule, level_mw: int) -> int:
    for i, f in enumerate(functions):
        if f.has_power_rule and not f.signal and f.on_min_mw <= level_mw <= f.on_max_mw:
            return i
    return next((i for i, f in enumerate(functions) if f.name == "standby"), len(functions))


def _as_profile(base: Profile, functions: list[FunctionRule], max_power_mw: int) -> Profile:
    """The new profile, parsed like any profile file (an impossible combination raises)."""
    p = replace(base, functions=tuple(functions), max_power_mw=max_power_mw)
    try:
        return replace(parse_profile(tomllib.loads(profile_toml(p, [])), file=base.file), version=base.version)
    except ProfileError as e:
        raise LearnRefused(functions[0].name, f"the learned rule does not make a valid profile ({e.problem})") from e


def derive_rule(base: Profile, function: str, samples: Sequence[TracePoint], *, appliance: str = "appliance",
                rest_mw: int | None = None, history: Sequence[TracePoint] = ()) -> Learned:
    """Learn `function` from `samples` (the recording: power readings, signals too) on top of `base`.

    `rest_mw` is the power before the recording started (else found from the recording); `history` is what else
    is known of this appliance's power (the daemon's ring outside the recording) for the checks that other
    functions keep working. Raises `LearnRefused` saying why when no good rule comes out."""
    if not NAME_RE.match(function) or function in (base.unmatched, GAP):
        raise LearnRefused(function, f"{function!r} cannot be a function name; use letters, digits, '_', '.', '-' "
                           f"(1-32), not {base.unmatched!r}")
    pts = _power(samples)
    if rest_mw is None:
        rest_mw = _rest_from_profile(base, pts)
    try:
        lv = measure(pts, rest_mw=rest_mw)
    except LearnRefused as e:
        raise LearnRefused(function, e.reason) from None
    run = [p for p in pts if lv.start <= p.t <= lv.end]
    old = next((f for f in base.functions if f.name == function), None)
    others = [f for f in base.functions if f.name != function]
    rivals = [f for f in others if old is None or not _exclusive(f, old)]
    rule = replace(_derive_band(lv, run, rivals, base.cycle.start_ns if base.cycle else 0), name=function)
    if old is not None:  # relearned: the band and dwell are new, what the profile says about it otherwise stays
        rule = replace(rule, signal=old.signal, value=old.value, description=old.description,
                       only_after=old.only_after, takes_over=old.takes_over,
                       min_on_ns=old.min_on_ns if old.takes_over else rule.min_on_ns)
    signals = [p for p in samples if p.power_mw is None]
    hist = sorted([*_power(history), *(p for p in pts if not lv.start <= p.t <= lv.end)], key=lambda p: p.t)
    hist_signals = sorted([*(p for p in history if p.power_mw is None), *signals], key=lambda p: p.t)
    before = replay(hist, base, appliance=appliance, signals=hist_signals) if hist else None
    seen = _levels_of(before, (lv.start, lv.end)) if before is not None else {}
    adjusted: list[str] = []
    carved: list[FunctionRule] = []
    for f in others:
        if _exclusive(f, rule):
            carved.append(f)
            continue
        rule, f2, said = _carve(rule, lv, f, seen.get(f.name))
        carved.append(f2)
        if said:
            adjusted.append(said)
    functions = list(carved)
    if old is not None:
        functions.insert([f.name for f in base.functions].index(function), rule)
    else:
        functions.insert(_place(functions, rule, lv.p50_mw), rule)
    max_mw = base.max_power_mw
    if lv.peak_mw * 2 > max_mw * 3:  # the meter rejects readings above 1.5 x max_power
        max_mw = lv.peak_mw * 6 // 5
        adjusted.append(f"max_power_w {_w(base.max_power_mw)} -> {_w(max_mw)} (it drew {_w(lv.peak_mw)} W)")
    new = _as_profile(base, functions, max_mw)
    rule = next(f for f in new.functions if f.name == function)
    ran = replay(run, new, appliance=appliance, signals=[s for s in signals if s.t <= lv.end])
    total = sum(ran.energy_by_function().values())
    detected = ran.energy_by_function().get(function, 0) / total if total > 0 else 0.0
    if detected < MIN_DETECTED:
        got = max(ran.energy_by_function().items(), key=lambda kv: kv[1])[0] if total > 0 else "nothing"
        raise LearnRefused(function, f"replayed, the learned rule finds only {100 * detected:.0f} % of the run's "
                           f"energy (most went to {got}); record the function on its own, from rest to rest")
    kept: dict[str, float] = {}
    if before is not None:
        after = replay(hist, new, appliance=appliance, signals=hist_signals)
        e0, e1 = before.energy_by_function(), after.energy_by_function()
        total0 = sum(e0.values()) or 1
        for name, had in e0.items():
            if name in (function, GAP, base.unmatched) or had * 100 < total0 or had < 1000:
                continue
            kept[name] = e1.get(name, 0) / had
            if kept[name] < MIN_KEPT:
                raise LearnRefused(function, f"{name} would lose {100 * (1 - kept[name]):.0f} % of its energy in "
                                   "the history replayed with the learned rule; record again, or relearn "
                                   f"{name} too")
    timeline = replay(pts, new, appliance=appliance, signals=signals)
    return Learned(appliance, function, rule, new, base, lv, detected, timeline, old is not None, tuple(adjusted),
                   kept)


__all__ = ["LearnRefused", "LearnSession", "Learned", "Levels", "Recording", "Saved", "cut_recording", "derive_rule",
           "learned_toml", "measure", "save_learned"]
