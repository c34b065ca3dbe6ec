"""The household's status LED and pairing button on GPIO: what the gateway is doing, at a glance, and one press to
add an appliance.

What the LED shows (highest first; the first that applies):

| pattern | meaning | looks like |
|---|---|---|
| `pairing` | pairing mode is on: open the status page to add an appliance | fast blink, 0.2 s on / 0.2 s off |
| `error` | needs a person: a source not delivering (failing, restarted), the ledger not writable | double blink, 2 s |
| `offline` | metering and keeping the records, not connected to the cloud (sent later) | slow blink, 1 s / 1 s |
| `online` | metering, and connected to the cloud (or metering locally, with no `[cloud]`) | steady on |

It follows the daemon's state (`gateway_state`, the same facts `koto status` shows) and goes off when the gateway
stops. Holding the button for `hold_s` (3 s) enters pairing mode: the `on_long_press` callback, which the daemon
connects to its pairing mode. A shorter press does nothing, so a brush against it does not.

Config (both optional, both off unless given; the pins enter the config's GPIO claim check, so a pin used by a source
or a relay is refused at load):

    [gateway.led]
    pin = 22            # BCM number; LED (with its resistor) to ground
    active_high = true  # false for an LED wired to 3.3 V
    pwm = false         # true: dimmed by PWM to `brightness` (0.05-1)
    brightness = 1.0

    [gateway.button]
    pin = 23            # BCM number; a push button to ground (the Pi's pull-up)
    pull = "up"         # "down" for a button to 3.3 V
    hold_s = 3          # how long a press enters pairing

The hardware comes in as a gpiozero pin factory, as for the drivers (`pin_factory=`: MockFactory in tests; none: the
one `drivers.pins` selects). Time comes in too: `step(now)` sets the LED for the monotonic time `now` and watches
the button, so tests drive it with their own clock; `run()` calls it every `TICK_S` on the event loop (a pin write
is a few microseconds, and only changes are written).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from drivers.base import Claim
from drivers.errors import DriverConfigError
from drivers.gpio.config import Keys

from .errors import ConfigError, ConfigErrors

if TYPE_CHECKING:
    from .daemon import Gateway

log = logging.getLogger("koto.indicator")
T = TypeVar("T")

TICK_S = 0.05
HOLD_S = 3.0


@dataclass(frozen=True)
class Pattern:
    """A repeating sequence of (lit, seconds) steps."""

    name: str
    steps: tuple[tuple[bool, float], ...]

    @property
    def period_s(self) -> float:
        return sum(s for _, s in self.steps)

    def lit_at(self, phase_s: float) -> bool:
        t = phase_s % self.period_s if self.period_s > 0 else 0.0
        for lit, secs in self.steps:
            if t < secs:
                return lit
            t -= secs
        return self.steps[-1][0]


ONLINE = Pattern("online", ((True, 1.0),))
OFFLINE = Pattern("offline", ((True, 1.0), (False, 1.0)))
PAIRING = Pattern("pairing", ((True, 0.2), (False, 0.2)))
ERROR = Pattern("error", ((True, 0.2), (False, 0.2), (True, 0.2), (False, 1.4)))
OFF = Pattern("off", ((False, 1.0),))
PATTERNS = {p.name: p for p in (ONLINE, OFFLINE, PAIRING, ERROR, OFF)}

BAD_SOURCE_STATES = frozenset({"degraded", "reconnecting", "stopped"})


def pattern_for(state: Mapping[str, Any], *, pairing: bool = False) -> Pattern:
    """The pattern for a state snapshot shaped like the status file's (`cloud`, `sources`, `ledger`; see
    `gateway_state`): pairing, else error, else offline, else online; `off` once the gateway has stopped."""
    if state.get("state") == "stopped":
        return OFF
    if pairing:
        return PAIRING
    if state.get("ledger", {}).get("failing") or any(_failing(s) for s in state.get("sources", {}).values()):
        return ERROR
    cloud = state.get("cloud")
    if cloud is not None and not cloud.get("connected"):
        return OFFLINE
    return ONLINE


def _failing(source: Mapping[str, Any]) -> bool:
    """Not delivering: degraded, reconnecting or stopped, or restarted and not (yet again) delivering."""
    state = source.get("state")
    return state in BAD_SOURCE_STATES or (state == "starting" and int(source.get("restarts", 0)) > 0)


def gateway_state(gw: Gateway) -> dict[str, Any]:
    """The few facts the LED needs, read from the running gateway without touching the ledger (it runs every tick)."""
    cloud = None
    if gw.sync is not None:
        cloud = {"connected": bool(gw.sync.health.connected)}
    sources = {n: {"state": st.source.health.state if st.source else "starting", "restarts": st.restarts}
               for n, st in gw.sources.items()}
    return {"state": "running", "cloud": cloud, "sources": sources,
            "ledger": {"failing": bool(gw.held_drafts()) or gw.writer_stalled_s() > 30}}


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class LedConfig:
    pin: int
    active_high: bool = True
    pwm: bool = False
    brightness: float = 1.0


@dataclass(frozen=True)
class ButtonConfig:
    pin: int
    pull_up: bool = True
    hold_s: float = HOLD_S


def _read(file: str, where: str, raw: Mapping[str, Any], allowed: tuple[str, ...], build: Callable[[Keys], T]) -> T:
    """`build(keys)` over the table, every bad value and unknown key said (a `ConfigErrors` for several), each as a
    ConfigError naming `where.KEY`, as `koto check` says a source's."""
    k = Keys(where, raw, allowed, collect=True)
    value = build(k)  # (stand-ins for bad values, never returned: `done` raises first)
    try:
        k.done()
    except DriverConfigError as e:
        errors = [ConfigError(file, f"{where}.{one.key}", one.problem) for one in e.each()]
        raise (errors[0] if len(errors) == 1 else ConfigErrors(list(errors))) from e
    return value


