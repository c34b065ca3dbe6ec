"""`koto profile suggest`: band and dwell changes that would fit a profile to the machine it meters, from a
replayed period, as TOML an installer can paste into a custom profile.

What it looks at, and why each is a safe kind of change:
- time given to the `unmatched` function ("other"): readings that fall in no band. The nearest band (on a log
  scale) is widened to take them;
- pauses: a function A interrupted by a short (< 5 min) stretch of a *lower-power* function B, within one use,
  and then resumed — a thermostat pause, a drum reversing. A's `min_off_s` is raised above the longest such pause,
  so it stays A. Left alone: a higher-power interruption (a heater pulse during a wash is real), and "pauses" that
  carry more than 5 % of the energy around them (a wash between two heats is a phase of its own);
- the standby level: the power the appliance rests at. When it is above the standby band or the cycle's end
  threshold (or inside a band that holds there), the appliance never looks idle and uses never end;
- uses that end late: `end_for_s` far longer than any quiet stretch a use went on after (a dishwasher's use
  open 30 minutes after its programme) is shortened to 1.5 times that stretch (at least a minute);
- uses split by a pause: two uses closer together than three times `cycle.end_for_s` may be one programme with a
  long pause; `end_for_s` is raised above the pause.
Every group of suggestions is checked: the suggested profile must parse, and replayed over the same period it must
do better (less time unmatched, fewer function changes, no extra uses; a longer dwell must not swallow a function
of higher power) or it is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from metering.errors import ProfileError
from metering.profile import NO_MAX, NO_MIN, CycleRule, FunctionRule, Profile, parse_profile

from .profile_replay import GAP, Timeline, replay

PAUSE_MAX_S = 300.0


@dataclass(frozen=True)
class Change:
    target: str  # a function name, or "cycle"
    key: str  # e.g. "on_below_w", "min_off_s"
    old: float | None
    new: float
    why: str


def _w(mw: int) -> float:
    return round(mw / 1000, 1)


def _readings_in(tl: Timeline, start: float, end: float) -> list[int]:
    return [p.power_mw or 0 for p in tl.points if start <= p.t < end]


def _pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0


def power_stats(tl: Timeline) -> dict[str, tuple[float, int, int, int]]:
    """Per function: seconds, and the 5th, 50th and 95th percentile of its readings (mW)."""
    values: dict[str, list[int]] = {}
    for s in tl.spans:
        values.setdefault(s.function, []).extend(_readings_in(tl, s.start, s.end))
    secs = tl.seconds_by_function()
    return {f: (secs.get(f, 0.0), _pct(v, 0.05), _pct(v, 0.5), _pct(v, 0.95)) for f, v in values.items()}


def _dist(p: int, f: FunctionRule) -> float:
    lo = max(f.on_min_mw, 1)
    hi = f.on_max_mw
    pp = max(p, 1)
    if lo <= pp <= hi:
        return 0.0
    return abs(math.log10(pp / lo)) if pp < lo else abs(math.log10(pp / hi))


def _unmatched(tl: Timeline) -> list[Change]:
    prof = tl.profile
    powered = [f for f in prof.functions if f.has_power_rule and not f.signal and not f.only_after]
    if not powered:
        return []
    lows: dict[str, int] = {}
    highs: dict[str, int] = {}
    for s in tl.spans:
        if s.function != prof.unmatched:
            continue
        for p in _readings_in(tl, s.start, s.end):
            f = min(powered, key=lambda g: _dist(p, g))
            if p < f.on_min_mw:
                lows[f.name] = min(lows.get(f.name, p), p)
            elif p > f.on_max_mw:
                highs[f.name] = max(highs.get(f.name, p), p)
    out: list[Change] = []
    by_name = {f.name: f for f in prof.functions}
    for name, p in lows.items():
        f = by_name[name]
        new = _w(p * 9 // 10)
        out.append(Change(name, "on_above_w", _w(f.on_min_mw), new,
                          f"readings down to {_w(p)} W fell in no band ({prof.unmatched}); {name} is the nearest"))
        if f.off_min_mw > p * 9 // 10:
            out.append(Change(name, "off_below_w", _w(f.off_min_mw), _w(p * 8 // 10), "hysteresis below it"))
    for name, p in highs.items():
        f = by_name[name]
        new = _w(p * 11 // 10)
        out.append(Change(name, "on_below_w", _w(f.on_max_mw), new,
                          f"readings up to {_w(p)} W fell in no band ({prof.unmatched}); {name} is the nearest"))
        if f.off_max_mw < p * 11 // 10:
            out.append(Change(name, "off_above_w", _w(f.off_max_mw), _w(p * 12 // 10), "hysteresis above it"))
    return out


def _pauses(tl: Timeline) -> list[Change]:
    prof = tl.profile
    by_name = {f.name: f for f in prof.functions}
    longest: dict[str, float] = {}
    energy: dict[str, list[int]] = {}  # A -> [energy of A around the pauses, energy of the pauses]
    sp = tl.spans
    for a, b, c in zip(sp, sp[1:], sp[2:], strict=False):
        if a.function != c.function or b.function in (a.function, GAP) or a.function not in by_name:
            continue
        if b.seconds >= PAUSE_MAX_S or any(b.start < u.end <= b.end or b.start <= u.start < b.end for u in tl.uses):
            continue  # too long for a pause, or the pause is between two uses
        mean_a = (a.energy_mwh + c.energy_mwh) / max(1e-9, a.seconds + c.seconds)
        mean_b = b.energy_mwh / max(1e-9, b.seconds)
        if mean_b < mean_a:
            longest[a.function] = max(longest.get(a.function, 0.0), b.seconds)
            e = energy.setdefault(a.function, [0, 0])
            e[0] += a.energy_mwh + c.energy_mwh
            e[1] += b.energy_mwh
    out = []
    for name, secs in longest.items():
        around, inside = energy[name]
        if inside * 20 > around:  # the "pauses" carry more than 5 % of the energy around them: a phase of its own
            continue
        cur = by_name[name].min_off_ns / 1e9
        new = float(math.ceil(secs * 1.2 + 2))
        if new > cur:
            out.append(Change(name, "min_off_s", cur, new, f"{name} paused for up to {secs:.0f} s at lower power "
                              "and went on: one run, not several"))
    return out


def _rest_level(tl: Timeline) -> int | None:
    """The power the appliance rests at: the median outside its uses (when it had some); when a use never ended,
    the median of the steady stretch below 50 W the period ends with, if it lasted 10 minutes (else None)."""
    if not tl.open_use:
        if not tl.uses:  # no use seen: nothing says which readings are the rest
            return None
        outside = [p.power_mw or 0 for p in tl.points if not any(u.start <= p.t <= u.end for u in tl.uses)]
        return _pct(outside, 0.5) if len(outside) >= 60 else None
    tail: list[int] = []
    t_end = tl.end
    t_start = t_end
    for p in reversed(tl.points):
        v = p.power_mw or 0
        if v >= 50_000 or (tail and abs(v - tail[0]) > max(300, tail[0] * 3 // 10)):
            break
        tail.append(v)
        t_start = p.t
    return _pct(tail, 0.5) if t_end - t_start >= 600 else None


def _standby(tl: Timeline) -> list[Change]:
    prof = tl.profile
    rest = _rest_level(tl)
    if rest is None:
        return []
    out = []
    stand = next((f for f in prof.functions if f.name == "standby"), None)
    if stand is not None and stand.on_max_mw != NO_MAX and rest * 6 // 5 > stand.on_max_mw:
        out.append(Change("standby", "on_below_w", _w(stand.on_max_mw), _w(rest * 3 // 2),
                          f"the appliance rests at about {_w(rest)} W, above the standby band"))
        if stand.off_max_mw < rest * 3 // 2:
            out.append(Change("standby", "off_above_w", _w(stand.off_max_mw), _w(rest * 2), "hysteresis above it"))
    if stand is not None:  # a function that holds at the rest level would keep the appliance out of standby
        for f in prof.functions:
            if f is stand or f.signal or not f.has_power_rule or not f.off_min_mw <= rest * 6 // 5 <= f.off_max_mw:
                continue
            out.append(Change(f.name, "off_below_w", _w(f.off_min_mw), _w(rest * 13 // 10),
                              f"{f.name} would hold at the rest level of {_w(rest)} W"))
            if f.on_min_mw < rest * 13 // 10:
                out.append(Change(f.name, "on_above_w", _w(f.on_min_mw), _w(rest * 3 // 2), "above the rest level"))
    cyc = prof.cycle
    if cyc is not None and rest * 6 // 5 > cyc.end_mw:
        end = rest * 3 // 2
        out.append(Change("cycle", "end_below_w", _w(cyc.end_mw), _w(end),
                          f"resting at about {_w(rest)} W, a use could never end below {_w(cyc.end_mw)} W"))
        if cyc.start_mw < end:
            out.append(Change("cycle", "start_above_w", _w(cyc.start_mw), _w(end * 3 // 2),
                              "a use must start above where it ends"))
    return out


def _late_end(tl: Timeline) -> list[Change]:
    """Uses that end long after the appliance came to rest: `end_for_s` more than four times the longest quiet
    stretch that a use went on after (at least one such pause must have been seen)."""
    cyc = tl.profile.cycle
    if cyc is None or not (tl.uses or tl.open_use):
        return []
    spans = [(u.start, u.end) for u in tl.uses] + ([(tl.uses[-1].end if tl.uses else tl.start, tl.end)]
                                                    if tl.open_use else [])
    longest = 0.0
    for a, b in spans:
        quiet_since: float | None = None
        for p in tl.points:
            if not a <= p.t <= b:
                continue
            if (p.power_mw or 0) < cyc.end_mw:
                quiet_since = p.t if quiet_since is None else quiet_since
            elif quiet_since is not None:
                longest = max(longest, p.t - quiet_since)  # quiet, and then the use went on
                quiet_since = None
    cur = cyc.end_ns / 1e9
    new = float(max(60, math.ceil(max(longest * 1.5, longest + 60))))
    if longest <= 0 or cur <= max(4 * longest, longest + 120) or cur - new < 120:
        return []  # no pause seen (nothing tells how long one may be), or not much to gain
    return [Change("cycle", "end_for_s", cur, new, f"the longest quiet stretch a use went on after was "
                   f"{longest:.0f} s; a use need not wait {cur:.0f} s to end")]


def _split_uses(tl: Timeline) -> list[Change]:
    cyc = tl.profile.cycle
    if cyc is None or len(tl.uses) < 2:
        return []
    pauses = [b.start - a.end + cyc.end_ns / 1e9 for a, b in zip(tl.uses, tl.uses[1:], strict=False)]
    short = [p for p in pauses if p < 3 * cyc.end_ns / 1e9 and p < 900]
    if not short:
        return []
    new = float(math.ceil(max(short) * 1.2 + 10))
    return [Change("cycle", "end_for_s", cyc.end_ns / 1e9, new,
                   f"two uses were only {min(short):.0f} s of quiet apart; if they were one programme, a use must "
                   "outlast such a pause (leave this out if they really were separate uses)")]


def _keep_left_on(prof: Profile, kept: list[Change], cands: list[Change]) -> list[Change]:
    """A [cycle] left-on rule must stay at or above `end_below_w` (and at or below `start_above_w`) and last at least
    `end_for_s` (metering/profile.py refuses it otherwise): when the candidates move those past it, it moves along,
    so a suggestion that raises the end level is not dropped as an impossible profile."""
    cyc = prof.cycle
    if cyc is None or not cyc.left_on_mw:
        return cands
    new = {c.key: c.new for c in (*kept, *cands) if c.target == "cycle"}
    end_w, start_w = new.get("end_below_w", _w(cyc.end_mw)), new.get("start_above_w", _w(cyc.start_mw))
    end_s = new.get("end_for_s", cyc.end_ns / 1e9)
    left_w, left_s = new.get("left_on_below_w", _w(cyc.left_on_mw)), new.get("left_on_for_s", cyc.left_on_ns / 1e9)
    out = list(cands)
    if left_w < end_w:
        out.append(Change("cycle", "left_on_below_w", left_w, min(end_w, start_w), "kept at or above end_below_w"))
    if left_s < end_s:
        out.append(Change("cycle", "left_on_for_s", left_s, end_s, "kept at least as long as end_for_s"))
    return out


def _badness(tl: Timeline) -> tuple[float, int]:
    """Time in the unmatched function, and how often the function changes (flapping)."""
    return tl.seconds_by_function().get(tl.profile.unmatched, 0.0), len(tl.spans)


def _swallows(before: Timeline, after: Timeline, grown: set[str]) -> bool:
    """Whether a function of higher mean power than one of `grown` lost more than 1 % of its energy."""
    e0, e1 = before.energy_by_function(), after.energy_by_function()
    secs = before.seconds_by_function()
    mean = {f: e0[f] / max(1e-9, secs.get(f, 0.0)) for f in e0}
    floor = min((mean.get(g, 0.0) for g in grown), default=0.0)
    return any(mean[f] > floor and f not in grown and e1.get(f, 0) < e0[f] * 0.99 for f in e0)


def suggest(tl: Timeline) -> list[Change]:
    """The changes, most important first (unmatched readings, pauses, the standby level, split uses). Each group is
    kept only if, replayed over the same period with the groups kept before it, it does better: less time unmatched
    or fewer function changes and no more of either, without adding uses (and, for pauses, without a function of
    higher power losing energy); the standby group also when a use that never ended now ends; the split-uses group
    when it joins uses."""
    kept: list[Change] = []
    current = tl
    for group, kind in ((_unmatched, "band"), (_pauses, "pause"), (_standby, "rest"), (_late_end, "end"),
                        (_split_uses, "join")):
        cands = [c for c in group(current) if all((c.target, c.key) != (k.target, k.key) for k in kept)]
        if not cands:
            continue
        cands = _keep_left_on(tl.profile, kept, cands)
        try:
            trial = replay(tl.points, apply(tl.profile, kept + cands), appliance="suggest", signals=tl.signals)
        except ProfileError:
            continue
        (o0, n0), (o1, n1) = _badness(current), _badness(trial)
        tidier = (o1, n1) != (o0, n0) and o1 <= o0 and n1 <= n0
        if kind == "join":
            better = len(trial.uses) < len(current.uses)
        elif kind == "rest":  # uses that never ended now end, or the same uses with less flapping; standby never
            # takes more than 5 % of the energy (it is the rest, not a phase)
            e = trial.energy_by_function()
            better = ((current.open_use and not trial.open_use) or (tidier and len(trial.uses) == len(current.uses))
                      ) and e.get("standby", 0) * 20 <= sum(e.values())
        elif kind == "end":  # uses end sooner without being split: the same uses (an open one now closed)
            better = len(trial.uses) == len(current.uses) + current.open_use and not trial.open_use
        else:
            better = tidier and len(trial.uses) <= len(current.uses)
            if kind == "pause":  # a longer min_off_s must not swallow a higher-power function (a heater pulse)
                better = better and not _swallows(current, trial, {c.target for c in cands})
        if better:
            kept += cands
            current = trial
    return kept


# ------------------------------------------------------------------------------------------------ TOML out


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _function_table(f: FunctionRule) -> dict[str, float | str | list[str]]:
    t: dict[str, float | str | list[str]] = {"name": f.name}
    if f.description:
        t["description"] = f.description
    if f.signal:
        t["signal"], t["value"] = f.signal, f.value
    if f.on_min_mw != NO_MIN:
        t["on_above_w"] = _w(f.on_min_mw)
        if f.off_min_mw != f.on_min_mw:
            t["off_below_w"] = _w(f.off_min_mw)
    if f.on_max_mw != NO_MAX:
        t["on_below_w"] = _w(f.on_max_mw)
        if f.off_max_mw != f.on_max_mw:
            t["off_above_w"] = _w(f.off_max_mw)
    if f.min_on_ns:
        t["min_on_s"] = f.min_on_ns / 1e9
    if f.min_off_ns:
        t["min_off_s"] = f.min_off_ns / 1e9
    if f.only_after:
        t["only_after"] = list(f.only_after)
    if f.takes_over:
        t["takes_over"] = list(f.takes_over)
    return t


def _cycle_table(c: CycleRule) -> dict[str, float | str | list[str]]:
    t: dict[str, float | str | list[str]] = {"start_above_w": _w(c.start_mw), "start_for_s": c.start_ns / 1e9,
                                             "end_below_w": _w(c.end_mw), "end_for_s": c.end_ns / 1e9}
    if c.left_on_mw:  # a use left on ends too (metering/profile.py): a written-out profile keeps that rule
        t["left_on_below_w"], t["left_on_for_s"] = _w(c.left_on_mw), c.left_on_ns / 1e9
    return t


def _value(v: float | str | list[str]) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return _fmt(v)


def profile_toml(profile: Profile, changes: list[Change], *, name: str | None = None) -> str:
    """The whole profile as TOML with `changes` applied, each changed key marked with what it was and why."""
    by = {(c.target, c.key): c for c in changes}
    lines = [f'name = "{name or profile.name}"']
    if profile.description:
        lines.append(f"description = {_value(profile.description)}")
    lines.append(f"max_power_w = {_fmt(_w(profile.max_power_mw))}")
    if profile.unmatched != "other":
        lines.append(f"unmatched = {_value(profile.unmatched)}")

    def table(target: str, t: dict[str, float | str | list[str]]) -> None:
        for key, ch in by.items():
            if key[0] == target and key[1] not in t:
                t[key[1]] = ch.new
        for k, v in t.items():
            c = by.get((target, k))
            if c is None:
                lines.append(f"{k} = {_value(v)}")
            else:
                was = "unset" if c.old is None else _fmt(c.old)
                lines.append(f"{k} = {_value(c.new)}  # was {was}: {c.why}")

    for f in profile.functions:
        lines += ["", "[[function]]"]
        table(f.name, _function_table(f))
    if profile.cycle is not None:
        lines += ["", "[cycle]"]
        table("cycle", _cycle_table(profile.cycle))
    return "\n".join(lines) + "\n"


def apply(profile: Profile, changes: list[Change]) -> Profile:
    """The profile with `changes` applied (parsed like any profile file: an impossible result raises)."""
    import tomllib

    return replace(parse_profile(tomllib.loads(profile_toml(profile, changes)), file="(suggested)"),
                   file=profile.file)
