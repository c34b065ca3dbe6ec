"""One MCP3008 channel for slow analogue signals, e.g. a CT clamp through an RMS-to-DC converter.

The chip gives a 10-bit raw value (0..1023). A calibration turns it into the quantity, in the source's unit:
- linear: `value = offset + gain * raw` (`gain`, `offset`), or
- two points measured on site: `points = [[raw1, value1], [raw2, value2]]` (e.g. [[3, 0], [700, 2000]] for
  0 W and 2000 W on a reference load); the line through them is used.
With `quantity = "power"` the value is in watts and readings are `POWER_MW` (negative results, i.e. noise around
zero current, read as 0 W); with `quantity = "analog"` readings are `ANALOG` in milli-units of whatever unit the
calibration produces, and `signal` names it.

Every `interval_s` the source averages `samples` conversions (SPI transfers run in a worker thread so a slow bus
never stalls the loop) and yields one reading. Arithmetic is exact (fractions), rounded half-even to an integer
once, the same way every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Self

from koto.clock import Clock
from koto.reading import Quantity, Reading

from ..base import Claim, Source
from .config import Keys
from .edges import to_fraction

SPI0_BUS_PINS = (9, 10, 11)  # MISO, MOSI, SCLK (BCM numbers)
SPI0_CE_PINS = (8, 7)  # CE0, CE1
RAW_MAX = 1023


@dataclass(frozen=True, slots=True)
class Calibration:
    """value = offset + gain * raw, exact."""

    offset: Fraction
    gain: Fraction

    @classmethod
    def linear(cls, gain: float | int | str, offset: float | int | str = 0) -> Calibration:
        return cls(to_fraction(offset), to_fraction(gain))

    @classmethod
    def two_points(cls, raw1: float, value1: float, raw2: float, value2: float) -> Calibration:
        r1, v1, r2, v2 = (to_fraction(x) for x in (raw1, value1, raw2, value2))
        if r1 == r2:
            raise ValueError("the two calibration points need different raw values")
        gain = (v2 - v1) / (r2 - r1)
        return cls(v1 - gain * r1, gain)

    def milli(self, raw: Fraction) -> int:
        """The calibrated value in integer milli-units (half-even)."""
        return round((self.offset + self.gain * raw) * 1000)


def _points(k: Keys, pts: Any) -> tuple[float, float, float, float] | None:
    """`points = [[raw1, value1], [raw2, value2]]` as (raw1, value1, raw2, value2), or None with its problem."""
    ok = (isinstance(pts, list) and len(pts) == 2
          and all(isinstance(p, list) and len(p) == 2 for p in pts)
          and all(isinstance(x, int | float) and not isinstance(x, bool) for p in pts for x in p))
    if not ok:
        k.fail("points", f"expected two [raw, value] pairs, e.g. [[3, 0], [700, 2000]]; got {pts!r}")
        return None
    (r1, v1), (r2, v2) = pts
    if r1 == r2:
        k.fail("points", "the two points need different raw values")
    elif not (0 <= r1 <= RAW_MAX and 0 <= r2 <= RAW_MAX):
        k.fail("points", f"raw values are 0 to {RAW_MAX}")
    else:
        return r1, v1, r2, v2
    return None


class Mcp3008Source(Source):
    driver: ClassVar[str] = "mcp3008"
    energy_kind = "power"
    needs = frozenset({"pin_factory"})
    KEYS: ClassVar[tuple[str, ...]] = (
        "channel", "differential", "quantity", "gain", "offset", "points", "interval_s", "samples",
        "spi_port", "spi_device", "signal",
    )

    def __init__(self, name: str, *, clock: Clock, channel: int, calibration: Calibration,
                 pin_factory: Any = None, quantity: Quantity = Quantity.POWER_MW, differential: bool = False,
                 interval_s: float = 1.0, samples: int = 4, spi_port: int = 0, spi_device: int = 0,
                 signal: str = "") -> None:
        super().__init__(name, clock=clock)
        if quantity not in (Quantity.POWER_MW, Quantity.ANALOG):
            raise ValueError("quantity must be POWER_MW or ANALOG")
        self.channel = channel
        self.calibration = calibration
        self.pin_factory = pin_factory
        self.quantity = quantity
        self.differential = differential
        self.interval_s = interval_s
        self.samples = samples
        self.spi_port = spi_port
        self.spi_device = spi_device
        self.signal = signal
        self._adc: Any = None

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, pin_factory: Any = None,
                    **_: Any) -> Self:
        k = Keys(name, cfg, cls.KEYS, collect=True)
        channel = k.integer("channel", lo=0, hi=7)
        kind = k.choice("quantity", "power", ("power", "analog"))
        points = None
        if "points" in cfg:
            if "gain" in cfg or "offset" in cfg:
                k.fail("points", "give either points or gain/offset, not both")
            else:
                points = _points(k, cfg["points"])
        elif "gain" not in cfg:
            k.fail("gain", "missing; give gain (and offset) or points = [[raw1, value1], [raw2, value2]]")
        else:
            k.number("gain", lo=-1e9, hi=1e9)  # validates; the exact value is taken from its decimal spelling
            k.number("offset", 0, lo=-1e12, hi=1e12)
        differential = k.boolean("differential", False)
        interval_s = k.number("interval_s", 1.0, lo=0.001, hi=3600)
        samples = k.integer("samples", 4, lo=1, hi=1000)
        spi_port = k.integer("spi_port", 0, lo=0, hi=0)
        spi_device = k.integer("spi_device", 0, lo=0, hi=1)
        signal = k.text("signal") if "signal" in cfg else ""
        k.done()
        cal = (Calibration.two_points(*points) if points is not None
               else Calibration.linear(cfg["gain"], cfg.get("offset", 0)))
        return cls(name, clock=clock, channel=channel, calibration=cal, pin_factory=pin_factory,
                   quantity=Quantity.POWER_MW if kind == "power" else Quantity.ANALOG, differential=differential,
                   interval_s=interval_s, samples=samples, spi_port=spi_port, spi_device=spi_device, signal=signal)

    def claims(self) -> tuple[Claim, ...]:
        """The SPI bus's pins (shared by every channel of every chip on it), the chip select, and the channel."""
        spi = f"SPI{self.spi_port}"
        ce_pin = SPI0_CE_PINS[self.spi_device]
        channels = (self.channel, self.channel ^ 1) if self.differential else (self.channel,)
        return (
            *(Claim(f"gpio:{pin}", "spi_port", terms=spi, exclusive=False) for pin in SPI0_BUS_PINS),
            Claim(f"gpio:{ce_pin}", "spi_device", terms=f"{spi} chip select {self.spi_device}", exclusive=False),
            *(Claim(f"mcp3008:{spi}.{self.spi_device}:{ch}", "channel") for ch in channels),
        )

    async def _open(self) -> None:
        if self.pin_factory is None:
            from ..pins import select_pin_factory

            self.pin_factory = select_pin_factory()
        from gpiozero import MCP3008, Device

        # gpiozero's software SPI bus (used with MockFactory, or when hardware SPI is off) calls
        # Device.__init__() without our pin_factory, which makes gpiozero look for a *default* factory: on a
        # laptop that fails, on a Pi it may silently build a second one. Lend it ours for the construction only.
        lent = Device.pin_factory is None
        if lent:
            Device.pin_factory = self.pin_factory
        try:
            self._adc = MCP3008(channel=self.channel, differential=self.differential, port=self.spi_port,
                                device=self.spi_device, pin_factory=self.pin_factory)
        finally:
            if lent:
                Device.pin_factory = None

    async def _close(self) -> None:
        adc, self._adc = self._adc, None
        if adc is not None:
            adc.close()

    def _sample(self) -> Fraction:
        total = sum(int(self._adc.raw_value) for _ in range(self.samples))
        return Fraction(total, self.samples)

    async def read_once(self) -> Reading | None:
        """One averaged, calibrated reading; None (counted) if the SPI transfer failed."""
        try:
            raw = await asyncio.to_thread(self._sample)
        except (OSError, ValueError) as e:
            self._count_error("spi", "could not read the MCP3008 (%s); check wiring and that SPI is enabled", e)
            return None
        value = self.calibration.milli(raw)
        if self.quantity is Quantity.POWER_MW:
            value = max(0, value)
        now = self.clock.now()
        return Reading(self.name, now.mono_ns, now.wall, now.boot_id, self.quantity, value,
                       wall_synced=now.synced, signal=self.signal)

    async def _readings(self) -> AsyncIterator[Reading]:
        assert self._adc is not None, "use `async with` before iterating"
        while True:
            r = await self.read_once()
            if r is not None:
                yield self._emit(r)
            await self.clock.sleep(self.interval_s)