def parse_led(raw: Mapping[str, Any], *, file: str) -> LedConfig:
    """`[gateway.led]`; a bad value is a ConfigError naming `gateway.led.KEY` (several: a `ConfigErrors`)."""
    return _read(file, "gateway.led", raw, ("pin", "active_high", "pwm", "brightness"), lambda k: LedConfig(
        pin=k.pin(), active_high=k.boolean("active_high", True), pwm=k.boolean("pwm", False),
        brightness=k.number("brightness", 1.0, lo=0.05, hi=1.0)))


def parse_button(raw: Mapping[str, Any], *, file: str) -> ButtonConfig:
    """`[gateway.button]`; a bad value is a ConfigError naming `gateway.button.KEY` (several: a `ConfigErrors`)."""
    return _read(file, "gateway.button", raw, ("pin", "pull", "hold_s"), lambda k: ButtonConfig(
        pin=k.pin(), pull_up=k.choice("pull", "up", ("up", "down")) == "up",
        hold_s=k.number("hold_s", HOLD_S, lo=0.5, hi=30)))


def claims(led: LedConfig | None, button: ButtonConfig | None) -> list[tuple[str, Claim]]:
    """The GPIO pins they use, as the config's hardware check takes them (dotted key, claim)."""
    out = []
    if led is not None:
        out.append(("gateway.led", Claim(f"gpio:{led.pin}", "pin")))
    if button is not None:
        out.append(("gateway.button", Claim(f"gpio:{button.pin}", "pin")))
    return out


# ------------------------------------------------------------------------------------------------ the device


