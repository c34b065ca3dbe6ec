"""Modbus RTU energy meters, described by register maps kept as data (drivers/registers/*.toml).

    [appliance.sources.washer]
    driver = "modbus"
    port = "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0"
    address = 1
    model = "sdm120"          # or: map = "/etc/koto/my-meter.toml", or an inline table map = { ... }
    poll_s = 2.0

A map names, for each register, its address, type, Koto quantity, unit and scale, and a plausible range. The
decoder is pure (registers in, integers in milli-units out) and is tested with register literals; the source polls
through the port's single `ModbusBus` owner (drivers/serialbus.py).

Never a wrong value: a reply that fails CRC is dropped by pymodbus' RTU framer; what passes is checked again here —
NaN and infinity, values outside the map's range, negative energy and an energy register that goes backwards are
rejected and counted, never emitted.

Exact arithmetic. A register's value is taken at its exact binary value — a float32 widens to a float64 exactly, and
`fractions.Fraction` of that is the exact number the meter sent; an integer register times its decimal scale is
exact too — then multiplied by the unit factor and rounded ONCE to whole milli-units, half to even
(`exact_milli`). So a difference of two energy readings is within one float32 step of the register's true delta
(the two roundings to mWh add under 1 mWh), where the shortest-decimal reading used before could add a second
step's worth of error (see docs/serial.md). Half-even is the rule `koto.reading.to_milli` uses for every other
source: one rule everywhere, and no upward bias in the sums of many readings that a half-up rule would add.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any, Self

from koto.canonical import MAX_SAFE_INT
from koto.clock import Clock
from koto.reading import UNITS, Quantity, Reading

from .base import Claim, Source
from .errors import BusSettingsConflict, DriverConfigError, FrameError
from .serialbus import (
    FC_READ_HOLDING,
    FC_READ_INPUT,
    ModbusBus,
    PortUnavailable,
    SerialSettings,
    acquire_bus,
    release_bus,
)

REGISTER_DIR = Path(__file__).with_name("registers")
MODELS = ("sdm120", "sdm630", "pzem004t")

TYPES: dict[str, int] = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2}
FUNCTIONS = {"input": FC_READ_INPUT, "holding": FC_READ_HOLDING}
BACKWARDS_CONFIRM = 3  # an energy register that reads lower this many polls in a row was reset: accept it


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    key: str
    address: int
    type: str
    quantity: Quantity
    unit: str
    scale: Decimal = Decimal(1)
    signal: str = ""
    min: Decimal | None = None
    max: Decimal | None = None

    @property
    def count(self) -> int:
        return TYPES[self.type]


@dataclass(frozen=True, slots=True)
class RegisterMap:
    name: str
    function: int
    word_order: str  # "big": high word first (Eastron); "little": low word first (PZEM-004T)
    registers: tuple[RegisterSpec, ...]
    max_gap: int = 0
    max_count: int = 60
    serial: Mapping[str, Any] = field(default_factory=dict)

    def blocks(self) -> list[Block]:
        """Group registers into as few requests as the device allows (gaps up to `max_gap`, `max_count` long)."""
        out: list[Block] = []
        for spec in sorted(self.registers, key=lambda r: r.address):
            if out:
                b = out[-1]
                end = b.address + b.count
                new_count = spec.address + spec.count - b.address
                if spec.address - end <= self.max_gap and new_count <= self.max_count and spec.address >= end:
                    out[-1] = Block(b.address, new_count, (*b.specs, spec))
                    continue
            out.append(Block(spec.address, spec.count, (spec,)))
        return out


@dataclass(frozen=True, slots=True)
class Block:
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]


# -- map loading and validation (errors name the file and the key) ----------------------------------------------
REGISTER_KEYS = ("address", "key", "max", "min", "quantity", "scale", "signal", "type", "unit")


def parse_map(data: Mapping[str, Any], *, file: str = "", source: str = "?") -> RegisterMap:
    """Validate a register map given as a TOML document (or inline table)."""
    rd = _MapReader(source, file)
    meter = data.get("meter", {})
    if not isinstance(meter, Mapping):
        raise rd.error("meter", "must be a table")
    function, word_order, max_gap, max_count = rd.meter(meter)
    regs_raw = data.get("register")
    if not isinstance(regs_raw, list) or not regs_raw:
        raise rd.error("register", "needs at least one [[register]] table")
    keys: set[str] = set()
    regs = tuple(rd.register(r, i, keys) for i, r in enumerate(regs_raw))
    for a, b in itertools.pairwise(sorted(regs, key=lambda s: s.address)):
        if a.address + a.count > b.address:
            raise rd.error(f"register ({b.key}).address", f"overlaps register {a.key!r}")
    serial = data.get("serial", {})
    if not isinstance(serial, Mapping):
        raise rd.error("serial", "must be a table")
    name = str(meter.get("name", Path(file).stem if file else "custom"))
    return RegisterMap(name, function, word_order, regs, max_gap, max_count, dict(serial))


class _MapReader:
    """Checks the parts of one register map; every error names the source, the map's file and the key."""

    def __init__(self, source: str, file: str) -> None:
        self.source = source
        self.file = file

    def error(self, key: str, problem: str) -> DriverConfigError:
        return DriverConfigError(self.source, key, problem, self.file)

    def meter(self, meter: Mapping[str, Any]) -> tuple[int, str, int, int]:
        """The `[meter]` table: (function code, word order, max_gap, max_count)."""
        fn = meter.get("function", "input")
        if fn not in FUNCTIONS:
            raise self.error("meter.function", f"{fn!r} is not allowed; allowed: input, holding")
        wo = meter.get("word_order", "big")
        if wo not in ("big", "little"):
            raise self.error("meter.word_order", f"{wo!r} is not allowed; allowed: big, little")
        max_gap = meter.get("max_gap", 0)
        max_count = meter.get("max_count", 60)
        if not isinstance(max_gap, int) or not 0 <= max_gap <= 100:
            raise self.error("meter.max_gap", "must be an integer 0..100")
        if not isinstance(max_count, int) or not 1 <= max_count <= 125:
            raise self.error("meter.max_count", "must be an integer 1..125 (the Modbus limit)")
        return FUNCTIONS[fn], wo, max_gap, max_count

    def register(self, r: Any, i: int, keys: set[str]) -> RegisterSpec:
        """One `[[register]]` table; `keys` are the keys of the registers before it (a key is used once)."""
        where = f"register[{i}]"
        if not isinstance(r, Mapping):
            raise self.error(where, "must be a table")
        extra = set(r) - set(REGISTER_KEYS)
        if extra:
            raise self.error(f"{where}.{sorted(extra)[0]}", f"unknown key; allowed: {', '.join(REGISTER_KEYS)}")
        key = r.get("key")
        if not isinstance(key, str) or not key:
            raise self.error(f"{where}.key", "must be a non-empty string")
        where = f"register[{i}] ({key})"
        if key in keys:
            raise self.error(f"{where}.key", "duplicate key")
        keys.add(key)
        addr = r.get("address")
        if isinstance(addr, bool) or not isinstance(addr, int) or not 0 <= addr <= 0xFFFF:
            raise self.error(f"{where}.address", "must be an integer 0..0xFFFF (protocol address, 0-based)")
        typ = r.get("type")
        if typ not in TYPES:
            raise self.error(f"{where}.type", f"{typ!r} is not allowed; allowed: {', '.join(TYPES)}")
        q, unit = self.quantity_and_unit(r, where)
        scale = self.decimal(r.get("scale", 1), f"{where}.scale")
        if scale <= 0:
            raise self.error(f"{where}.scale", "must be positive")
        signal = r.get("signal", "")
        if not isinstance(signal, str):
            raise self.error(f"{where}.signal", "must be a string (\"L1\", \"L2\", \"L3\" or \"\")")
        lo = None if "min" not in r else self.decimal(r["min"], f"{where}.min")
        hi = None if "max" not in r else self.decimal(r["max"], f"{where}.max")
        if lo is not None and hi is not None and lo > hi:
            raise self.error(f"{where}.min", "is above max")
        return RegisterSpec(key, addr, typ, q, unit, scale, signal, lo, hi)

    def quantity_and_unit(self, r: Mapping[str, Any], where: str) -> tuple[Quantity, str]:
        allowed = ", ".join(q.value for q in UNITS)
        try:
            q = Quantity(str(r.get("quantity")))
        except ValueError:
            raise self.error(f"{where}.quantity", f"{r.get('quantity')!r} is not allowed; allowed: {allowed}") from None
        if q not in UNITS:
            raise self.error(f"{where}.quantity", f"allowed: {allowed}")
        unit = r.get("unit")
        if unit not in UNITS[q]:
            raise self.error(f"{where}.unit", f"{unit!r} is not allowed for {q.value}; allowed: {', '.join(UNITS[q])}")
        return q, str(unit)

    def decimal(self, v: Any, key: str) -> Decimal:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise self.error(key, f"must be a number (or a decimal string like \"0.1\"), not {v!r}")
        try:
            d = Decimal(str(v))
        except ArithmeticError:
            raise self.error(key, f"must be a number, not {v!r}") from None
        if not d.is_finite():
            raise self.error(key, "must be finite")
        return d


