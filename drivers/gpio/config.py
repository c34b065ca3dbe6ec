"""Validation of a GPIO source's TOML table: every problem names the key and what is allowed.

Unknown keys are rejected rather than ignored: a typo such as `bounce = 5` instead of `bounce_ms = 5` would
otherwise silently run with the default, and on an S0 line that can mean miscounted energy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drivers.errors import DriverConfigError

COMMON_KEYS = frozenset({"driver"})
GPIO_PINS = range(0, 28)  # BCM numbers on the 40-pin header of every Pi since the B+
PULLS = ("up", "down", "none")
LEVELS = ("low", "high")


class Keys:
    """Reads one source table. Call `reject_unknown()` after reading every key the driver knows."""

    def __init__(self, source: str, cfg: Mapping[str, Any], allowed: Sequence[str]) -> None:
        self.source = source
        self.cfg = cfg
        self.allowed = tuple(allowed)
        unknown = sorted(set(cfg) - set(allowed) - COMMON_KEYS)
        if unknown:
            raise self.error(unknown[0], f"unknown key; allowed: {', '.join(sorted(self.allowed))}")

    def error(self, key: str, problem: str) -> DriverConfigError:
        return DriverConfigError(self.source, key, problem)

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.cfg:
            if default is ...:
                raise self.error(key, "missing; this key is required")
            return default
        return self.cfg[key]

    def integer(self, key: str, default: Any = ..., *, lo: int, hi: int) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"expected a whole number from {lo} to {hi}, got {v!r}")
        if not lo <= v <= hi:
            raise self.error(key, f"{v} is out of range; allowed {lo} to {hi}")
        return v

    def number(self, key: str, default: Any = ..., *, lo: float, hi: float, lo_open: bool = False) -> float:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(key, f"expected a number from {lo:g} to {hi:g}, got {v!r}")
        if not (lo < v if lo_open else lo <= v) or not v <= hi:
            bound = f"above {lo:g}" if lo_open else f"from {lo:g}"
            raise self.error(key, f"{v!r} is out of range; allowed {bound} to {hi:g}")
        return float(v)

    def choice(self, key: str, default: Any, options: Sequence[str]) -> str:
        v = self._get(key, default)
        if v not in options:
            raise self.error(key, f"{v!r} is not allowed; use one of: {', '.join(options)}")
        return str(v)

    def text(self, key: str, default: Any = ...) -> str:
        v = self._get(key, default)
        if not isinstance(v, str) or not v.strip():
            raise self.error(key, f"expected a non-empty string, got {v!r}")
        return v

    def boolean(self, key: str, default: Any = ...) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, f"expected true or false, got {v!r}")
        return v

    def pin(self, key: str = "pin") -> int:
        v = self._get(key, ...)
        if isinstance(v, bool) or not isinstance(v, int) or v not in GPIO_PINS:
            raise self.error(key, f"expected a BCM GPIO number from 0 to 27 (GPIO17 is 17), got {v!r}")
        return v

    def polarity(self) -> tuple[str, bool]:
        """`pull` (up, down, none) and `active` (low, high); returns (pull, active_high).

        `active` defaults to what the pull implies (a contact to ground with a pull-up is active low). With
        `pull = "none"` (an external resistor) it must be given, because the idle level cannot be guessed.
        """
        pull = self.choice("pull", "up", PULLS)
        if pull == "none" and "active" not in self.cfg:
            raise self.error("active", 'missing; with pull = "none" say whether the input is active "low" or "high"')
        active = self.choice("active", "low" if pull == "up" else "high", LEVELS)
        return pull, active == "high"
