"""`koto usage --by cycle` and `--by record`: the rows a support person reads to answer "was my washer use billed?".

Each use with its local start and end, energy, cost, whether it was entitled and whether (and when) the cloud has
it; each record with its kind, a gap named by its reason. Written a line at a time in fixed columns (no second pass
however long the listing), or as JSON lines with exact integers (`--json`) to reconcile with the cloud's own figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from metering.ledger import CycleRow, RecordRow, Synced

from .usage_report import fmt_cost, fmt_duration, fmt_kwh

Out = Callable[[str], None]


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _said(t: datetime, date: bool) -> str:
    """`t` as "Tue 2026-12-01 10:02" or "10:02": formatted by hand, a third of strftime's time on the hundred
    thousand rows of `--by cycle` on a big ledger, and the day's name in English whatever the locale."""
    hm = f"{t.hour:02d}:{t.minute:02d}"
    return f"{_DAYS[t.weekday()]} {t.year:04d}-{t.month:02d}-{t.day:02d} {hm}" if date else hm


def local(ms: int, tz: tzinfo, *, date: bool = True) -> str:
    """A local time as a person says it: "Tue 2026-12-01 10:02", or just "11:14"."""
    return _said(datetime.fromtimestamp(ms / 1000, tz), date)


def iso(ms: int | float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="seconds")


def span(start_ms: int, end_ms: int, tz: tzinfo) -> str:
    """"Tue 2026-12-01 10:02–11:14" within a day, both dates written out across midnight."""
    a, b = datetime.fromtimestamp(start_ms / 1000, tz), datetime.fromtimestamp(end_ms / 1000, tz)
    return f"{_said(a, True)}–{_said(b, a.date() != b.date())}"


