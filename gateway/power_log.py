"""Recent power readings per appliance, kept in RAM and written to tmpfs, for `koto profile check/suggest`.

The daemon keeps, per appliance, a bounded ring of its last power readings (6 h at 1 Hz by default) as two compact
arrays (8 bytes a reading, times to 0.1 s: 173 KB an appliance) and the last signal changes (a mode...). Every
`every_s` — and soon after `koto profile` asks by creating `power-request` in the runtime folder — it writes each
ring as `power-APPLIANCE.csv` in the runtime folder ($RUNTIME_DIRECTORY, /run/koto: tmpfs), never on the SD card.

The trace format (also what `--trace FILE` reads; a recording of your own can be written in it):

    # any number of comment lines
    t,power_w,signal,value
    1764921600.000,12.3,,            <- a power reading: unix time in seconds (or ISO 8601), watts
    1764921600.500,,mode,cool        <- a signal reading (power empty)

Only `t` and `power_w` are required; `signal,value` may be left out.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import operator
import os
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from koto.reading import Quantity, Reading
from metering.energy import EnergySpec, pulses_to_mwh

from .errors import ConfigError

log = logging.getLogger("koto.power_log")

RING_READINGS = 6 * 3600  # 6 h at 1 Hz
SIGNALS_KEPT = 512
WRITE_EVERY_S = 120.0
REQUEST_FILE = "power-request"
HEADER = "t,power_w,signal,value"
POWER_LINE = "{:.3f},{:.3f},,\n"  # a power reading's line, as `_line` writes it
TRACE_CHUNK = 1024  # power lines formatted at a time by the writer


def trace_name(appliance: str) -> str:
    return f"power-{appliance}.csv"


@dataclass(frozen=True, slots=True)
class TracePoint:
    """One line of a trace: a power reading (`power_mw` set) or a signal reading (`signal` set)."""

    t: float
    power_mw: int | None = None
    signal: str = ""
    value: str = ""


class PowerRing:
    """The last `size` power readings of one appliance (wall time to the ms, power in mW), and its last signals."""

    __slots__ = ("_base", "_ds", "_mw", "_n", "_next", "changes", "signals", "size")

    def __init__(self, size: int = RING_READINGS) -> None:
        self.size = size
        # wall time in tenths of a second from `_base` (signed: the wall clock may step back), and power in mW;
        # 4 bytes each
        self._ds = array("i", bytes(4 * size))
        self._mw = array("i", bytes(4 * size))
        self._base = -1.0
        self._next = 0
        self._n = 0
        self.changes = 0  # readings added so far: tells the writer whether anything is new
        self.signals: deque[TracePoint] = deque(maxlen=SIGNALS_KEPT)

    def __len__(self) -> int:
        return self._n

    def add(self, t_wall: float, power_mw: int) -> None:
        i = self._next
        if self._base < 0:
            self._base = t_wall
        self._ds[i] = max(-(2**31), min(2**31 - 1, round((t_wall - self._base) * 10)))
        self._mw[i] = min(power_mw, 2**31 - 1)
        self._next = (i + 1) % self.size
        if self._n < self.size:
            self._n += 1
        self.changes += 1

    def add_signal(self, t_wall: float, name: str, value: str) -> None:
        self.signals.append(TracePoint(t_wall, None, name, value))
        self.changes += 1

    def copy(self) -> PowerRing:
        """A frozen copy (two array copies: cheap enough for the event loop; the formatting runs elsewhere)."""
        c = PowerRing.__new__(PowerRing)
        c.size, c._ds, c._mw, c._base = self.size, array("i", self._ds), array("i", self._mw), self._base
        c._next, c._n, c.changes = self._next, self._n, self.changes
        c.signals = deque(self.signals, maxlen=SIGNALS_KEPT)
        return c

    def points(self) -> list[TracePoint]:
        """Oldest first, power and signals merged in time order."""
        start = (self._next - self._n) % self.size
        idx = [(start + k) % self.size for k in range(self._n)]
        pts = [TracePoint(round(self._base + self._ds[i] / 10, 1), self._mw[i]) for i in idx]
        if self.signals:
            first = pts[0].t if pts else float("-inf")
            pts += [s for s in self.signals if s.t >= first]
            pts.sort(key=lambda p: (p.t, p.power_mw is not None))
        return pts


    def trace_lines(self) -> Iterator[str]:
        """The data lines of `format_trace(self.points())`, one at a time (from `trace_chunks`)."""
        for chunk in self.trace_chunks():
            yield from chunk.splitlines()

    def trace_chunks(self) -> Iterator[str]:
        """The data lines of `format_trace(self.points())`, each ending in a newline, joined in chunks of at most
        `TRACE_CHUNK` power lines: the writer's memory stays a few tens of KB whatever the ring's fill, where a full
        ring's 21,600 TracePoints and their lines took about 5 MB per appliance each write, a high-water mark the
        allocator kept (bench/soak.py). A chunk's times and powers are formatted by one `str.format` map in C, at
        about half the CPU of a line at a time (bench/power_ring.py): a full ring's write every 2 minutes was a
        fifth of the daemon's CPU per appliance (docs/performance.md). A ring whose times go back (the wall clock
        stepped) takes the sorting path, `points()`."""
        n, size = self._n, self.size
        start = (self._next - n) % size

        def span(arr: array[int], a: int, b: int) -> array[int]:
            """Readings a..b-1, oldest first (a copy of at most one chunk)."""
            lo, hi = start + a, start + b
            if lo >= size:
                return arr[lo - size:hi - size]
            return arr[lo:hi] if hi <= size else arr[lo:] + arr[:hi - size]

        def in_order() -> Iterator[int]:
            return itertools.chain(itertools.islice(self._ds, start, min(start + n, size)),
                                   itertools.islice(self._ds, 0, max(0, start + n - size)))

        if any(map(operator.gt, in_order(), itertools.islice(in_order(), 1, None))):
            points = self.points()
            for a in range(0, len(points), TRACE_CHUNK):
                yield "".join(_line(p) + "\n" for p in points[a:a + TRACE_CHUNK])
            return
        base = self._base
        first = round(base + self._ds[start] / 10, 1) if n else float("-inf")
        sigs = sorted((s for s in self.signals if s.t >= first), key=lambda s: s.t)
        j = 0
        for a in range(0, n, TRACE_CHUNK):
            b = min(n, a + TRACE_CHUNK)
            ts = [round(base + d / 10, 1) for d in span(self._ds, a, b)]
            ps = [m / 1000 for m in span(self._mw, a, b)]
            parts: list[str] = []
            at = 0
            # at the same time a signal sorts before a power reading: it goes before the first line at or after it
            while j < len(sigs) and sigs[j].t <= ts[-1]:
                k = bisect.bisect_left(ts, sigs[j].t, at)
                parts.append("".join(map(POWER_LINE.format, ts[at:k], ps[at:k])))
                parts.append(_line(sigs[j]) + "\n")
                at = k
                j += 1
            parts.append("".join(map(POWER_LINE.format, ts[at:], ps[at:])))
            yield "".join(parts)
        if j < len(sigs):
            yield "".join(_line(s) + "\n" for s in sigs[j:])


def _line(p: TracePoint) -> str:
    return f"{p.t:.3f},{p.power_mw / 1000:.3f},," if p.power_mw is not None else f"{p.t:.3f},,{p.signal},{p.value}"


def format_trace(points: Iterable[TracePoint], comment: str = "") -> str:
    lines = [f"# {c}" for c in comment.splitlines()] + [HEADER]
    lines += map(_line, points)
    return "\n".join(lines) + "\n"


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return dt.timestamp()


def read_trace(path: Path) -> list[TracePoint]:
    """Read a trace file (see the module docstring); a bad line is a ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), "(file)", f"cannot be read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), "(file)", "not UTF-8 text") from e
    return list(parse_trace(text.splitlines(), str(path)))


