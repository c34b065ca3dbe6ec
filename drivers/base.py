"""The driver interface: an async context manager that yields readings as an async iterator, with health counters.

    async with build_source("washer-plug", cfg, clock=clock) as src:
        async for reading in src:
            ...

Sources are built from TOML tables by `driver = "..."` through the explicit `REGISTRY` below (no glob loading, no
setattr): the table maps a driver name to "module:Class", and the module is imported only when a configured source
names it. What the gateway must know about a driver (its traits: `energy_kind`, `needs`, `takes_start_count`) is
declared on its class, so adding a driver is one module and one registry line. Reading a trait imports the driver's
module but no hardware library: every driver module imports its library (bleak, lgpio, pymodbus, pyserial) inside
the functions that open the device, which tests/test_layering.py checks; so a laptop without BlueZ never imports
bleak.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from koto.clock import Clock
from koto.reading import Quantity, Reading

from .errors import DriverConfigError, UnknownDriver

log = logging.getLogger("koto.drivers")

EnergyKind = Literal["register", "pulses", "power"]
Backend = Literal["pin_factory", "ble"]


@dataclass
class Health:
    """What support staff need to know about a source: is it alive, how often does it fail, and how."""

    readings: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    last_reading_mono_ns: int | None = None
    state: str = "starting"  # starting, ok, degraded, reconnecting, stopped

    def age_s(self, now_mono_ns: int | None = None) -> float | None:
        if self.last_reading_mono_ns is None:
            return None
        now = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
        return max(0.0, (now - self.last_reading_mono_ns) / 1e9)

    def as_dict(self) -> dict[str, Any]:
        return {
            "readings": self.readings,
            "errors": dict(self.errors),
            "reconnects": self.reconnects,
            "age_s": None if (a := self.age_s()) is None else round(a, 1),
            "state": self.state,
        }


class RateLimitedLog:
    """Log a problem at most once per `interval_s` per key, in plain words; count the rest silently."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._log = logger
        self._interval_ns = int(interval_s * 1e9)
        self._last: dict[str, int] = {}
        self.suppressed: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: object) -> bool:
        now = time.monotonic_ns()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_ns:
            self.suppressed[key] += 1
            return False
        self._last[key] = now
        n = self.suppressed.pop(key, 0)
        suffix = f" ({n} more like this since the last message)" if n else ""
        self._log.warning(msg + suffix, *args)
        return True


@dataclass(frozen=True, slots=True)
class Claim:
    """A piece of hardware a source uses, so that two sources that would fight over it are refused at config load.

    Claims of one `resource` (e.g. "serial:/dev/ttyUSB0", "gpio:17") must all be shared and agree on `terms` (e.g.
    the line settings of an RS-485 bus every meter on it must use); an exclusive claim tolerates no other. `key` is
    the source's config key that names the resource, so the error can name it; `label` is the resource as the config
    wrote it, when that differs from `resource` (a serial port's /dev/serial/by-id/ name, which `resource` resolves
    so that two names of one adapter are one bus), so the error names what the installer wrote.
    """

    resource: str
    key: str
    terms: str = ""
    exclusive: bool = True
    label: str = ""


def claim_conflict(a: Claim, b: Claim) -> str:
    """Why two claims of the same resource cannot both hold ("" when they can), in words for a config error."""
    if a.exclusive or b.exclusive:
        return "is already used by another source; each can be used by only one"
    if a.terms != b.terms:
        return f"is already used with {a.terms}; every source on it must use the same settings, not {b.terms}"
    return ""