class LocalClock:
    """`local` and `span` for many rows in one zone, the same text at a fraction of the cost (`--by cycle` on a
    year's hundred thousand uses): the zone's UTC offset is looked up once per UTC hour, where it is the same at
    both ends of that hour (an hour holding a transition is looked up per instant), and each day's name once;
    the rest is integer arithmetic on milliseconds."""

    _HOUR = 3_600_000
    _DAY = 86_400_000
    _EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

    def __init__(self, tz: tzinfo) -> None:
        self._tz = tz
        self._offsets: dict[int, int | None] = {}  # UTC hour -> its offset in ms, None when it changes within
        self._days: dict[int, str] = {}  # local day number -> "Tue 2026-12-01"

    def _exact(self, ms: int) -> int:
        delta = datetime.fromtimestamp(ms / 1000, self._tz).utcoffset()
        return 0 if delta is None else delta // _MS

    def _local(self, ms: int) -> int:
        """`ms` (UTC) as milliseconds of local wall time since 1970-01-01 00:00 local."""
        hour = ms // self._HOUR
        try:
            off = self._offsets[hour]
        except KeyError:
            first, last = self._exact(hour * self._HOUR), self._exact((hour + 1) * self._HOUR - 1)
            off = self._offsets[hour] = first if first == last else None
        return ms + (off if off is not None else self._exact(ms))

    def _day(self, day: int) -> str:
        try:
            return self._days[day]
        except KeyError:
            d = date.fromordinal(day + self._EPOCH_ORDINAL)
            text = self._days[day] = f"{_DAYS[d.weekday()]} {d.year:04d}-{d.month:02d}-{d.day:02d}"
            return text

    def local(self, ms: int) -> str:
        day, rem = divmod(self._local(ms), self._DAY)
        return f"{self._day(day)} {_HH_MM[rem // 60_000]}"

    def span(self, start_ms: int, end_ms: int) -> str:
        a_day, a = divmod(self._local(start_ms), self._DAY)
        b_day, b = divmod(self._local(end_ms), self._DAY)
        to = _HH_MM[b // 60_000]
        return f"{self._day(a_day)} {_HH_MM[a // 60_000]}–{to if a_day == b_day else self._day(b_day) + ' ' + to}"


_MS = timedelta(milliseconds=1)
_HH_MM = tuple(f"{m // 60:02d}:{m % 60:02d}" for m in range(1440))  # minute of the day -> "HH:MM"


def synced_text(s: Synced, tz: tzinfo, clock: LocalClock | None = None) -> str:
    if s.state != "yes":
        return s.state  # "no" or "partly": the cloud does not hold all of it yet
    if s.at_wall is None:
        return "yes"
    return clock.local(round(s.at_wall * 1000)) if clock is not None else local(round(s.at_wall * 1000), tz)


def _energy(mwh: int, exact: bool) -> str:
    return f"{mwh} mWh" if exact else f"{fmt_kwh(mwh)} kWh"


def _columns(out: Out, widths: tuple[int, ...], cells: tuple[str, ...], right: frozenset[int]) -> None:
    out(_layout(widths, right).format(*cells).rstrip())


def _layout(widths: tuple[int, ...], right: frozenset[int]) -> str:
    """The format string of a line of fixed columns, two spaces apart: each cell padded to its width (a longer cell
    is kept whole, as `str.ljust` keeps it), right-aligned where `right` says. One `str.format` per line, where a
    `ljust`/`rjust` per cell cost a third of `--by cycle`'s time on a hundred thousand uses."""
    return "  ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths))


def write_cycles(rows: Iterable[CycleRow], tz: tzinfo, out: Out, *, exact: bool = False,
                 as_json: bool = False, app_width: int = 9, known: Mapping[str, int] | None = None) -> int:
    """One line per use: when it ran, its energy, time, cost, entitlement and sync state. Returns the count."""
    head = ("appliance", "ran (local time)", "energy", "time", "uses", "cost", "entitled", "synced")
    widths = (max(app_width, 9), 28, 14 if exact else 11, 8, 4, 12, 8, 20)
    right = frozenset({2, 3, 4, 5})
    n = 0
    if as_json:
        for r in rows:
            out(json.dumps(cycle_json(r, tz), sort_keys=True))
            n += 1
        return n
    # A hundred thousand lines on a big ledger: the per-line work is bound to local names once.
    line, clock = _layout(widths, right).format, LocalClock(tz)
    span_of, duration = clock.span, fmt_duration
    for r in rows:
        if not n:
            _columns(out, widths, head, right)
        synced = r.synced
        out(line(r.appliance, span_of(r.start_ms, r.end_ms), _energy(r.energy_mwh, exact), duration(r.duration_ms),
                 str(r.uses), fmt_cost(r.costs, known), r.entitled or "-",
                 synced.state if synced.state != "yes" else synced_text(synced, tz, clock)).rstrip())
        n += 1
    return n


def write_records(rows: Iterable[RecordRow], tz: tzinfo, out: Out, *, exact: bool = False,
                  as_json: bool = False, app_width: int = 9, known: Mapping[str, int] | None = None) -> int:
    """One line per record (seq order): kind, function or gap reason, times, energy, cost, entitlement, sync."""
    head = ("seq", "appliance", "kind", "function", "from–to (local time)", "energy", "cost", "entitled", "synced")
    widths = (7, max(app_width, 9), 8, 16, 28, 14 if exact else 11, 12, 8, 20)
    right = frozenset({0, 5, 6})
    n = 0
    for r in rows:
        if as_json:
            out(json.dumps(record_json(r, tz), sort_keys=True))
        else:
            if not n:
                _columns(out, widths, head, right)
            what = f"gap: {r.reason}" if r.kind == "gap" else (r.function or "-")
            cost = fmt_cost(((r.currency, r.cost_minor),), known) if r.currency else "-"
            _columns(out, widths, (str(r.seq), r.appliance, r.kind, what, span(r.start_ms, r.end_ms, tz),
                                   _energy(r.energy_mwh, exact), cost, r.entitled or "-",
                                   synced_text(r.synced, tz)), right)
        n += 1
    return n


def _synced_json(s: Synced, tz: tzinfo) -> dict[str, Any]:
    return {"synced": s.state, "synced_at": iso(s.at_wall * 1000, tz) if s.at_wall is not None else None}


def cycle_json(r: CycleRow, tz: tzinfo) -> dict[str, Any]:
    return {"appliance": r.appliance, "cycle_id": r.cycle_id, "start": iso(r.start_ms, tz), "end": iso(r.end_ms, tz),
            "energy_mwh": r.energy_mwh, "duration_ms": r.duration_ms, "uses": r.uses,
            "cost_minor": dict(r.costs), "entitled": r.entitled or None, "first_seq": r.first_seq,
            "last_seq": r.last_seq, **_synced_json(r.synced, tz)}


def record_json(r: RecordRow, tz: tzinfo) -> dict[str, Any]:
    return {"seq": r.seq, "appliance": r.appliance, "kind": r.kind, "function": r.function,
            "reason": r.reason or None, "cycle_id": r.cycle_id or None, "start": iso(r.start_ms, tz),
            "end": iso(r.end_ms, tz), "energy_mwh": r.energy_mwh, "duration_ms": r.duration_ms, "uses": r.uses,
            "cost_minor": r.cost_minor if r.currency else None, "currency": r.currency or None,
            "entitled": r.entitled or None, **_synced_json(r.synced, tz)}