class Indicator:
    """The LED (if configured) and the button (if configured). `show(pattern, now)` chooses what the LED shows;
    `step(now)` lights it for `now` and watches the button."""

    def __init__(self, led: LedConfig | None, button: ButtonConfig | None, *, pin_factory: Any = None,
                 on_long_press: Callable[[], None] | None = None) -> None:
        self.led_config = led
        self.button_config = button
        self.pin_factory = pin_factory
        self.on_long_press = on_long_press
        self.pattern = OFF
        self.long_presses = 0
        self._since = 0.0  # when the pattern began (its phase starts there)
        self._led: Any = None
        self._button: Any = None
        self._lit: bool | None = None
        self._pressed_at: float | None = None
        self._fired = False

    def open(self) -> Self:
        if self.pin_factory is None:
            from drivers.pins import select_pin_factory

            self.pin_factory = select_pin_factory()
        from gpiozero import LED, PWMLED, Button

        try:
            if self.led_config is not None:
                cls = PWMLED if self.led_config.pwm else LED
                self._led = cls(self.led_config.pin, active_high=self.led_config.active_high, initial_value=False,
                                pin_factory=self.pin_factory)
            if self.button_config is not None:
                self._button = Button(self.button_config.pin, pull_up=self.button_config.pull_up,
                                      pin_factory=self.pin_factory)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for dev in (self._led, self._button):
            if dev is not None:
                try:
                    if dev is self._led:
                        dev.off()
                finally:
                    dev.close()
        self._led = self._button = None
        self._lit = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def show(self, pattern: Pattern, now: float) -> None:
        """Show `pattern` from `now` (a pattern already shown keeps its phase: no restart every tick)."""
        if pattern is not self.pattern:
            if pattern.name != "off" or self.pattern.name != "off":
                log.debug("status LED: %s", pattern.name)
            self.pattern = pattern
            self._since = now

    def step(self, now: float) -> None:
        if self._led is not None:
            lit = self.pattern.lit_at(now - self._since)
            if lit != self._lit:
                cfg = self.led_config
                self._led.value = (cfg.brightness if cfg is not None and cfg.pwm else 1) if lit else 0
                self._lit = lit
        if self._button is not None:
            self._watch_button(now)

    def _watch_button(self, now: float) -> None:
        assert self.button_config is not None
        if not self._button.is_pressed:
            self._pressed_at = None
            self._fired = False
            return
        if self._pressed_at is None:
            self._pressed_at = now
        if not self._fired and now - self._pressed_at >= self.button_config.hold_s:
            self._fired = True  # once per press, however long it is held
            self.long_presses += 1
            log.info("pairing mode requested by button (held %g s)", self.button_config.hold_s)
            if self.on_long_press is not None:
                try:
                    self.on_long_press()
                except Exception as e:  # the button must never stop the gateway
                    log.warning("the button's long press failed: %s", e)

    async def run(self, state: Callable[[], Mapping[str, Any]], pairing: Callable[[], bool] = lambda: False, *,
                  clock: Callable[[], float] = time.monotonic, tick_s: float = TICK_S, every_s: float = 1.0) -> None:
        """Follow `state()` (every `every_s`) on the LED, and the button, until cancelled; then the LED goes off.
        Pins that cannot be had (another program holds them) are said once; the gateway runs on without them."""
        try:
            self.open()
        except Exception as e:
            log.warning("status LED / button: cannot use GPIO %s (%s); the gateway runs on without them",
                        ", ".join(str(c.pin) for c in (self.led_config, self.button_config) if c is not None), e)
            await asyncio.Event().wait()  # nothing to do until the gateway stops
        last = -every_s
        try:
            while True:
                now = clock()
                if now - last >= every_s:
                    last = now
                    try:
                        self.show(pattern_for(state(), pairing=pairing()), now)
                    except Exception as e:  # a state that cannot be read shows as an error, never a crash
                        log.debug("status LED: cannot read the state: %s", e)
                        self.show(ERROR, now)
                presses = self.long_presses
                self.step(now)
                if self.long_presses != presses:
                    last = -every_s  # show pairing at once, not at the next look at the state
                await asyncio.sleep(tick_s)
        finally:
            self.close()
