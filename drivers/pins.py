"""Choosing gpiozero's pin factory on purpose, and reading input levels for `koto discover`.

gpiozero picks a pin factory on first use (GPIOZERO_PIN_FACTORY, else lgpio, rpigpio, pigpio, native in turn) and
only *warns* when it falls back. On a Pi the usual cause is lgpio failing to start because its working directory
(or LG_WD) is not writable: lgpio creates its notification files there. The fallback then drives pins through
another library with different edge timestamps and bounce handling. So Koto never relies on the default: it
builds the factory it was told to use, checks lgpio's working directory first, and says plainly what is wrong.

Names: "lgpio" (a Pi; the default) and "mock" (gpiozero's MockFactory with ScriptedPins: tests and the demo).
The name comes from the config, else GPIOZERO_PIN_FACTORY, else "lgpio". gpiozero is imported only here, on use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BackendUnavailable, DriverConfigError

FACTORIES = ("lgpio", "mock")
_ALIASES = {"lgpio": "lgpio", "mock": "mock", "mockfactory": "mock"}


def lgpio_workdir(env: Mapping[str, str] | None = None) -> Path:
    """Where lgpio will create its files: $LG_WD, else the current working directory."""
    env = os.environ if env is None else env
    return Path(env.get("LG_WD") or os.getcwd())


def lgpio_workdir_problem(env: Mapping[str, str] | None = None) -> str | None:
    """A plain-words problem if lgpio cannot write its working directory (for `koto doctor`), else None."""
    wd = lgpio_workdir(env)
    if not wd.is_dir():
        return f"lgpio's working directory {wd} does not exist; set LG_WD to a writable directory (e.g. /run/koto)"
    if not os.access(wd, os.W_OK | os.X_OK):
        return (f"lgpio needs a writable working directory and {wd} is not writable by this user; set "
                "WorkingDirectory= in the systemd unit (Koto's unit uses its StateDirectory) or LG_WD=/run/koto. "
                "Without it gpiozero silently falls back to another, worse, pin library")
    return None


def factory_name(configured: str | None = None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    raw = configured or env.get("GPIOZERO_PIN_FACTORY") or "lgpio"
    name = _ALIASES.get(raw.strip().lower())
    if name is None:
        where = "gpio.pin_factory" if configured else "GPIOZERO_PIN_FACTORY"
        raise DriverConfigError("gpio", where, f"{raw!r} is not supported; use one of: {', '.join(FACTORIES)}")
    return name


def select_pin_factory(configured: str | None = None, *, env: Mapping[str, str] | None = None) -> Any:
    """Build the pin factory by name; raise BackendUnavailable in plain words rather than fall back."""
    name = factory_name(configured, env)
    if name == "mock":
        from .gpio.sim import mock_factory

        return mock_factory()
    problem = lgpio_workdir_problem(env)
    if problem:
        raise BackendUnavailable(problem)
    try:
        from gpiozero.pins.lgpio import LGPIOFactory
    except ImportError as e:
        raise BackendUnavailable(f"the lgpio library is not installed ({e}); on Raspberry Pi OS: "
                                 "sudo apt install python3-lgpio (a venv must see the system's packages: "
                                 "deploy/install.sh makes it so; PyPI's lgpio has no wheel past Python 3.12)") from e
    except Exception as e:  # lgpio raises its own error type at import when it cannot start
        raise BackendUnavailable(f"lgpio could not start: {e}") from e
    try:
        return LGPIOFactory()
    except Exception as e:
        raise BackendUnavailable(f"lgpio could not open the GPIO chip ({e}); is this a Raspberry Pi, and is the "
                                 "user in the gpio group?") from e


def describe(pin_factory: Any) -> str:
    """One line for logs and `koto doctor`: which factory is driving the pins."""
    return f"{type(pin_factory).__module__}.{type(pin_factory).__name__}"


@dataclass(frozen=True, slots=True)
class InputState:
    pin: int
    high: bool | None  # None: could not be read (see `problem`)
    problem: str = ""


def read_input_states(pins: Iterable[int], pin_factory: Any, *, pull: str = "up") -> list[InputState]:
    """Current level of each input pin, for `koto discover` ("GPIO17: low").

    The pins are claimed as inputs with `pull` ("up" suits S0 outputs and contacts to ground, which then read
    low while active; "down" or "none" for other wiring) and released again. A pin that cannot be claimed (in
    use, not a GPIO) is reported with the reason instead of aborting the scan.
    """
    from gpiozero import InputDevice

    pull_up = {"up": True, "down": False, "none": None}[pull]
    out: list[InputState] = []
    for pin in pins:
        try:
            kw: dict[str, Any] = {"pull_up": pull_up, "pin_factory": pin_factory}
            if pull_up is None:
                kw["active_state"] = True
            dev = InputDevice(pin, **kw)
        except Exception as e:  # gpiozero's PinInvalidPin, GPIOPinInUse, ... all say what is wrong
            out.append(InputState(pin, None, f"{type(e).__name__}: {e}"))
            continue
        try:
            out.append(InputState(pin, bool(dev.pin.state)))
        finally:
            dev.close()
    return out
