"""A compressed-time clock that every incarnation of a child gateway shares, with a wall-clock offset a test can jump.

`ScaledClock` starts its timeline when it is made, so a gateway SIGKILLed and restarted under it would see its
monotonic clock go back (the new process's timeline starts at the host's clock, behind where the compressed one
had run to) — something a real boot never shows. Here the origin (`real0_ns`, a host CLOCK_MONOTONIC stamp, and
`wall0`) is fixed by the test and written to a file, so the parent (which serves the simulated Modbus meters) and
every child agree on simulated time, and it only ever moves forward.

The wall clock can jump: it is the compressed wall time plus an offset in seconds read from `offset_file` (missing
= 0), re-read at most every `OFFSET_CHECK_S` real seconds. That is the chaos suite's "somebody set the clock"
fault; monotonic time is untouched by it, as the kernel's is.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from koto.clock import Now, read_boot_id

OFFSET_CHECK_S = 0.2


def sim_seconds(real0_ns: int, speed: float, real_mono_ns: int | None = None) -> float:
    """Simulated seconds since the origin, for the host monotonic stamp `real_mono_ns` (default: now)."""
    now = time.monotonic_ns() if real_mono_ns is None else real_mono_ns
    return (now - real0_ns) * speed / 1e9


class AnchoredClock:
    """Monotonic and wall time run `factor` times faster than the host's, from a fixed origin."""

    def __init__(self, factor: float, *, real0_ns: int, wall0: float, offset_file: Path | None = None,
                 synced: bool = True) -> None:
        if factor <= 0:
            raise ValueError("factor must be positive")
        self.factor = factor
        self.synced = synced
        self.boot_id = read_boot_id()
        self._real0 = real0_ns
        self._wall0 = wall0
        self._offset_file = offset_file
        self._offset = 0.0
        self._offset_read = -1.0

    def _wall_offset(self) -> float:
        if self._offset_file is None:
            return 0.0
        now = time.monotonic()
        if now - self._offset_read >= OFFSET_CHECK_S:
            self._offset_read = now
            try:
                self._offset = float(self._offset_file.read_text() or 0)
            except (OSError, ValueError):
                self._offset = 0.0
        return self._offset

    def from_real_mono_ns(self, real_mono_ns: int) -> int:
        return self._real0 + int((real_mono_ns - self._real0) * self.factor)

    def now(self) -> Now:
        mono = self.from_real_mono_ns(time.monotonic_ns())
        return Now(mono, self._wall0 + (mono - self._real0) / 1e9 + self._wall_offset(), self.synced, self.boot_id)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.factor)
