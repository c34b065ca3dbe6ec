"""Appliances with their own microcontroller: readings as text lines on a serial port.

Two line shapes, as Arduino/ESP sketches print them (`format = "auto"` accepts both):

    {"power_w": 12.5, "energy_kwh": 1.234, "state": "spin"}       # JSON lines
    P:12.5,E:1.234  or  P=12.5 E=1.234                             # key:value pairs (, ; space or tab between)

    [appliance.sources.coffee]
    driver = "line"
    port = "/dev/serial/by-id/usb-Espressif_USB_JTAG-if00"
    baud = 115200
    [appliance.sources.coffee.keys]                    # optional; the defaults below cover the common names
    P = { quantity = "power_mw", unit = "W" }
    E = { quantity = "energy_mwh", unit = "kWh" }
    heater = { quantity = "signal" }         # the signal is named after the key unless `signal = "..."`

The parser is pure (bytes in, values out) and tested line by line. A line that is not text, too long, neither JSON nor
key:value, or carries NaN, infinity, a non-number or negative energy is counted under its kind and never becomes a
reading; unknown keys are counted and ignored. The first line after each (re)open is dropped, since we may have
joined in the middle of it. A text line has no checksum, so a sketch that must be billed exactly should print its
energy counter (cumulative) rather than increments: a lost line then loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Self

from koto.canonical import MAX_SAFE_INT
from koto.clock import Clock
from koto.reading import UNITS as METER_UNITS
from koto.reading import Quantity, Reading, to_milli

from .base import Claim, Source
from .errors import FrameError, SourceProblems
from .pi_uart import not_the_pins, pin_claims
from .port_watch import backoff_or_back, missing, why_not_open

MAX_LINE = 1024
UNITS: dict[Quantity, dict[str, int]] = {**METER_UNITS, Quantity.PULSES: {"": 1}}  # a sketch may count pulses


@dataclass(frozen=True, slots=True)
class KeySpec:
    quantity: Quantity
    unit: str = ""
    scale: Decimal = Decimal(1)
    signal: str = ""


DEFAULT_KEYS: dict[str, KeySpec] = {
    "power_w": KeySpec(Quantity.POWER_MW, "W"),
    "energy_kwh": KeySpec(Quantity.ENERGY_MWH, "kWh"),
    "energy_wh": KeySpec(Quantity.ENERGY_MWH, "Wh"),
    "voltage_v": KeySpec(Quantity.VOLTAGE_MV, "V"),
    "current_a": KeySpec(Quantity.CURRENT_MA, "A"),
    "frequency_hz": KeySpec(Quantity.FREQUENCY_MHZ, "Hz"),
    "P": KeySpec(Quantity.POWER_MW, "W"),
    "E": KeySpec(Quantity.ENERGY_MWH, "kWh"),
    "state": KeySpec(Quantity.SIGNAL, signal="state"),
}


def parse_keys(table: Mapping[str, Any], *, source: str = "?") -> dict[str, KeySpec]:
    """Validate a `[appliance.sources.x.keys]` table; every problem of it is raised at once."""
    problems = SourceProblems(source)
    out: dict[str, KeySpec] = {}
    for key, spec in table.items():
        where = f"keys.{key}"
        if not isinstance(spec, Mapping):
            problems.add(where, "must be a table like { quantity = \"power_mw\", unit = \"W\" }")
            continue
        for extra in sorted(set(spec) - {"quantity", "unit", "scale", "signal"}):
            problems.add(f"{where}.{extra}", "unknown key; allowed: quantity, unit, scale, signal")
        try:
            q = Quantity(str(spec.get("quantity")))
        except ValueError:
            q = Quantity.ANALOG
        if q is not Quantity.SIGNAL and q not in UNITS:
            allowed = ", ".join([Quantity.SIGNAL.value, *(x.value for x in UNITS)])
            problems.add(f"{where}.quantity", f"{spec.get('quantity')!r} is not allowed; allowed: {allowed}")
            continue  # its unit depends on it: not said again
        if q is Quantity.SIGNAL:
            sig = spec.get("signal", key)
            if not isinstance(sig, str) or not sig:
                problems.add(f"{where}.signal", "must be a non-empty string")
            out[key] = KeySpec(q, signal=sig)
            continue
        unit = spec.get("unit", next(iter(UNITS[q])))
        if not isinstance(unit, str) or unit not in UNITS[q]:
            problems.add(f"{where}.unit", f"{unit!r} is not allowed for {q.value}; allowed: {', '.join(UNITS[q])}")
        try:
            scale = Decimal(str(spec.get("scale", 1)))
        except InvalidOperation:
            scale = Decimal(0)
        if not scale.is_finite() or scale <= 0 or isinstance(spec.get("scale"), bool):
            problems.add(f"{where}.scale", "must be a positive number")
        sig = spec.get("signal", "")
        if not isinstance(sig, str):
            problems.add(f"{where}.signal", "must be a string (a phase or channel name, or \"\")")
        out[key] = KeySpec(q, unit, scale, sig)
    problems.raise_if_any()
    return out


@dataclass(frozen=True, slots=True)
class Parsed:
    values: list[tuple[KeySpec, int | str]]
    unknown: list[str]
    rejected: list[FrameError]


class LineParser:
    """Pure: one line (bytes, without the newline) -> values in milli-units, unknown keys, rejected values."""

    def __init__(self, keys: Mapping[str, KeySpec] | None = None, fmt: str = "auto") -> None:
        self.keys = dict(DEFAULT_KEYS if keys is None else keys)
        self.fmt = fmt

    def _pairs(self, text: str) -> list[tuple[str, Any]]:
        if self.fmt in ("json", "auto") and text.startswith("{"):
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: "{"a":[[[[..." nested deeper than json allows
                raise FrameError("garbage", f"not valid JSON: {text[:40]!r}") from None
            if not isinstance(obj, dict):
                raise FrameError("garbage", f"JSON line is not an object: {text[:40]!r}")
            return list(obj.items())
        if self.fmt == "json":
            raise FrameError("garbage", f"not a JSON object: {text[:40]!r}")
        pairs: list[tuple[str, Any]] = []
        for tok in text.replace(",", " ").replace(";", " ").replace("\t", " ").split():
            sep = ":" if ":" in tok else "=" if "=" in tok else ""
            if not sep:
                raise FrameError("garbage", f"no key:value in {tok[:40]!r}")
            k, _, v = tok.partition(sep)
            if not k or not v:
                raise FrameError("garbage", f"empty key or value in {tok[:40]!r}")
            pairs.append((k, v))
        return pairs

    @staticmethod
    def _convert(key: str, spec: KeySpec, raw: Any) -> int | str:
        if spec.quantity is Quantity.SIGNAL:
            if isinstance(raw, bool):
                return "on" if raw else "off"
            if isinstance(raw, str | int) and len(str(raw)) <= 64:
                return str(raw)
            raise FrameError("bad_value", f"{key}: signal value {raw!r}")
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise FrameError("bad_value", f"{key}: {raw!r} is not a number")
        if isinstance(raw, float) and not math.isfinite(raw):
            raise FrameError("not_finite", f"{key}: {raw!r}")
        try:
            d = Decimal(str(raw).strip())
        except InvalidOperation:
            raise FrameError("bad_value", f"{key}: {raw!r} is not a number") from None
        if not d.is_finite():
            raise FrameError("not_finite", f"{key}: {raw!r}")
        if spec.quantity in (Quantity.ENERGY_MWH, Quantity.PULSES) and d < 0:
            raise FrameError("negative_energy", f"{key}: {raw!r}")
        try:
            milli = to_milli(d * spec.scale, UNITS[spec.quantity][spec.unit])
        except ArithmeticError:  # beyond Decimal's precision or exponent range (e.g. "P:1e30", found by fuzzing)
            raise FrameError("out_of_range", f"{key}: {str(raw)[:40]!r} is too large") from None
        if abs(milli) > MAX_SAFE_INT:  # a record's integers stay below 2**53 (canonical JSON): never bill it
            raise FrameError("out_of_range", f"{key}: {str(raw)[:40]!r} is too large")
        return milli

    def parse(self, line: bytes) -> Parsed:
        if len(line) > MAX_LINE:
            raise FrameError("too_long", f"{len(line)} bytes without a newline")
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise FrameError("not_text", f"{line[:20]!r}") from None
        if not text:
            return Parsed([], [], [])
        if any(not c.isprintable() and c != "\t" for c in text):
            raise FrameError("not_text", f"control characters in {text[:40]!r}")
        values: list[tuple[KeySpec, int | str]] = []
        unknown: list[str] = []
        rejected: list[FrameError] = []
        for k, raw in self._pairs(text):
            spec = self.keys.get(k)
            if spec is None:
                unknown.append(k)
                continue
            try:
                values.append((spec, self._convert(k, spec, raw)))
            except FrameError as e:
                rejected.append(e)
        return Parsed(values, unknown, rejected)


class LineSplitter:
    """Pure: bytes as they arrive from the port, split anywhere, in; whole lines (without the newline) out.

    What comes out does not depend on where the chunks were split (tests/drivers/test_fuzz_lineproto.py checks
    it): the first line after an open is dropped (we may have joined in the middle of it); a line longer than
    `MAX_LINE` bytes before its newline (a trailing CR counted) is given out once, whole or cut, for the parser to
    reject as too long, and the rest of it is skipped, so the buffer never grows past `MAX_LINE` plus one chunk.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._first = True
        self._overflow = False

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buf += chunk
        while b"\n" in self._buf:
            line, _, self._buf = self._buf.partition(b"\n")
            if self._overflow:
                self._overflow = False  # the tail of an over-long line, given out already
            elif self._first:
                self._first = False  # we may have joined in the middle of this one
            else:
                out.append(line if len(line) > MAX_LINE else line.rstrip(b"\r"))
        if len(self._buf) > MAX_LINE:
            if not self._overflow:
                if self._first:
                    self._first = False  # the first line, cut or not, is dropped
                else:
                    out.append(self._buf)  # reported as too long by the parser
            self._buf, self._overflow = b"", True
        return out