def load_map(path: str | Path, *, source: str = "?") -> RegisterMap:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as e:
        # the key `map` is in the config file (filled in by build_source); the problem names the map's path
        raise DriverConfigError(source, "map", f"cannot read the register map {str(p)!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise DriverConfigError(source, "map", f"not valid TOML: {e}", str(p)) from None
    except UnicodeDecodeError as e:
        raise DriverConfigError(source, "map", f"not UTF-8 text (byte {e.start}); save it as UTF-8", str(p)) from None
    except ValueError:  # a NUL in the path (TOML allows "\u0000"; found by fuzzing)
        raise DriverConfigError(source, "map", f"{str(p)!r} is not a usable path (it contains a NUL)") from None
    return parse_map(data, file=str(p), source=source)


def model_map(model: str, *, source: str = "?") -> RegisterMap:
    if model not in MODELS:
        raise DriverConfigError(source, "model", f"{model!r} is not known; allowed: {', '.join(MODELS)}")
    return _builtin_map(model)


@cache
def _builtin_map(model: str) -> RegisterMap:
    """A shipped map is read once per process: every config load builds every source, and parsing the same TOML
    for each was most of the time a config check took."""
    return load_map(REGISTER_DIR / f"{model}.toml")


# -- pure decoding ------------------------------------------------------------------------------------------------
def float32_exact(x: float) -> Fraction:
    """The exact value of a float32 (unpacked into a Python float, which holds it exactly): 230.1 as a float32 is
    230.100006103515625, and that is the number the meter sent."""
    if not math.isfinite(x):
        raise FrameError("not_finite", f"{x!r}")
    return Fraction(x)


def exact_milli(value: Fraction, factor: int) -> int:
    """`value` (in the map's unit) times `factor` (that unit's milli-units), rounded once to an integer, half to
    even (Python's `round` of a Fraction)."""
    return round(value * factor)


def raw_value(spec: RegisterSpec, regs: list[int], word_order: str) -> Fraction:
    """Registers of one value -> its exact value in the map's unit (before range checks)."""
    from pymodbus.client import AsyncModbusSerialClient as C

    dt = {"uint16": C.DATATYPE.UINT16, "int16": C.DATATYPE.INT16, "uint32": C.DATATYPE.UINT32,
          "int32": C.DATATYPE.INT32, "float32": C.DATATYPE.FLOAT32}[spec.type]
    wo: Any = word_order
    v = C.convert_from_registers(regs, dt, word_order=wo)
    if spec.type == "float32":
        assert isinstance(v, float)
        return float32_exact(v) * Fraction(spec.scale)
    assert isinstance(v, int)
    return v * Fraction(spec.scale)


def _show(v: Fraction) -> str:
    return f"{float(v):.10g}"


def decode_value(spec: RegisterSpec, regs: list[int], word_order: str) -> int:
    """Registers -> integer milli-units, or FrameError(kind) for a value that must never be billed."""
    v = raw_value(spec, regs, word_order)
    if spec.quantity is Quantity.ENERGY_MWH and v < 0:
        raise FrameError("negative_energy", f"{spec.key} = {_show(v)} {spec.unit}")
    if (spec.min is not None and v < Fraction(spec.min)) or (spec.max is not None and v > Fraction(spec.max)):
        raise FrameError("out_of_range", f"{spec.key} = {_show(v)} {spec.unit}, plausible {spec.min}..{spec.max}")
    milli = exact_milli(v, UNITS[spec.quantity][spec.unit])
    if abs(milli) > MAX_SAFE_INT:  # a map without min/max and a huge scale: a record's integers stay below 2**53
        raise FrameError("out_of_range", f"{spec.key} = {_show(v)} {spec.unit} is too large to be real")
    return milli


def decode_block(rmap: RegisterMap, block: Block, regs: list[int]) -> list[tuple[RegisterSpec, int | FrameError]]:
    out: list[tuple[RegisterSpec, int | FrameError]] = []
    for spec in block.specs:
        off = spec.address - block.address
        try:
            out.append((spec, decode_value(spec, regs[off:off + spec.count], rmap.word_order)))
        except FrameError as e:
            out.append((spec, e))
    return out


# -- the source ---------------------------------------------------------------------------------------------------
SOURCE_KEYS = {"driver", "port", "address", "model", "map", "baud", "parity", "bytesize", "stopbits", "timeout_s",
               "poll_s", "retries", "diag_every"}
DIAG_EVERY = 10  # default `diag_every`: voltage, current, frequency and the other channels every 10th poll


class ModbusMeterSource(Source):
    """Polls one meter at one address; meters on the same port share one bus owner.

    What metering needs, the power and energy registers of `channel` (the meter's totals unless the gateway names a
    phase), is read on every poll; the rest of the map (voltage, current, frequency, the other channels' registers
    such as an SDM120's import energy) on the first poll and every `diag_every`-th after it. On an SDM120 that is
    two requests per poll instead of three, nine times in ten: the requests are most of the daemon's CPU per meter
    and of the RS-485 bus time (docs/performance.md). `diag_every = 1` reads everything on every poll.
    """

    driver = "modbus"
    takes_channel = True

    def __init__(self, name: str, *, clock: Clock, settings: SerialSettings, address: int, regmap: RegisterMap,
                 poll_s: float = 2.0, retries: int = 2, timeout_s: float = 0.5,
                 bus_options: Mapping[str, Any] | None = None, diag_every: int = DIAG_EVERY,
                 channel: str = "") -> None:
        super().__init__(name, clock=clock)
        self.settings = settings
        self.address = address
        self.map = regmap
        self.poll_s = poll_s
        self.retries = retries
        self.timeout_s = timeout_s
        self.bus_options = dict(bus_options or {})
        self.polls = 0
        self.bus: ModbusBus | None = None
        self.diag_every = diag_every
        self.channel = channel
        self._blocks = regmap.blocks()
        every_poll = tuple(r for r in regmap.registers if r.signal == channel
                           and r.quantity in (Quantity.POWER_MW, Quantity.ENERGY_MWH))
        # A map without power or energy on that channel (a custom map of diagnostics): everything, every poll.
        self._every_poll_blocks = replace(regmap, registers=every_poll).blocks() if every_poll else self._blocks
        self._seen_generation = 0
        self._port_down = False
        self._energy_last: dict[str, int] = {}
        self._energy_lower: dict[str, int] = {}

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, **backends: Any) -> Self:
        extra = set(cfg) - SOURCE_KEYS
        if extra:
            k = sorted(extra)[0]
            raise DriverConfigError(name, k, f"unknown key; allowed: {', '.join(sorted(SOURCE_KEYS))}")
        port = cfg.get("port")
        if not isinstance(port, str) or not port:
            raise DriverConfigError(name, "port", "missing; the serial device, e.g. /dev/serial/by-id/usb-...")
        if "\x00" in port:  # the OS refuses such a path with a ValueError, not an OSError (found by make fuzz)
            raise DriverConfigError(name, "port", "contains a NUL character; the serial device's path")
        has_model, has_map = "model" in cfg, "map" in cfg
        if has_model == has_map:
            raise DriverConfigError(name, "model", "give exactly one of model = \"sdm120\" | \"sdm630\" | "
                                    "\"pzem004t\" or map = \"/path/to/map.toml\" (or an inline map table)")
        if has_model:
            regmap = model_map(str(cfg["model"]), source=name)
        elif isinstance(cfg["map"], str):
            regmap = load_map(cfg["map"], source=name)
        elif isinstance(cfg["map"], Mapping):
            regmap = parse_map(cfg["map"], source=name)
        else:
            raise DriverConfigError(name, "map", "must be a path to a TOML register map or an inline table")
        address = cfg.get("address", 1)
        if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 248:
            raise DriverConfigError(name, "address", "must be an integer 1..247 (or 248 = 0xF8, PZEM's general "
                                    "address, only with a single PZEM on the line)")
        if address == 248 and has_model and cfg["model"] != "pzem004t":  # Eastron meters answer 1..247 only
            raise DriverConfigError(name, "address", f"248 (0xF8) is the PZEM-004T's general address; an "
                                    f"{regmap.name} answers at its own address, 1..247 (on its display)")
        ser = regmap.serial

        def pick(key: str, default: Any, ok: Callable[[Any], bool], allowed: str) -> Any:
            v = cfg.get(key, ser.get(key, default))
            if isinstance(v, bool) or not ok(v):
                raise DriverConfigError(name, key, f"{v!r} is not allowed; allowed: {allowed}")
            return v

        settings = SerialSettings(
            port=port,
            baud=pick("baud", 9600, lambda v: isinstance(v, int) and v in (1200, 2400, 4800, 9600, 19200, 38400,
                                                                            57600, 115200),
                      "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200"),
            parity=pick("parity", "N", lambda v: v in ("N", "E", "O"), "\"N\", \"E\", \"O\""),
            bytesize=pick("bytesize", 8, lambda v: v in (7, 8), "7, 8"),
            stopbits=pick("stopbits", 1, lambda v: v in (1, 2), "1, 2"),
        )
        poll_s = pick("poll_s", 2.0, lambda v: isinstance(v, int | float) and 0.01 <= v <= 3600, "0.01..3600 s")
        timeout_s = pick("timeout_s", 0.5, lambda v: isinstance(v, int | float) and 0.01 <= v <= 10, "0.01..10 s")
        retries = pick("retries", 2, lambda v: isinstance(v, int) and 0 <= v <= 10, "0..10")
        diag_every = pick("diag_every", DIAG_EVERY, lambda v: isinstance(v, int) and 1 <= v <= 3600, "1..3600 polls")
        return cls(name, clock=clock, settings=settings, address=address, regmap=regmap, poll_s=float(poll_s),
                   retries=retries, timeout_s=float(timeout_s), bus_options=backends.get("bus_options"),
                   diag_every=diag_every, channel=str(backends.get("channel", "")))

    def channels(self) -> Mapping[str, frozenset[Quantity]]:
        metered = (Quantity.POWER_MW, Quantity.ENERGY_MWH)
        out: dict[str, set[Quantity]] = {}
        for r in self.map.registers:
            if r.quantity in metered:
                out.setdefault(r.signal, set()).add(r.quantity)
        return {signal: frozenset(q) for signal, q in out.items()}

    def claims(self) -> tuple[Claim, ...]:
        """Meters share an RS-485 bus (one owner serialises them) only when all use the same line settings."""
        s = self.settings
        terms = f"{s.baud} baud, parity {s.parity}, {s.bytesize} data bits, {s.stopbits} stop bit(s)"
        return (Claim(f"serial:{os.path.realpath(s.port)}", "baud", terms=terms, exclusive=False),)

    async def _open(self) -> None:
        try:
            self.bus = acquire_bus(self.settings, timeout_s=self.timeout_s, **self.bus_options)
        except BusSettingsConflict as e:
            raise DriverConfigError(self.name, "baud", str(e)) from None
        self._seen_generation = self.bus.generation

    async def _close(self) -> None:
        if self.bus is not None:
            bus, self.bus = self.bus, None
            await release_bus(bus)

    async def _read_block(self, block: Block) -> list[int] | None:
        assert self.bus is not None
        for _attempt in range(self.retries + 1):
            for _ in range(self.bus.take_noise()):
                self._count_error("line_noise", "unexpected bytes on %s between requests, ignored",
                                  self.settings.port)
            try:
                regs = await self.bus.read_registers(self.address, self.map.function, block.address, block.count)
            except PortUnavailable as e:
                self._port_down = True
                self._count_error("port", "serial port %s is not available (%s); will retry with backoff",
                                  self.settings.port, e)
                return None
            except FrameError as e:
                self._count_error(e.kind, "meter at address %d: %s (%s)", self.address, _PLAIN.get(e.kind, e.kind),
                                  e.detail)
                if e.kind in ("exception", "port"):
                    self._port_down = e.kind == "port"
                    return None
                continue
            if self.bus.generation != self._seen_generation:
                self.health.reconnects += self.bus.generation - self._seen_generation
                self._seen_generation = self.bus.generation
            return regs
        return None

    def _accept_energy(self, spec: RegisterSpec, value: int) -> bool:
        """An energy register never goes backwards, unless it keeps reading lower (the meter was reset)."""
        last = self._energy_last.get(spec.key)
        if last is not None and value < last:
            n = self._energy_lower.get(spec.key, 0) + 1
            self._energy_lower[spec.key] = n
            if n < BACKWARDS_CONFIRM:
                self._count_error("energy_backwards", "meter at address %d: %s went back from %d to %d mWh; "
                                  "ignored", self.address, spec.key, last, value)
                return False
            self._rl.warning(f"reset:{spec.key}", "%s: energy register %s was reset (%d -> %d mWh)",
                             self.name, spec.key, last, value)
        self._energy_lower.pop(spec.key, None)
        self._energy_last[spec.key] = value
        return True

    async def poll_once(self) -> list[Reading]:
        """Read every block once (or, between the `diag_every`-th polls, those of the channel's power and energy);
        return the readings that passed every check."""
        self.polls += 1
        self._port_down = False
        out: list[Reading] = []
        failed = False
        full = (self.polls - 1) % self.diag_every == 0
        for block in self._blocks if full else self._every_poll_blocks:
            regs = await self._read_block(block)
            if regs is None:
                failed = True
                continue
            now = self.clock.now()
            for spec, val in decode_block(self.map, block, regs):
                if isinstance(val, FrameError):
                    failed = True
                    self._count_error(val.kind, "meter at address %d: rejected %s", self.address, val.detail)
                    continue
                if spec.quantity is Quantity.ENERGY_MWH and not self._accept_energy(spec, val):
                    failed = True
                    continue
                out.append(self._emit(Reading(self.name, now.mono_ns, now.wall, now.boot_id, spec.quantity, val,
                                              wall_synced=now.synced, signal=spec.signal)))
        if self.health.state != "stopped":
            self.health.state = "reconnecting" if self._port_down else "degraded" if failed else "ok"
        return out

    async def _readings(self) -> AsyncIterator[Reading]:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            for r in await self.poll_once():
                yield r
            # fixed rate; if a poll overran, start the next one now rather than bunching up
            period = self.poll_s / self.clock.factor
            next_at = max(next_at + period, loop.time())
            await asyncio.sleep(max(0.0, next_at - loop.time()))


_PLAIN = {
    "timeout": "no reply",
    "port": "the serial port went away (adapter unplugged?)",
    "crc": "reply failed its checksum (CRC), discarded",
    "truncated": "reply was cut short, discarded",
    "garbage": "unreadable bytes on the line, discarded",
    "exception": "meter refused the request",
    "wrong_length": "reply had the wrong number of registers, discarded",
    "wrong_function": "reply was to another kind of request, discarded",
    "out_of_range": "value outside the plausible range, discarded",
    "negative_energy": "energy below zero, discarded",
    "not_finite": "value is NaN or infinite, discarded",
    "energy_backwards": "energy register went backwards, ignored",
    "line_noise": "unexpected bytes between requests, ignored",
}
