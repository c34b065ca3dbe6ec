"""Appliance profiles: which functions an appliance has, how to recognise them, and what counts as one use.

A profile is a TOML file. Thresholds are given in watts (`*_w`, int or float) or milliwatts (`*_mw`, int), never
both for the same threshold; they become integer milliwatts once, here. Every key is checked: an unknown key, a
wrong type or an impossible band raises `ProfileError(file, key, problem)` naming what is allowed.

    name = "kettle"
    max_power_w = 3200          # readings far beyond this (x1.5) are rejected, never billed
    unmatched = "other"         # the function recorded when no rule matches (default "other")

    [[function]]                # listed in priority order: the first whose rule matches wins
    name = "boil"
    on_above_w = 1000           # enters at or above 1000 W ...
    off_below_w = 600           # ... and leaves below 600 W (hysteresis)
    min_on_s = 2                # must hold for 2 s before it counts (dwell)
    min_off_s = 1               # and must be gone for 1 s before it ends

    [[function]]
    name = "standby"
    on_below_w = 5              # enters at or below 5 W, leaves above `off_above_w` (default = on_below_w)

    [cycle]                     # one *use*: starts above X W held N s, ends below Y W held M s
    start_above_w = 1000        # pauses shorter than end_for_s stay inside the use
    start_for_s = 3
    end_below_w = 100
    end_for_s = 10

A `[cycle]` may also end a use left on: `left_on_below_w = 8` with `left_on_for_s = 1800` ends it once the power
has stayed below 8 W (a machine left on after its programme, drawing only its electronics) for 30 minutes, a dwell
longer than any pause inside a programme. It must lie between `end_below_w` and `start_above_w` (a machine left
on at that level must not start a use again), and `left_on_for_s` must be at least `end_for_s`.

Two rules for phases that power alone cannot tell apart:

    only_after = ["spin"]       # (rinse) may start only once "spin" has run in the current use (since the
                                # [cycle] rule last started one); until then the next function in order is chosen
    takes_over = ["wash"]       # (spin) replaces "wash" once its own on band has held for its min_on_s, even
                                # though "wash" still holds (its band may be wider): for a phase that differs from
                                # another by lasting, not by power (a spin is continuous, tumbling pauses)

A function may also (or only) be recognised by a signal: `signal = "mode"`, `value = "cool"` matches while the
last signal reading named "mode" said "cool". With both, both must hold.

How rules combine (the detector in `detect.py` applies this): the current function stays while its own *off*
band (and signal) still holds — hysteresis beats priority, so overlapping bands do not flap. When it no longer
holds, the first function in file order whose *on* band (and signal) holds is the candidate; if none holds the
candidate is the `unmatched` function. The switch happens once the current function has been out of its band for
its `min_off_s` and the candidate has held for its `min_on_s`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ProfileError

BUILTIN_NAMES = ("washing_machine", "tumble_dryer", "dishwasher", "kettle", "oven", "air_conditioner",
                 "fridge_freezer")

NO_MIN = -(2**62)  # "no lower bound" in mW; ints keep the hot path free of None checks
NO_MAX = 2**62  # "no upper bound" in mW

_TOP_KEYS = {"name", "description", "version", "max_power_w", "max_power_mw", "unmatched", "function", "cycle"}
_FUNC_KEYS = {
    "name", "description", "signal", "value", "min_on_s", "min_off_s",
    "on_above_w", "on_above_mw", "off_below_w", "off_below_mw",
    "on_below_w", "on_below_mw", "off_above_w", "off_above_mw", "only_after", "takes_over",
}
_CYCLE_KEYS = {
    "start_above_w", "start_above_mw", "start_for_s", "end_below_w", "end_below_mw", "end_for_s",
    "left_on_below_w", "left_on_below_mw", "left_on_for_s",
}


@dataclass(frozen=True, slots=True)
class FunctionRule:
    """One function and its rule. Bands are inclusive integer mW; NO_MIN/NO_MAX mean unbounded."""

    name: str
    on_min_mw: int = NO_MIN  # enter when on_min_mw <= p <= on_max_mw
    on_max_mw: int = NO_MAX
    off_min_mw: int = NO_MIN  # stay while off_min_mw <= p <= off_max_mw (leaves below/above)
    off_max_mw: int = NO_MAX
    min_on_ns: int = 0
    min_off_ns: int = 0
    signal: str = ""  # "" = no signal condition
    value: str = ""
    description: str = ""
    only_after: tuple[str, ...] = ()  # may enter only once one of these has run in the current use
    takes_over: tuple[str, ...] = ()  # may replace these while they still hold (after its min_on_s)

    @property
    def has_power_rule(self) -> bool:
        return self.on_min_mw != NO_MIN or self.on_max_mw != NO_MAX

    def enters(self, power_mw: int, signals: dict[str, str]) -> bool:
        if not self.on_min_mw <= power_mw <= self.on_max_mw:
            return False
        return not self.signal or signals.get(self.signal) == self.value

    def stays(self, power_mw: int, signals: dict[str, str]) -> bool:
        if not self.off_min_mw <= power_mw <= self.off_max_mw:
            return False
        return not self.signal or signals.get(self.signal) == self.value


@dataclass(frozen=True, slots=True)
class CycleRule:
    """What counts as one use: power above `start_mw` for `start_ns`, then below `end_mw` for `end_ns`, or below
    `left_on_mw` (a machine left on after its programme) for `left_on_ns` (no such rule: `left_on_mw` 0)."""

    start_mw: int
    start_ns: int
    end_mw: int
    end_ns: int
    left_on_mw: int = 0
    left_on_ns: int = 0


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    max_power_mw: int
    functions: tuple[FunctionRule, ...]
    unmatched: str = "other"
    cycle: CycleRule | None = None
    description: str = ""
    version: int = 1
    file: str = "<profile>"

    def function_names(self) -> list[str]:
        return [f.name for f in self.functions] + [self.unmatched]


MAX_SECONDS = 100 * 86_400  # a dwell or cycle time beyond 100 days is a typo; and keeps ns below 2**53 (104 days)
MAX_WATTS = 10_000_000  # 10 MW: above any appliance; keeps mW far below 2**53 (a record's integer limit)


def _s_to_ns(file: str, key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ProfileError(file, key, f"must be a number of seconds >= 0, got {v!r}")
    if v > MAX_SECONDS:  # 1e308 s would overflow to inf in nanoseconds (found by fuzzing)
        raise ProfileError(file, key, f"must be at most {MAX_SECONDS} seconds (100 days), got {v!r}")
    return round(v * 1_000_000_000)


def _power(file: str, prefix: str, table: dict[str, Any], stem: str) -> int | None:
    """Read `{stem}_w` or `{stem}_mw` (not both) as integer mW."""
    kw, kmw = f"{stem}_w", f"{stem}_mw"
    if kw in table and kmw in table:
        raise ProfileError(file, f"{prefix}{kw}", f"give either {kw} (watts) or {kmw} (milliwatts), not both")
    if kw in table:
        v = table[kw]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ProfileError(file, f"{prefix}{kw}", f"must be a number of watts >= 0, got {v!r}")
        if v > MAX_WATTS:  # 1e306 W would overflow to inf in milliwatts (found by fuzzing)
            raise ProfileError(file, f"{prefix}{kw}", f"must be at most {MAX_WATTS} W, got {v!r}")
        return round(v * 1000)
    if kmw in table:
        v = table[kmw]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ProfileError(file, f"{prefix}{kmw}", f"must be an integer number of milliwatts >= 0, got {v!r}")
        if v > MAX_WATTS * 1000:
            raise ProfileError(file, f"{prefix}{kmw}", f"must be at most {MAX_WATTS * 1000} mW, got {v!r}")
        return int(v)
    return None


def _str(file: str, key: str, v: Any, *, required: bool = False) -> str:
    if not isinstance(v, str) or (required and not v.strip()):
        raise ProfileError(file, key, f"must be a{' non-empty' if required else ''} string, got {v!r}")
    return v


def _unknown(file: str, prefix: str, table: dict[str, Any], allowed: set[str]) -> None:
    for k in table:
        if k not in allowed:
            shown = k or '""'  # TOML allows an empty key; name it as written
            raise ProfileError(file, f"{prefix}{shown}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _parse_function(file: str, i: int, raw: Any) -> FunctionRule:
    prefix = f"function[{i}]."
    if not isinstance(raw, dict):
        raise ProfileError(file, f"function[{i}]", "must be a table ([[function]])")
    _unknown(file, prefix, raw, _FUNC_KEYS)
    if "name" not in raw:
        raise ProfileError(file, f"{prefix}name", "missing; every function needs a name")
    name = _str(file, f"{prefix}name", raw["name"], required=True)
    on_above = _power(file, prefix, raw, "on_above")
    off_below = _power(file, prefix, raw, "off_below")
    on_below = _power(file, prefix, raw, "on_below")
    off_above = _power(file, prefix, raw, "off_above")
    if off_below is not None and on_above is None:
        raise ProfileError(file, f"{prefix}off_below_w", "needs on_above_w (the threshold it is hysteresis for)")
    if off_above is not None and on_below is None:
        raise ProfileError(file, f"{prefix}off_above_w", "needs on_below_w (the threshold it is hysteresis for)")
    on_min = NO_MIN if on_above is None else on_above
    on_max = NO_MAX if on_below is None else on_below
    off_min = on_min if off_below is None else off_below
    off_max = on_max if off_above is None else off_above
    if on_min > on_max:
        raise ProfileError(file, f"{prefix}on_below_w", "must be at or above on_above_w (the band would be empty)")
    if off_min > on_min:
        raise ProfileError(file, f"{prefix}off_below_w", "must be at or below on_above_w (hysteresis widens a band)")
    if off_max < on_max:
        raise ProfileError(file, f"{prefix}off_above_w", "must be at or above on_below_w (hysteresis widens a band)")
    signal = _str(file, f"{prefix}signal", raw.get("signal", ""))
    value = _str(file, f"{prefix}value", raw.get("value", ""))
    if bool(signal) != ("value" in raw):
        key = "value" if signal else "signal"
        raise ProfileError(file, f"{prefix}{key}",
                           'signal and value go together (e.g. signal = "mode", value = "cool")')
    only_after = _names(file, f"{prefix}only_after", raw.get("only_after", []))
    takes_over = _names(file, f"{prefix}takes_over", raw.get("takes_over", []))
    if takes_over and not raw.get("min_on_s"):
        raise ProfileError(file, f"{prefix}min_on_s", "a function that takes_over another needs a dwell "
                           "(min_on_s > 0), or any passing reading in its band would cut the running function")
    if on_above is None and on_below is None and not signal:
        raise ProfileError(file, f"function[{i}]", f"function {name!r} needs a power band (on_above_w / on_below_w), "
                           "a signal (signal + value), or both")
    return FunctionRule(
        name=name, on_min_mw=on_min, on_max_mw=on_max, off_min_mw=off_min, off_max_mw=off_max,
        min_on_ns=_s_to_ns(file, f"{prefix}min_on_s", raw.get("min_on_s", 0)),
        min_off_ns=_s_to_ns(file, f"{prefix}min_off_s", raw.get("min_off_s", 0)),
        signal=signal, value=value, description=_str(file, f"{prefix}description", raw.get("description", "")),
        only_after=only_after, takes_over=takes_over,
    )


def _names(file: str, key: str, v: Any) -> tuple[str, ...]:
    """A function name or a list of them (checked against the profile's functions once all are read)."""
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
        raise ProfileError(file, key, f"must be a function name or a list of function names, got {v!r}")
    return tuple(items)


def _parse_cycle(file: str, raw: Any) -> CycleRule:
    if not isinstance(raw, dict):
        raise ProfileError(file, "cycle", "must be a table ([cycle])")
    _unknown(file, "cycle.", raw, _CYCLE_KEYS)
    start = _power(file, "cycle.", raw, "start_above")
    end = _power(file, "cycle.", raw, "end_below")
    if start is None:
        raise ProfileError(file, "cycle.start_above_w", "missing; a use starts when power rises above it")
    if end is None:
        raise ProfileError(file, "cycle.end_below_w", "missing; a use ends when power stays below it")
    if end > start:
        raise ProfileError(file, "cycle.end_below_w", "must be at or below cycle.start_above_w")
    end_ns = _s_to_ns(file, "cycle.end_for_s", raw.get("end_for_s", 0))
    left_on = _power(file, "cycle.", raw, "left_on_below")
    if (left_on is None) != ("left_on_for_s" not in raw):
        raise ProfileError(file, "cycle.left_on_below_w" if left_on is None else "cycle.left_on_for_s",
                           "missing; left_on_below_w and left_on_for_s go together")
    left_on_ns = 0
    if left_on is not None:
        if not end <= left_on <= start:  # a machine left on must not start a use again
            raise ProfileError(file, "cycle.left_on_below_w", "must be at or above cycle.end_below_w and at or "
                               "below cycle.start_above_w (a machine left on at that level must not start a use)")
        left_on_ns = _s_to_ns(file, "cycle.left_on_for_s", raw["left_on_for_s"])
        if left_on_ns < end_ns:
            raise ProfileError(file, "cycle.left_on_for_s", "must be at least cycle.end_for_s")
    return CycleRule(
        start_mw=start, start_ns=_s_to_ns(file, "cycle.start_for_s", raw.get("start_for_s", 0)),
        end_mw=end, end_ns=end_ns, left_on_mw=left_on or 0, left_on_ns=left_on_ns,
    )


def parse_profile(data: dict[str, Any], *, file: str = "<profile>") -> Profile:
    """Build a Profile from parsed TOML (or the same shape from a signed downlink command)."""
    if not isinstance(data, dict):
        raise ProfileError(file, "(top)", "must be a table")
    _unknown(file, "", data, _TOP_KEYS)
    if "name" not in data:
        raise ProfileError(file, "name", "missing; the profile needs a name")
    name = _str(file, "name", data["name"], required=True)
    max_mw = _power(file, "", data, "max_power")
    if max_mw is None or max_mw <= 0:
        raise ProfileError(file, "max_power_w", "missing or zero; give the appliance's maximum power in watts (> 0)")
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ProfileError(file, "version", f"must be an integer >= 1, got {version!r}")
    raw_funcs = data.get("function", [])
    if not isinstance(raw_funcs, list) or not raw_funcs:
        raise ProfileError(file, "function", "needs at least one [[function]] table")
    functions = tuple(_parse_function(file, i, f) for i, f in enumerate(raw_funcs))
    unmatched = _str(file, "unmatched", data.get("unmatched", "other"), required=True)
    seen: set[str] = set()
    for i, f in enumerate(functions):
        if f.name in seen or f.name == unmatched:
            raise ProfileError(file, f"function[{i}].name", f"duplicate function name {f.name!r} (names must be unique "
                               f"and differ from unmatched = {unmatched!r})")
        seen.add(f.name)
    for i, f in enumerate(functions):
        for key, refs in (("only_after", f.only_after), ("takes_over", f.takes_over)):
            for ref in refs:
                if ref not in seen or ref == f.name:
                    raise ProfileError(file, f"function[{i}].{key}", f"{ref!r} is not another function of this "
                                       f"profile; choose from {', '.join(n for n in seen if n != f.name)}")
        if f.only_after and "cycle" not in data:
            raise ProfileError(file, f"function[{i}].only_after", "needs a [cycle] rule (it looks back to the "
                               "start of the current use)")
    cycle = _parse_cycle(file, data["cycle"]) if "cycle" in data else None
    return Profile(name=name, max_power_mw=max_mw, functions=functions, unmatched=unmatched, cycle=cycle,
                   description=_str(file, "description", data.get("description", "")), version=version, file=file)


def load_profile(path: str | Path) -> Profile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(str(p), "(file)", f"cannot be read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ProfileError(str(p), "(file)", f"not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except ValueError as e:  # a NUL in the path (TOML allows "\u0000"; found by fuzzing)
        raise ProfileError(str(p), "(file)", "is not a usable path (it contains a NUL)") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(str(p), "(syntax)", f"not valid TOML: {e}") from e
    return parse_profile(data, file=str(p))


def builtin_profile(name: str) -> Profile:
    if name not in BUILTIN_NAMES:
        raise ProfileError(f"builtin:{name}", "name", f"no built-in profile; choose one of {', '.join(BUILTIN_NAMES)}")
    res = resources.files("metering") / "profiles" / f"{name}.toml"
    data = tomllib.loads(res.read_text(encoding="utf-8"))
    return parse_profile(data, file=f"metering/profiles/{name}.toml")


def builtin_profiles() -> dict[str, Profile]:
    return {n: builtin_profile(n) for n in BUILTIN_NAMES}
