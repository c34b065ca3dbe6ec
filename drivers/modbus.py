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
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from fractions import Fraction
from typing import Any, Self

from koto.canonical import MAX_SAFE_INT
from koto.clock import Clock
from koto.reading import UNITS, Quantity, Reading

from .base import Claim, Source
from .errors import BusSettingsConflict, DriverConfigError, FrameError, SourceProblems
from .modbus_map import MODELS, TYPES, Block, RegisterMap, RegisterSpec, load_map, model_map, parse_map
from .pi_uart import pin_claims
from .serialbus import ModbusBus, PortUnavailable, SerialSettings, acquire_bus, release_bus

__all__ = [  # the register maps (drivers/modbus_map.py) are named here too, where they were first
    "DIAG_EVERY", "MODELS", "SOURCE_KEYS", "TYPES", "Block", "ModbusMeterSource", "RegisterMap", "RegisterSpec",
    "decode_block", "decode_value", "exact_milli", "float32_exact", "load_map", "model_map", "parse_map", "raw_value",
]

BACKWARDS_CONFIRM = 3  # an energy register that reads lower this many polls in a row was reset: accept it


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
               "poll_s", "retries", "diag_every", "energy_every"}
DIAG_EVERY = 10  # default `diag_every`: voltage, current, frequency and the other channels every 10th poll
ENERGY_EVERY = 5  # default `energy_every`: the channel's energy register every 5th poll (its power every poll)


