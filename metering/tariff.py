"""Tariffs: what energy, time and uses cost, computed exactly and stated in a currency's minor units.

A tariff is data from the billing cloud (a downlink command, stored in the ledger), so it has a strict dict form of
strings and integers only: rates are decimal strings in major units per kWh / minute / use, never floats. The
arithmetic is exact (`Decimal` rates, `Fraction` sums); rounding to minor units happens in exactly one place,
`metering.pricing.Pricing`, by the rule in docs/pricing.md.

Three choices a reader must know (docs/pricing.md has the worked example):
- **Most specific rule wins, per rate.** A rule matches `appliance/function`, `appliance/*`, `*/function` or `*`
  (specificity in that order). Each of the three rates (kWh, minute, use) is taken from the most specific matching
  rule that sets it, so `washer/*` can add a per-use price while `*` still prices its energy.
- **Time-of-use windows override.** While a window is in force, a rate the window's own rules set for this function
  replaces the base rate; rates it does not set fall back to the base rules. Windows are local wall-clock times in
  the gateway's zone, half-open `[start, end)`, may cross midnight (the `days` are the days a window *starts*), and
  overlapping windows resolve to the first listed.
- **A record spanning a window boundary is split by wall time.** Its energy and duration are divided over the
  window segments in proportion to their length, in whole mWh and ms by the largest-remainder rule (ties to the
  earlier segment). Records are short slices (`interim_s`), so the error of assuming even use inside one is small,
  and integer shares keep every cost a fraction with a bounded denominator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import TariffError
from .records import RecordKind, UsageRecord

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MWH_PER_KWH = 1_000_000
MS_PER_MINUTE = 60_000
MAX_SPLIT_MS = 7 * 86_400_000  # a longer wall interval means the clock jumped; it is priced at its end instead

_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,9})?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_HHMM = re.compile(r"^([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?$")
_RATE_KEYS = ("per_kwh", "per_minute", "per_use")


@dataclass(frozen=True, slots=True)
class Rates:
    """The three rates resolved for one function at one moment, in major units per kWh / minute / use."""

    per_kwh: Decimal = Decimal(0)
    per_minute: Decimal = Decimal(0)
    per_use: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class RateRule:
    """Rates for the functions `match` names. `match` is normalised to `appliance/function` with `*` wildcards."""

    match: str = "*/*"
    per_kwh: Decimal | None = None
    per_minute: Decimal | None = None
    per_use: Decimal | None = None

    @property
    def specificity(self) -> int:
        """3 for `a/f`, 2 for `a/*`, 1 for `*/f`, 0 for `*/*`: an appliance outranks a function name."""
        appliance, function = self.match.split("/", 1)
        return (2 if appliance != "*" else 0) + (1 if function != "*" else 0)

    def matches(self, appliance: str, function: str) -> bool:
        a, f = self.match.split("/", 1)
        return a in ("*", appliance) and f in ("*", function)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"match": self.match}
        for key in _RATE_KEYS:
            value: Decimal | None = getattr(self, key)
            if value is not None:
                d[key] = str(value)
        return d


@dataclass(frozen=True, slots=True)
class Window:
    """A time-of-use window: local `[start_s, end_s)` seconds after midnight on the `days` (0 = Monday) it starts.

    `end_s <= start_s` means the window crosses midnight and ends on the next day; `end_s` may be 86400 (24:00).
    """

    name: str
    days: frozenset[int]
    start_s: int
    end_s: int
    rates: tuple[RateRule, ...] = ()

    @property
    def crosses_midnight(self) -> bool:
        return self.end_s <= self.start_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "days": [DAYS[d] for d in sorted(self.days)],
            "start": _hhmm(self.start_s),
            "end": _hhmm(self.end_s),
            "rates": [r.to_dict() for r in self.rates],
        }


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of a record's wall interval during which one window (or none) is in force."""

    ms: int
    window: Window | None


