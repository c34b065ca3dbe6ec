"""Modbus register maps: the data that says what a meter's registers hold (drivers/registers/*.toml, a map file an
installer writes, or an inline table), and their validation. Every problem of a map is said at once, each naming
the source, the map's file and the key (`register[2] (power).unit`); a check that depends on a value already found
bad (`min` against a bad `max`, a unit against a bad quantity) is skipped rather than said as a second problem.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from koto.reading import UNITS, Quantity

from .errors import DriverConfigError, SourceProblems
from .serialbus import FC_READ_HOLDING, FC_READ_INPUT

REGISTER_DIR = Path(__file__).with_name("registers")
MODELS = ("sdm120", "sdm630", "pzem004t")

TYPES: dict[str, int] = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2}
FUNCTIONS = {"input": FC_READ_INPUT, "holding": FC_READ_HOLDING}


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
    """Validate a register map given as a TOML document (or inline table); every problem of it is raised at once."""
    rd = _MapReader(source, file)
    meter = data.get("meter", {})
    if not isinstance(meter, Mapping):
        rd.problems.add("meter", "must be a table")
        meter = {}
    function, word_order, max_gap, max_count = rd.meter(meter)
    regs_raw = data.get("register")
    regs: tuple[RegisterSpec, ...] = ()
    if not isinstance(regs_raw, list) or not regs_raw:
        rd.problems.add("register", "needs at least one [[register]] table")
    else:
        keys: set[str] = set()
        regs = tuple(spec for i, r in enumerate(regs_raw) if (spec := rd.register(r, i, keys)) is not None)
    for a, b in itertools.pairwise(sorted(regs, key=lambda s: s.address)):  # of the registers read without fault
        if a.address + a.count > b.address:
            rd.problems.add(f"register ({b.key}).address", f"overlaps register {a.key!r}")
    serial = data.get("serial", {})
    if not isinstance(serial, Mapping):
        rd.problems.add("serial", "must be a table")
    rd.problems.raise_if_any()
    name = str(meter.get("name", Path(file).stem if file else "custom"))
    return RegisterMap(name, function, word_order, regs, max_gap, max_count, dict(serial))


class _MapReader:
    """Checks the parts of one register map, collecting every problem (each names the source, the map's file and
    the key); a bad part is returned as a stand-in (or None), never used, as `parse_map` raises first."""

    def __init__(self, source: str, file: str) -> None:
        self.problems = SourceProblems(source, file)

    def meter(self, meter: Mapping[str, Any]) -> tuple[int, str, int, int]:
        """The `[meter]` table: (function code, word order, max_gap, max_count)."""
        add = self.problems.add
        fn = meter.get("function", "input")
        if not isinstance(fn, str) or fn not in FUNCTIONS:  # a list is not looked up (unhashable)
            add("meter.function", f"{fn!r} is not allowed; allowed: input, holding")
        wo = meter.get("word_order", "big")
        if not isinstance(wo, str) or wo not in ("big", "little"):
            add("meter.word_order", f"{wo!r} is not allowed; allowed: big, little")
        max_gap = meter.get("max_gap", 0)
        max_count = meter.get("max_count", 60)
        if not isinstance(max_gap, int) or not 0 <= max_gap <= 100:
            add("meter.max_gap", "must be an integer 0..100")
        if not isinstance(max_count, int) or not 1 <= max_count <= 125:
            add("meter.max_count", "must be an integer 1..125 (the Modbus limit)")
        return FUNCTIONS.get(str(fn), FC_READ_INPUT), str(wo), max_gap, max_count

    def register(self, r: Any, i: int, keys: set[str]) -> RegisterSpec | None:
        """One `[[register]]` table, or None when it has a problem; `keys` are the keys of the registers before it
        (a key is used once)."""
        add = self.problems.add
        where = f"register[{i}]"
        if not isinstance(r, Mapping):
            add(where, "must be a table")
            return None
        said = len(self.problems.errors)
        for extra in sorted(set(r) - set(REGISTER_KEYS)):
            add(f"{where}.{extra}", f"unknown key; allowed: {', '.join(REGISTER_KEYS)}")
        key = r.get("key")
        if not isinstance(key, str) or not key:
            add(f"{where}.key", "must be a non-empty string")
        else:
            where = f"register[{i}] ({key})"
            if key in keys:
                add(f"{where}.key", "duplicate key")
            keys.add(key)
        addr = r.get("address", -1)  # missing: the same problem as a bad one
        if isinstance(addr, bool) or not isinstance(addr, int) or not 0 <= addr <= 0xFFFF:
            add(f"{where}.address", "must be an integer 0..0xFFFF (protocol address, 0-based)")
        typ = r.get("type")
        if not isinstance(typ, str) or typ not in TYPES:
            add(f"{where}.type", f"{typ!r} is not allowed; allowed: {', '.join(TYPES)}")
        q_unit = self.quantity_and_unit(r, where)
        scale = self.decimal(r.get("scale", 1), f"{where}.scale")
        if scale is not None and scale <= 0:
            add(f"{where}.scale", "must be positive")
        signal = r.get("signal", "")
        if not isinstance(signal, str):
            add(f"{where}.signal", "must be a string (\"L1\", \"L2\", \"L3\" or \"\")")
        lo = None if "min" not in r else self.decimal(r["min"], f"{where}.min")
        hi = None if "max" not in r else self.decimal(r["max"], f"{where}.max")
        if lo is not None and hi is not None and lo > hi:  # only when both are numbers
            add(f"{where}.min", "is above max")
        if q_unit is None or scale is None or len(self.problems.errors) > said:
            return None
        return RegisterSpec(str(key), addr, str(typ), *q_unit, scale, signal, lo, hi)

    def quantity_and_unit(self, r: Mapping[str, Any], where: str) -> tuple[Quantity, str] | None:
        """The register's quantity and unit, or None with the problem (a unit is not judged against a bad quantity)."""
        allowed = ", ".join(q.value for q in UNITS)
        try:
            q = Quantity(str(r.get("quantity")))
        except ValueError:
            self.problems.add(f"{where}.quantity", f"{r.get('quantity')!r} is not allowed; allowed: {allowed}")
            return None
        if q not in UNITS:
            self.problems.add(f"{where}.quantity", f"allowed: {allowed}")
            return None
        unit = r.get("unit")
        if not isinstance(unit, str) or unit not in UNITS[q]:
            self.problems.add(f"{where}.unit", f"{unit!r} is not allowed for {q.value}; allowed: "
                                               f"{', '.join(UNITS[q])}")
            return None
        return q, str(unit)

    def decimal(self, v: Any, key: str) -> Decimal | None:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            self.problems.add(key, f"must be a number (or a decimal string like \"0.1\"), not {v!r}")
            return None
        try:
            d = Decimal(str(v))
        except ArithmeticError:
            self.problems.add(key, f"must be a number, not {v!r}")
            return None
        if not d.is_finite():
            self.problems.add(key, "must be finite")
            return None
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