def parse_trace(lines: Iterable[str], file: str = "<trace>") -> Iterator[TracePoint]:
    cols: list[str] | None = None
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in line.split(",")]
        if cols is None:
            cols = cells
            if "t" not in cols or "power_w" not in cols:
                raise ConfigError(file, f"line {n}", f"the header must name at least t and power_w, got {line!r}")
            continue
        row = dict(zip(cols, cells, strict=False))
        try:
            t = _time(row.get("t", ""))
            pw = row.get("power_w", "")
            if pw:
                watts = float(pw)
                if not watts >= 0:
                    raise ValueError("negative power")
                yield TracePoint(t, round(watts * 1000))
            elif row.get("signal"):
                yield TracePoint(t, None, row["signal"], row.get("value", ""))
        except ValueError as e:
            raise ConfigError(file, f"line {n}", f"expected t (seconds or ISO time) and power_w (watts >= 0): "
                              f"{line!r} ({e})") from e
    if cols is None:
        raise ConfigError(file, "(file)", f"no header line; the first line must be {HEADER!r}")


class PowerLog:
    """The daemon's rings (one per appliance) and their writer. Status is for people: a folder that cannot be
    written is said once and the gateway runs on."""

    def __init__(self, folder: Path, specs: Mapping[str, EnergySpec], *, size: int = RING_READINGS,
                 every_s: float = WRITE_EVERY_S) -> None:
        self.folder = folder
        self.every_s = every_s
        self.size = size
        self.specs = dict(specs)
        self.rings = {a: PowerRing(size) for a in specs}
        self._written = dict.fromkeys(self.rings, -1)
        self._failing = False
        self._seen_power: set[str] = set()
        self._last: dict[str, tuple[int, int]] = {}  # appliance -> (t_mono_ns, mWh) of the last count/register

    def track(self, appliance: str, spec: EnergySpec) -> None:
        """Keep the power of an appliance added while the daemon runs (pairing on the status page)."""
        self.specs[appliance] = spec
        self.rings[appliance] = PowerRing(self.size)
        self._written[appliance] = -1

    def forget(self, appliance: str) -> None:
        for d in (self.specs, self.rings, self._written):
            d.pop(appliance, None)

    def add(self, appliance: str, r: Reading) -> None:
        """Keep `r` if it is the appliance's power (its channel) or a signal. A source without power readings (S0
        pulses, a register alone) gets the mean power since its previous count, at the time of each count."""
        ring = self.rings.get(appliance)
        if ring is None:
            return
        q, v = r.quantity, r.value
        spec = self.specs[appliance]
        if q is Quantity.SIGNAL and isinstance(v, str):
            ring.add_signal(r.t_wall, r.signal, v)
        elif type(v) is not int or r.signal != spec.channel:
            return
        elif q is Quantity.POWER_MW:
            ring.add(r.t_wall, v)
            self._seen_power.add(appliance)
        elif q in (Quantity.PULSES, Quantity.ENERGY_MWH) and appliance not in self._seen_power:
            mwh = pulses_to_mwh(v, spec.imp_per_kwh) if q is Quantity.PULSES else v
            last = self._last.get(appliance)
            self._last[appliance] = (r.t_mono_ns, mwh)
            if last is not None and r.t_mono_ns > last[0] and mwh >= last[1]:
                ring.add(r.t_wall, (mwh - last[1]) * 3_600_000_000_000 // (r.t_mono_ns - last[0]))

    def changed(self, *, force: bool = False) -> dict[str, PowerRing]:
        """Copies of the rings that changed since their last write (all of them with `force`)."""
        return {a: r.copy() for a, r in self.rings.items() if force or r.changes != self._written[a]}

    def write(self, rings: dict[str, PowerRing]) -> int:
        """Write these ring copies (from `changed`) as trace files; returns how many were written. Blocking: the
        daemon runs it in a thread."""
        done = 0
        for a, ring in rings.items():
            head = f"# koto power trace of {a}, written {time.time():.0f}\n{HEADER}\n"
            body = itertools.chain([head], ring.trace_chunks())
            if self._put(self.folder / trace_name(a), body):
                self._written[a] = ring.changes
                done += 1
        return done

    def _put(self, path: Path, body: Iterable[str]) -> bool:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "w") as f:
                f.writelines(body)
            os.replace(tmp, path)
        except OSError as e:
            if not self._failing:
                log.warning("cannot write the power trace %s (%s); `koto profile check` will have no recent "
                            "readings", path, e.strerror or e)
            self._failing = True
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self._failing = False
        return True

    def flush(self) -> None:
        """At a clean stop: write what changed (blocking; the gateway is stopping)."""
        self.write(self.changed())

    async def run(self, *, poll_s: float = 2.0) -> None:
        """Write every `every_s`, and within `poll_s` of a `power-request` file appearing (then remove it)."""
        request = self.folder / REQUEST_FILE
        last = time.monotonic()
        while True:
            await asyncio.sleep(poll_s)
            asked = request.exists()
            if asked or time.monotonic() - last >= self.every_s:
                await asyncio.to_thread(self.write, self.changed(force=asked))
                last = time.monotonic()
                if asked:
                    with contextlib.suppress(OSError):
                        request.unlink()