_PLAIN = {
    "garbage": "unreadable line, ignored",
    "not_text": "line is not text (wrong baud rate?), ignored",
    "too_long": "line too long, ignored",
    "bad_value": "value is not a number, ignored",
    "not_finite": "value is NaN or infinite, ignored",
    "negative_energy": "energy below zero, ignored",
    "out_of_range": "value too large to be real, ignored",
    "unknown_key": "unknown key, ignored (map it under [appliance.sources.NAME.keys])",
    "port": "serial port went away (unplugged?); reopening",
}


class LineSource(Source):
    """Reads lines from a serial port (any path pyserial opens: a USB CDC port, a pty in tests)."""

    driver = "line"

    def __init__(self, name: str, *, clock: Clock, port: str, baud: int = 115200,
                 parser: LineParser | None = None, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0) -> None:
        super().__init__(name, clock=clock)
        self.port = port
        self.baud = baud
        self.parser = parser or LineParser()
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.lines = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._opened_once = False
        self._stream: AsyncIterator[Reading] | None = None
        self._rng = random.Random()

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, **backends: Any) -> Self:
        allowed = {"driver", "port", "baud", "format", "keys"}
        problems = SourceProblems(name)  # every problem is said, then raised at once before anything is built
        for extra in sorted(set(cfg) - allowed):
            problems.add(extra, f"unknown key; allowed: {', '.join(sorted(allowed))}")
        port = cfg.get("port", "")
        if not isinstance(port, str) or not port:
            problems.add("port", "missing; the serial device, e.g. /dev/ttyACM0")
        elif "\x00" in port:  # the OS refuses such a path with a ValueError, not an OSError (found by make fuzz)
            problems.add("port", "contains a NUL character; the serial device's path")
        baud = cfg.get("baud", 115200)
        if isinstance(baud, bool) or not isinstance(baud, int) or not 300 <= baud <= 4_000_000:
            problems.add("baud", f"{baud!r} is not allowed; allowed: an integer 300..4000000")
        fmt = cfg.get("format", "auto")
        if fmt not in ("auto", "json", "kv"):
            problems.add("format", f"{fmt!r} is not allowed; allowed: auto, json, kv")
        keys_cfg = cfg.get("keys")
        keys = None
        if keys_cfg is not None and not isinstance(keys_cfg, Mapping):
            problems.add("keys", "must be a table of key = { quantity = ..., unit = ... }")
        elif keys_cfg is not None:
            keys = problems.check(lambda: {**DEFAULT_KEYS, **parse_keys(keys_cfg, source=name)})
        problems.raise_if_any()
        return cls(name, clock=clock, port=port, baud=baud, parser=LineParser(keys, fmt),
                   **{k: v for k, v in backends.items() if k in ("backoff_initial_s", "backoff_max_s")})

    async def _connect(self) -> None:
        import serial_asyncio_fast

        self._reader, self._writer = await serial_asyncio_fast.open_serial_connection(url=self.port,
                                                                                      baudrate=self.baud)

    async def _close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()  # type: ignore[attr-defined]
        await self._close_port()

    async def _close_port(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = self._reader = None

    async def _lines(self) -> AsyncIterator[bytes]:
        """Raw lines, reopening the port with capped, jittered backoff when it goes away."""
        backoff = 0.0
        while True:
            try:
                await self._connect()
            except (OSError, ValueError) as e:
                self.health.state = "reconnecting"
                self._count_error("port", "cannot open %s (%s); retrying", self.port, why_not_open(self.port) or e)
                backoff = min(self.backoff_max_s, max(self.backoff_initial_s, backoff * 2))
                if await backoff_or_back(self.port, backoff * self._rng.uniform(0.5, 1.0),
                                         was_missing=missing(self.port)):
                    backoff = 0.0  # plugged back in: open now, and from the start should it still fail
                continue
            if self._opened_once:
                self.health.reconnects += 1
                self._rl.warning("reopened", "%s: %s open again", self.name, self.port)
            elif (elsewhere := not_the_pins(self.port)) is not None:
                self._rl.warning("elsewhere", "%s: %s; %s", self.name, *elsewhere)  # it opens; GPIO 14/15 unheard
            self._opened_once = True
            backoff = 0.0
            self.health.state = "ok"
            assert self._reader is not None
            splitter = LineSplitter()
            while True:
                try:
                    chunk = await self._reader.read(4096)
                    why = "end of data"
                except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
                    chunk, why = b"", str(exc)
                if not chunk:
                    self._count_error("port", "%s went away (%s); reopening", self.port, why)
                    break
                for line in splitter.feed(chunk):
                    yield line
            await self._close_port()
            self.health.state = "reconnecting"
            await backoff_or_back(self.port, self.backoff_initial_s * self._rng.uniform(0.5, 1.0),
                                  was_missing=missing(self.port))

    def claims(self) -> tuple[Claim, ...]:
        # A line protocol owns its port: another reader would steal half of every line.
        return (Claim(f"serial:{os.path.realpath(self.port)}", "port", label=self.port), *pin_claims(self.port, "port"))

    def _readings(self) -> AsyncIterator[Reading]:
        """One stream per source: a second `async for` continues where the first stopped, on the same port."""
        if self._stream is None:
            self._stream = self._stream_readings()
        return self._stream

    async def _stream_readings(self) -> AsyncIterator[Reading]:
        async for line in self._lines():
            self.lines += 1
            try:
                parsed = self.parser.parse(line)
            except FrameError as e:
                self._count_error(e.kind, "%s (%s)", _PLAIN.get(e.kind, e.kind), e.detail)
                continue
            for k in parsed.unknown:
                self._count_error("unknown_key", "%s: %r", _PLAIN["unknown_key"], k)
            for rej in parsed.rejected:
                self._count_error(rej.kind, "%s (%s)", _PLAIN.get(rej.kind, rej.kind), rej.detail)
            now = self.clock.now()
            for spec, value in parsed.values:
                yield self._emit(Reading(self.name, now.mono_ns, now.wall, now.boot_id, spec.quantity, value,
                                         wall_synced=now.synced, signal=spec.signal))