class ModbusMeterSource(Source):
    """Polls one meter at one address; meters on the same port share one bus owner.

    What metering needs is read on the first poll and then: the power register of `channel` (the meter's totals
    unless the gateway names a phase) on every poll, its energy register every `energy_every`-th (and on the next
    poll after a failed read); the rest of the map (voltage, current, frequency, the other channels' registers such
    as an SDM120's import energy) every `diag_every`-th. The meter splits each register delta over the power
    samples since the last one, so the register's total stays exact and detection keeps its 1 Hz; an SDM120's power
    and energy are too far apart for one request, so that is one request per poll instead of two, four times in
    five: the requests are most of the daemon's CPU per meter and of the RS-485 bus time (docs/performance.md).
    `energy_every = 1` and `diag_every = 1` read everything on every poll.
    """

    driver = "modbus"
    takes_channel = True

    def __init__(self, name: str, *, clock: Clock, settings: SerialSettings, address: int, regmap: RegisterMap,
                 poll_s: float = 2.0, retries: int = 2, timeout_s: float = 0.5,
                 bus_options: Mapping[str, Any] | None = None, diag_every: int = DIAG_EVERY,
                 energy_every: int = ENERGY_EVERY, channel: str = "") -> None:
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
        self.energy_every = energy_every
        self.channel = channel
        self._blocks = regmap.blocks()
        metered = tuple(r for r in regmap.registers if r.signal == channel
                        and r.quantity in (Quantity.POWER_MW, Quantity.ENERGY_MWH))
        power = tuple(r for r in metered if r.quantity is Quantity.POWER_MW)
        # A map without power or energy on that channel (a custom map of diagnostics): everything, every poll; one
        # without power on it: its energy, every poll.
        self._metered_blocks = replace(regmap, registers=metered).blocks() if metered else self._blocks
        self._power_blocks = replace(regmap, registers=power).blocks() if power else self._metered_blocks
        self._energy_owed = False  # the last read of the energy register failed: read it on the next poll
        self._seen_generation = 0
        self._port_down = False
        self._energy_last: dict[str, int] = {}
        self._energy_lower: dict[str, int] = {}

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, **backends: Any) -> Self:
        problems = SourceProblems(name)  # every problem is said, then raised at once before anything is built
        for k in sorted(set(cfg) - SOURCE_KEYS):
            problems.add(k, f"unknown key; allowed: {', '.join(sorted(SOURCE_KEYS))}")
        port = cfg.get("port", "")
        if not isinstance(port, str) or not port:
            problems.add("port", "missing; the serial device, e.g. /dev/serial/by-id/usb-...")
        elif "\x00" in port:  # the OS refuses such a path with a ValueError, not an OSError (found by make fuzz)
            problems.add("port", "contains a NUL character; the serial device's path")
        has_model, has_map = "model" in cfg, "map" in cfg
        regmap: RegisterMap | None = None
        if has_model == has_map:
            problems.add("model", "give exactly one of model = \"sdm120\" | \"sdm630\" | \"pzem004t\" or "
                                  "map = \"/path/to/map.toml\" (or an inline map table)")
        elif has_model:
            regmap = problems.check(lambda: model_map(str(cfg["model"]), source=name))
        elif isinstance(cfg["map"], str):
            regmap = problems.check(lambda: load_map(cfg["map"], source=name))
        elif isinstance(cfg["map"], Mapping):
            regmap = problems.check(lambda: parse_map(cfg["map"], source=name))
        else:
            problems.add("map", "must be a path to a TOML register map or an inline table")
        address = cfg.get("address", 1)
        if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 248:
            problems.add("address", "must be an integer 1..247 (or 248 = 0xF8, PZEM's general address, only with "
                                    "a single PZEM on the line)")
        elif address == 248 and has_model and regmap is not None and cfg["model"] != "pzem004t":
            problems.add("address", f"248 (0xF8) is the PZEM-004T's general address; an {regmap.name} answers at "
                                    "its own address, 1..247 (on its display)")  # Eastron meters answer 1..247 only
        ser = regmap.serial if regmap is not None else {}  # a bad map's line settings are not judged again

        def pick(key: str, default: Any, ok: Callable[[Any], bool], allowed: str) -> Any:
            v = cfg.get(key, ser.get(key, default))
            if isinstance(v, bool) or not ok(v):
                problems.add(key, f"{v!r} is not allowed; allowed: {allowed}")
            return v

        baud = pick("baud", 9600, lambda v: isinstance(v, int) and v in (1200, 2400, 4800, 9600, 19200, 38400, 57600,
                                                                          115200),
                    "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200")
        parity = pick("parity", "N", lambda v: v in ("N", "E", "O"), "\"N\", \"E\", \"O\"")
        bytesize = pick("bytesize", 8, lambda v: v in (7, 8), "7, 8")
        stopbits = pick("stopbits", 1, lambda v: v in (1, 2), "1, 2")
        poll_s = pick("poll_s", 2.0, lambda v: isinstance(v, int | float) and 0.01 <= v <= 3600, "0.01..3600 s")
        timeout_s = pick("timeout_s", 0.5, lambda v: isinstance(v, int | float) and 0.01 <= v <= 10, "0.01..10 s")
        retries = pick("retries", 2, lambda v: isinstance(v, int) and 0 <= v <= 10, "0..10")
        diag_every = pick("diag_every", DIAG_EVERY, lambda v: isinstance(v, int) and 1 <= v <= 3600, "1..3600 polls")
        energy_every = pick("energy_every", ENERGY_EVERY, lambda v: isinstance(v, int) and 1 <= v <= 60,
                            "1..60 polls")
        problems.raise_if_any()
        assert regmap is not None  # one of model and map was given, and it was read without a problem
        settings = SerialSettings(port=port, baud=baud, parity=parity, bytesize=bytesize, stopbits=stopbits)
        return cls(name, clock=clock, settings=settings, address=address, regmap=regmap, poll_s=float(poll_s),
                   retries=retries, timeout_s=float(timeout_s), bus_options=backends.get("bus_options"),
                   diag_every=diag_every, energy_every=energy_every, channel=str(backends.get("channel", "")))

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
        return (Claim(f"serial:{os.path.realpath(s.port)}", "baud", terms=terms, exclusive=False, label=s.port),
                *pin_claims(s.port, "port"))

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
        """Read every block once, or between the `diag_every`-th polls those of the channel's power and energy, or
        between the `energy_every`-th those of its power alone; return the readings that passed every check."""
        self.polls += 1
        self._port_down = False
        out: list[Reading] = []
        failed = False
        n = self.polls - 1
        blocks = (self._blocks if n % self.diag_every == 0
                  else self._metered_blocks if n % self.energy_every == 0 or self._energy_owed
                  else self._power_blocks)
        self._energy_owed = False
        for block in blocks:
            regs = await self._read_block(block)
            if regs is None:
                failed = True
                self._energy_owed = self._energy_owed or blocks is not self._power_blocks
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
