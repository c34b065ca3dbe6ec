"""A relay on a GPIO output for entitlement enforcement, safe by default (ARCHITECTURE §5).

The rule: the gateway may refuse to *start* an unentitled function, and never cuts power in the middle of a
running cycle. The relay's safe state is "appliance powered", and it is the state on start, on stop, and whenever
the gateway is unsure.

Two independent settings describe the hardware:
- `active_high`: the relay board's input. true: a high GPIO energises the coil; false: a low one does (many opto-
  isolated boards are active low).
- `wiring`: which contact the appliance's supply (or its start circuit) runs through. "nc" (recommended, default):
  the normally-closed contact, so the appliance is powered while the coil is *not* energised; the gateway energises
  the coil only to block a start. "no": the normally-open contact, powered only while the coil is energised.

What happens when the process stops or crashes is in docs/gpio.md: with "nc" wiring, a released pin, a dead
gateway, a reboot or a power cut all leave the coil unpowered and the appliance powered. With "no" wiring any of
those cuts the appliance off, which is why it must be chosen explicitly and is logged as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

from koto.clock import Clock

from .config import Keys

log = logging.getLogger("koto.drivers.relay")


class Relay:
    """`allow_start(allowed, running=...)` is the only way the gateway changes it."""

    KEYS: ClassVar[tuple[str, ...]] = ("pin", "active_high", "wiring")

    def __init__(self, name: str, *, pin: int, pin_factory: Any = None, active_high: bool = True,
                 wiring: str = "nc") -> None:
        if wiring not in ("nc", "no"):
            raise ValueError('wiring must be "nc" or "no"')
        self.name = name
        self.pin = pin
        self.pin_factory = pin_factory
        self.active_high = active_high
        self.wiring = wiring
        self.refused_starts = 0  # times a start was refused (the appliance idle and unentitled)
        self.kept_running = 0  # times enforcement was asked while a cycle ran, and the relay left power on
        self._device: Any = None
        self._powered = True
        if wiring == "no":
            log.warning("%s: relay wired through its normally-open contact: if the gateway stops, crashes or loses "
                        "power, the appliance loses power too; wire it through the normally-closed contact", name)

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock | None = None, pin_factory: Any = None,
                    **_: Any) -> Self:
        k = Keys(name, cfg, cls.KEYS, collect=True)
        pin, active_high, wiring = k.pin(), k.boolean("active_high", True), k.choice("wiring", "nc", ("nc", "no"))
        k.done()
        return cls(name, pin=pin, pin_factory=pin_factory, active_high=active_high, wiring=wiring)

    # -- state -------------------------------------------------------------------------------------------------

    def _coil_for(self, powered: bool) -> bool:
        return (not powered) if self.wiring == "nc" else powered

    @property
    def powered(self) -> bool:
        """Whether the relay lets the appliance have power (the safe state is True)."""
        return self._powered

    @property
    def coil_energised(self) -> bool:
        return self._coil_for(self._powered)

    @property
    def pin_level_high(self) -> bool | None:
        """The level the GPIO drives now (None when closed)."""
        return None if self._device is None else bool(self._device.pin.state)

    def _apply(self, powered: bool) -> None:
        self._powered = powered
        if self._device is not None:
            self._device.value = self._coil_for(powered)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def open(self) -> Self:
        """Claim the pin already in the safe state (the appliance powered), never glitching through 'blocked'."""
        if self._device is not None:
            return self
        if self.pin_factory is None:
            from ..pins import select_pin_factory

            self.pin_factory = select_pin_factory()
        from gpiozero import OutputDevice

        self._powered = True
        self._device = OutputDevice(self.pin, active_high=self.active_high,
                                    initial_value=self._coil_for(True), pin_factory=self.pin_factory)
        return self

    def close(self) -> None:
        """Back to the safe state, then release the pin (it becomes an input; see docs/gpio.md)."""
        dev = self._device
        if dev is None:
            return
        try:
            self._apply(True)
        finally:
            self._device = None
            dev.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    # -- the one decision --------------------------------------------------------------------------------------

    def allow_start(self, allowed: bool, running: bool) -> bool:
        """Apply an entitlement decision; returns whether the appliance is powered afterwards.

        allowed: power on (the safe state). Not allowed and idle: block, so the function cannot start. Not allowed
        but a cycle is `running`: leave the power on — never cut a running cycle; the meter records the use as
        unentitled instead.
        """
        if allowed:
            if not self._powered:
                log.info("%s: start allowed again; appliance powered", self.name)
            self._apply(True)
        elif running:
            self.kept_running += 1
            if self._powered:
                log.info("%s: not entitled, but a cycle is running: leaving power on", self.name)
            self._apply(self._powered)  # no change: a running cycle is never cut
        else:
            if self._powered:
                self.refused_starts += 1
                log.info("%s: not entitled: blocking new starts until an entitlement arrives", self.name)
            self._apply(False)
        return self._powered
