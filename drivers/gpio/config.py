"""Validation of a GPIO source's TOML table: every problem names the key and what is allowed.

Unknown keys are rejected rather than ignored: a typo such as `bounce = 5` instead of `bounce_ms = 5` would
otherwise silently run with the default, and on an S0 line that can mean miscounted energy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drivers.errors import DriverConfigError, SourceProblems

COMMON_KEYS = frozenset({"driver"})
GPIO_PINS = range(0, 28)  # BCM numbers on the 40-pin header of every Pi since the B+
PULLS = ("up", "down", "none")
LEVELS = ("low", "high")


class Keys:
    """Reads one source table, each method checking one key (its value, or a `DriverConfigError` naming it).

    With `collect` (a driver's `from_config`), a bad value does not stop the reading: it is recorded and a stand-in
    of the right type is returned, never used, as the driver raises every problem (`done()`) before it builds
    anything; every unknown key is recorded too. Without, the first problem is raised (gateway/indicator.py).
    """

    def __init__(self, source: str, cfg: Mapping[str, Any], allowed: Sequence[str], *, collect: bool = False) -> None:
        self.source = source
        self.cfg = cfg
        self.allowed = tuple(allowed)
        self.problems = SourceProblems(source) if collect else None
        for key in sorted(set(cfg) - set(allowed) - COMMON_KEYS):
            self.fail(key, f"unknown key; allowed: {', '.join(sorted(self.allowed))}")

    def error(self, key: str, problem: str) -> DriverConfigError:
        return DriverConfigError(self.source, key, problem)

    def fail(self, key: str, problem: str) -> None:
        """Record the problem (when collecting), else raise it."""
        if self.problems is None:
            raise self.error(key, problem)
        self.problems.add(key, problem)

    def bad(self, *keys: str) -> bool:
        """Whether a problem was recorded at any of `keys` (a check that depends on one is then skipped)."""
        return self.problems is not None and self.problems.bad(*keys)

    def done(self) -> None:
        """Raise every recorded problem, one `DriverConfigError` or a `DriverConfigErrors`."""
        if self.problems is not None:
            self.problems.raise_if_any()

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.cfg:
            if default is ...:
                self.fail(key, "missing; this key is required")
            return default
        return self.cfg[key]

    def integer(self, key: str, default: Any = ..., *, lo: int, hi: int) -> int:
        v = self._get(key, default)
        if v is ...:
            return lo
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"expected a whole number from {lo} to {hi}, got {v!r}")
        elif not lo <= v <= hi:
            self.fail(key, f"{v} is out of range; allowed {lo} to {hi}")
        else:
            return v
        return lo

    def number(self, key: str, default: Any = ..., *, lo: float, hi: float, lo_open: bool = False) -> float:
        v = self._get(key, default)
        if v is ...:
            return float(lo)
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(key, f"expected a number from {lo:g} to {hi:g}, got {v!r}")
        elif not (lo < v if lo_open else lo <= v) or not v <= hi:
            bound = f"above {lo:g}" if lo_open else f"from {lo:g}"
            self.fail(key, f"{v!r} is out of range; allowed {bound} to {hi:g}")
        else:
            return float(v)
        return float(lo)

    def choice(self, key: str, default: Any, options: Sequence[str]) -> str:
        v = self._get(key, default)
        if v is not ... and v not in options:
            self.fail(key, f"{v!r} is not allowed; use one of: {', '.join(options)}")
        return str(v) if v in options else options[0]

    def text(self, key: str, default: Any = ...) -> str:
        v = self._get(key, default)
        if v is ...:
            return ""
        if not isinstance(v, str) or not v.strip():
            self.fail(key, f"expected a non-empty string, got {v!r}")
            return ""
        return v

    def boolean(self, key: str, default: Any = ...) -> bool:
        v = self._get(key, default)
        if v is not ... and not isinstance(v, bool):
            self.fail(key, f"expected true or false, got {v!r}")
        return v if isinstance(v, bool) else False

    def pin(self, key: str = "pin") -> int:
        v = self._get(key, ...)
        if v is ...:
            return 0
        if isinstance(v, bool) or not isinstance(v, int) or v not in GPIO_PINS:
            self.fail(key, f"expected a BCM GPIO number from 0 to 27 (GPIO17 is 17), got {v!r}")
            return 0
        return v

    def polarity(self) -> tuple[str, bool]:
        """`pull` (up, down, none) and `active` (low, high); returns (pull, active_high).

        `active` defaults to what the pull implies (a contact to ground with a pull-up is active low). With
        `pull = "none"` (an external resistor) it must be given, because the idle level cannot be guessed.
        """
        pull = self.choice("pull", "up", PULLS)
        if pull == "none" and "active" not in self.cfg:
            self.fail("active", 'missing; with pull = "none" say whether the input is active "low" or "high"')
        active = self.choice("active", "low" if pull == "up" else "high", LEVELS)
        return pull, active == "high"