class Source:
    """Base class for every driver. Subclasses implement `_open`, `_close` and `_readings`.

    `name` is the source id readings carry. The clock comes in (tests and the demo pass a ManualClock or the
    system clock). Health counters are updated by `_emit` and `_count_error`; `__aiter__` yields what `_readings`
    produces, so a subclass never forgets to count.
    """

    driver: ClassVar[str] = ""
    # Traits, read by the gateway from the class (see the module docstring):
    energy_kind: ClassVar[EnergyKind] = "register"
    """When an appliance meters its energy with this source, what the energy readings are: a cumulative register
    (ENERGY_MWH, the common case), a cumulative pulse count (PULSES), or instantaneous power only (POWER_MW, which
    the meter integrates). The default of the appliance's `energy_kind` in the config."""
    needs: ClassVar[frozenset[Backend]] = frozenset()
    """The backends `from_config` takes from the gateway (`pin_factory`: gpiozero's; `ble`: the BLE scanner). The
    gateway builds a backend only when a configured source needs it."""
    takes_start_count: ClassVar[bool] = False
    """The driver counts in software from `start_count=` (an S0 input has no register of its own): for the source
    that meters an appliance's energy, the gateway passes the meter's last count, so a restart loses nothing."""
    takes_channel: ClassVar[bool] = False
    """The driver reads some values more often than others and takes `channel=` (a `Reading.signal`: "" for a
    meter's totals, "L1".."L3" for a phase): for the source that meters an appliance's energy, the gateway passes
    the appliance's channel, whose power and energy the driver then reads on every poll (drivers/modbus.py)."""

    def __init__(self, name: str, *, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.health = Health()
        self._rl = RateLimitedLog(logging.getLogger(f"koto.drivers.{self.driver or type(self).__name__}"))

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, **backends: Any) -> Self:
        """Build from a TOML table. Subclasses validate their keys and raise DriverConfigError naming the key."""
        raise NotImplementedError

    def channels(self) -> Mapping[str, frozenset[Quantity]] | None:
        """The channels (`Reading.signal`: "" for a meter's totals, "L1".."L3" for a phase) this source reports with
        power or energy, and which of the two each carries, where that is known before any reading (a register
        map); None where only the readings will tell (BTHome, a line protocol). `koto check` refuses an appliance
        whose channel is not there, which would otherwise never be metered."""
        return None

    async def __aenter__(self) -> Self:
        await self._open()
        self.health.state = "ok"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.health.state = "stopped"
        await self._close()

    def __aiter__(self) -> AsyncIterator[Reading]:
        return self._readings()

    async def _open(self) -> None:  # pragma: no cover - trivial default
        return None

    async def _close(self) -> None:  # pragma: no cover - trivial default
        return None

    def _readings(self) -> AsyncIterator[Reading]:
        raise NotImplementedError

    def claims(self) -> tuple[Claim, ...]:
        """The hardware this source uses (a pin, a serial port and its line settings...); none by default."""
        return ()

    def _emit(self, reading: Reading) -> Reading:
        self.health.readings += 1
        self.health.last_reading_mono_ns = reading.t_mono_ns
        return reading

    def _count_error(self, kind: str, msg: str, *args: object) -> None:
        """Count an error under `kind` and log it at most once a minute per kind, in plain words."""
        self.health.errors[kind] += 1
        self._rl.warning(kind, f"{self.name}: " + msg, *args)


# driver name -> "module:Class". Explicit, reviewed, greppable. Add a line when you add a driver (and declare its
# traits on its class).
REGISTRY: dict[str, str] = {
    "s0": "drivers.gpio:S0PulseSource",  # S0 pulse meter on a GPIO input
    "gpio_signal": "drivers.gpio:SignalSource",  # door, heater relay, mode selector contact
    "mcp3008": "drivers.gpio:Mcp3008Source",  # slow analogue channel (CT clamp through an RMS converter)
    "modbus": "drivers.modbus:ModbusMeterSource",  # Modbus RTU meter: SDM120, SDM630, PZEM-004T, or a TOML map
    "line": "drivers.lineproto:LineSource",  # JSON lines or key:value lines from an appliance's microcontroller
    "bthome": "drivers.ble:BTHomeSource",  # BTHome v2 plug or sensor over BLE, plain or encrypted
}


def driver_class(name: str, *, source: str = "?", file: str = "") -> type[Source]:
    """The class registered as `name` (its module imported now, if not yet); UnknownDriver names the source."""
    target = REGISTRY.get(name)
    if target is None:
        allowed = ", ".join(sorted(REGISTRY))
        raise UnknownDriver(source, "driver", f"unknown driver {name!r}; allowed: {allowed}", file)
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    assert isinstance(cls, type) and issubclass(cls, Source)
    return cls


def build_source(name: str, cfg: Mapping[str, Any], *, clock: Clock, file: str = "", **backends: Any) -> Source:
    """Build a source from its TOML table (`driver = "..."` plus the driver's own keys)."""
    drv = cfg.get("driver")
    if not isinstance(drv, str):
        raise DriverConfigError(name, "driver", "missing; say which driver reads this source", file)
    cls = driver_class(drv, source=name, file=file)
    try:
        return cls.from_config(name, cfg, clock=clock, **backends)
    except DriverConfigError as e:
        named = e.in_file(file)  # each problem names the config file, or a register map's own
        if named is not e:
            raise named from e
        raise