@dataclass(frozen=True, slots=True)
class Tariff:
    """A versioned price list. `appliances` empty = the gateway-wide default; `timezone` empty = the gateway's."""

    id: str
    version: int
    currency: str
    exponent: int = 2
    rates: tuple[RateRule, ...] = ()
    windows: tuple[Window, ...] = ()
    appliances: tuple[str, ...] = ()
    timezone: str = ""

    # ----------------------------------------------------------------------------------------------- rates

    def rates_for(self, appliance: str, function: str, window: Window | None = None) -> Rates:
        """The rates for `appliance/function`, with `window`'s rules (if any) taking precedence over the base."""
        values: dict[str, Decimal] = {}
        for key in _RATE_KEYS:
            found = _most_specific(window.rates, appliance, function, key) if window is not None else None
            if found is None:
                found = _most_specific(self.rates, appliance, function, key)
            values[key] = found if found is not None else Decimal(0)
        return Rates(**values)

    # ------------------------------------------------------------------------------------------------ time

    def zone(self, default: tzinfo) -> tzinfo:
        """The zone the windows are read in: the tariff's own if it names one, else the gateway's."""
        return ZoneInfo(self.timezone) if self.timezone else default

    def window_at(self, t_wall: float, tz: tzinfo) -> Window | None:
        """The window in force at `t_wall` (the first listed if several overlap), or None."""
        if not self.windows:
            return None
        t = _ms(t_wall)
        zone = self.zone(tz)
        found = [i for i, s, e in self._intervals(t, t + 1, zone) if s <= t < e]
        return self.windows[min(found)] if found else None

    def split(self, t_start_wall: float, t_end_wall: float, tz: tzinfo) -> tuple[Segment, ...]:
        """The wall interval cut at window boundaries; adjacent pieces under the same window are merged.

        An empty or backwards interval (a wall clock step) is one zero-length segment at its start; an interval
        longer than a week (only possible when the wall clock jumped) is one segment at the window of its end.
        """
        a, b = _ms(t_start_wall), _ms(t_end_wall)
        if not self.windows:
            return (Segment(max(b - a, 0), None),)
        if b <= a:
            return (Segment(0, self.window_at(t_start_wall, tz)),)
        if b - a > MAX_SPLIT_MS:
            return (Segment(b - a, self.window_at(t_end_wall, tz)),)
        zone = self.zone(tz)
        intervals = self._intervals(a, b, zone)
        cuts = sorted({a, b} | {x for _, s, e in intervals for x in (s, e) if a < x < b})
        out: list[Segment] = []
        for lo, hi in pairwise(cuts):
            inside = [i for i, s, e in intervals if s <= lo < e]
            window = self.windows[min(inside)] if inside else None
            if out and out[-1].window is window:
                out[-1] = Segment(out[-1].ms + hi - lo, window)
            else:
                out.append(Segment(hi - lo, window))
        return tuple(out)

    def _intervals(self, a: int, b: int, zone: tzinfo) -> list[tuple[int, int, int]]:
        """(window index, start ms, end ms) of every window occurrence that overlaps `[a, b)`, in UTC ms.

        Local times become instants by PEP 495's `fold=0`: an hour that occurs twice (autumn) means its first
        occurrence, an hour that does not exist (spring) is read with the offset before the change (02:30 -> 03:30).
        """
        first = datetime.fromtimestamp(a // 1000, zone).date() - timedelta(days=1)
        last = datetime.fromtimestamp(b // 1000, zone).date()
        out: list[tuple[int, int, int]] = []
        day = first
        while day <= last:
            for i, w in enumerate(self.windows):
                if day.weekday() not in w.days:
                    continue
                s = _local_ms(day, w.start_s, zone)
                e = _local_ms(day + timedelta(days=1) if w.crosses_midnight else day, w.end_s, zone)
                if s < e and e > a and s < b:
                    out.append((i, s, e))
            day += timedelta(days=1)
        return out

    # ------------------------------------------------------------------------------------------------ cost

    def exact_cost(self, record: UsageRecord, tz: tzinfo) -> Fraction:
        """The record's exact cost in minor units, before rounding: the tariff applied to its quantities.

        `cycle` records pay per use (at the rates in force when the use started; a cycle with no function, as the
        meter writes them, matches only rules whose function is `*`); partition records pay per kWh of `energy_mwh`
        and per minute of `duration_ms`; `gap` records and partition records with no function pay nothing.
        """
        if record.kind == RecordKind.GAP or (not record.function and record.kind != RecordKind.CYCLE):
            return Fraction(0)
        scale: int = 10**self.exponent
        if record.kind == RecordKind.CYCLE:
            rates = self.rates_for(record.appliance, record.function, self.window_at(record.t_start_wall, tz))
            return Fraction(record.uses) * Fraction(rates.per_use) * scale
        segments = self.split(record.t_start_wall, record.t_end_wall, tz)
        weights = [s.ms for s in segments]
        energy = allocate(record.energy_mwh, weights)
        duration = allocate(record.duration_ms, weights)
        total = Fraction(0)
        for seg, e, d in zip(segments, energy, duration, strict=True):
            rates = self.rates_for(record.appliance, record.function, seg.window)
            total += Fraction(e) * Fraction(rates.per_kwh) / MWH_PER_KWH
            total += Fraction(d) * Fraction(rates.per_minute) / MS_PER_MINUTE
        return total * scale

    # ------------------------------------------------------------------------------------------- dict form

    def to_dict(self) -> dict[str, Any]:
        """Strings and integers only: the downlink command body and the ledger's stored form."""
        d: dict[str, Any] = {
            "id": self.id,
            "version": self.version,
            "currency": self.currency,
            "exponent": self.exponent,
            "rates": [r.to_dict() for r in self.rates],
            "windows": [w.to_dict() for w in self.windows],
        }
        if self.appliances:
            d["appliances"] = list(self.appliances)
        if self.timezone:
            d["timezone"] = self.timezone
        return d

    @classmethod
    def from_dict(cls, d: Any, *, file: str = "tariff") -> Tariff:
        """Validate strictly; any problem raises `TariffError` naming `file`, the key and what is allowed."""
        p = _Parser(file)
        body = p.mapping(d, "$", required=("id", "version", "currency"),
                         optional=("exponent", "rates", "windows", "appliances", "timezone"))
        tariff_id = p.name(body["id"], "id")
        version = p.integer(body["version"], "version", low=1)
        currency = body["currency"]
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            problem = f"{currency!r} is not an ISO 4217 code (three capital letters, e.g. EUR)"
            raise TariffError(file, "currency", problem)
        exponent = p.integer(body.get("exponent", 2), "exponent", low=0, high=6)
        rates = p.rules(body.get("rates", []), "rates")
        windows_raw = p.array(body.get("windows", []), "windows")
        windows = tuple(p.window(w, f"windows[{i}]") for i, w in enumerate(windows_raw))
        names = [w.name for w in windows]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise TariffError(file, f"windows[{i}].name", f"{n!r} is used twice; window names must be unique")
        appliances = tuple(p.name(a, f"appliances[{i}]")
                           for i, a in enumerate(p.array(body.get("appliances", []), "appliances")))
        timezone = body.get("timezone", "")
        if not isinstance(timezone, str):
            raise TariffError(file, "timezone", "must be an IANA zone name string such as Europe/Berlin")
        if timezone:
            try:
                ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise TariffError(file, "timezone", f"{timezone!r} is not a known IANA time zone") from exc
        return cls(tariff_id, version, currency, exponent, rates, windows, appliances, timezone)


def allocate(total: int, weights: list[int]) -> list[int]:
    """Split the integer `total` in proportion to `weights`, exactly, by largest remainder (ties to the earlier).

    All-zero weights give everything to the first share.
    """
    if not weights:
        return []
    span = sum(weights)
    if span <= 0:
        return [total] + [0] * (len(weights) - 1)
    sign, magnitude = (-1, -total) if total < 0 else (1, total)
    shares = [magnitude * w // span for w in weights]
    left = magnitude - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(magnitude * weights[i] % span), i))
    for i in order[:left]:
        shares[i] += 1
    return [sign * s for s in shares]


def parse_match(text: str) -> str:
    """`*` -> `*/*`, `washer` -> `washer/*`, `washer/heat` and `*/standby` stay; anything else raises ValueError."""
    parts = text.split("/")
    if len(parts) == 1:
        parts.append("*")
    if len(parts) != 2 or not all(parts) or any(part != part.strip() for part in parts):
        raise ValueError(f"{text!r} is not 'appliance/function', 'appliance', '*/function' or '*'")
    return "/".join(parts)


def _most_specific(rules: tuple[RateRule, ...], appliance: str, function: str, key: str) -> Decimal | None:
    best: tuple[int, Decimal] | None = None
    for rule in rules:
        value: Decimal | None = getattr(rule, key)
        if value is None or not rule.matches(appliance, function):
            continue
        if best is None or rule.specificity > best[0]:
            best = (rule.specificity, value)
    return None if best is None else best[1]


def _ms(t_wall: float) -> int:
    return round(t_wall * 1000)


def _local_ms(day: date, seconds: int, zone: tzinfo) -> int:
    naive = datetime(day.year, day.month, day.day) + timedelta(seconds=seconds)
    return round(naive.replace(tzinfo=zone).timestamp()) * 1000


def _hhmm(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


class _Parser:
    """Validation helpers that raise `TariffError` with the path of the offending key."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, problem: str) -> TariffError:
        return TariffError(self.file, key, problem)

    def mapping(self, d: Any, key: str, *, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise self.fail(key, "must be an object")
        for k in d:
            if k not in required and k not in optional:
                allowed = ", ".join(required + optional)
                raise self.fail(_join(key, str(k)), f"unknown key; allowed: {allowed}")
        for k in required:
            if k not in d:
                raise self.fail(_join(key, k), "is required")
        return d

    def array(self, v: Any, key: str) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(key, "must be a list")
        return v

    def integer(self, v: Any, key: str, *, low: int, high: int | None = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise self.fail(key, f"{v!r} is not allowed; an integer {bound}")
        return v

    def name(self, v: Any, key: str) -> str:
        if not isinstance(v, str) or not v or "/" in v or v != v.strip() or v == "*":
            raise self.fail(key, f"{v!r} is not allowed; a non-empty name without '/' or surrounding spaces")
        return v

    def decimal(self, v: Any, key: str) -> Decimal:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return Decimal(v)
        if isinstance(v, str) and _DECIMAL.match(v):
            return Decimal(v)
        raise self.fail(key, f"{v!r} is not allowed; a non-negative decimal string in major units such as \"0.32\" "
                             "(at most 9 decimals; floats are not accepted)")

    def rules(self, v: Any, key: str) -> tuple[RateRule, ...]:
        out: list[RateRule] = []
        seen: set[str] = set()
        for i, raw in enumerate(self.array(v, key)):
            at = f"{key}[{i}]"
            body = self.mapping(raw, at, required=("match",), optional=_RATE_KEYS)
            if not isinstance(body["match"], str):
                raise self.fail(f"{at}.match", "must be a string like 'washer/heat', 'washer', '*/standby' or '*'")
            try:
                match = parse_match(body["match"])
            except ValueError as exc:
                raise self.fail(f"{at}.match", str(exc)) from exc
            if match in seen:
                raise self.fail(f"{at}.match", f"{match!r} appears twice in this list; merge the rules")
            seen.add(match)
            values = {k: self.decimal(body[k], f"{at}.{k}") for k in _RATE_KEYS if k in body}
            if not values:
                raise self.fail(at, "sets no rate; give at least one of per_kwh, per_minute, per_use")
            out.append(RateRule(match, **values))
        return tuple(out)

    def window(self, raw: Any, at: str) -> Window:
        body = self.mapping(raw, at, required=("name", "start", "end", "rates"), optional=("days",))
        name = body["name"]
        if not isinstance(name, str) or not name:
            raise self.fail(f"{at}.name", "must be a non-empty string")
        days_raw = self.array(body.get("days", list(DAYS)), f"{at}.days")
        days: set[int] = set()
        for j, d in enumerate(days_raw):
            if d not in DAYS:
                raise self.fail(f"{at}.days[{j}]", f"{d!r} is not allowed; one of {', '.join(DAYS)}")
            days.add(DAYS.index(d))
        if not days:
            raise self.fail(f"{at}.days", "is empty; leave it out for every day")
        start = self.clock(body["start"], f"{at}.start", allow_24=False)
        end = self.clock(body["end"], f"{at}.end", allow_24=True)
        if start == end:  # 00:00 to 24:00 is the whole day, not an empty window
            raise self.fail(f"{at}.end", "equals start; for a whole day use start 00:00 and end 24:00")
        rules = self.rules(body["rates"], f"{at}.rates")
        if not rules:
            raise self.fail(f"{at}.rates", "is empty; a window must override at least one rate")
        return Window(name, frozenset(days), start, end, rules)

    def clock(self, v: Any, key: str, *, allow_24: bool) -> int:
        m = _HHMM.match(v) if isinstance(v, str) else None
        if m is not None:
            h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
            seconds = h * 3600 + mi * 60 + s
            if mi < 60 and s < 60 and (seconds < 86400 or (allow_24 and seconds == 86400)):
                return seconds
        hint = "00:00 to 24:00" if allow_24 else "00:00 to 23:59"
        raise self.fail(key, f"{v!r} is not allowed; a local time HH:MM or HH:MM:SS from {hint}")


def _join(key: str, sub: str) -> str:
    return sub if key == "$" else f"{key}.{sub}"
