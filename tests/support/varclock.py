"""A compressed-time clock whose speed a test can change: hours of a quiet night pass in seconds, the minutes that
matter run at a rate the real drivers can follow, and the moment the cloud comes back runs in real time."""

from __future__ import annotations

import asyncio
import time

from koto.clock import Now


class VariableClock:
    """Like koto.clock.ScaledClock (monotonic and wall time run `factor` times faster than the host's), starting at
    a chosen wall time, with `set_factor` to change speed from now on (time stays continuous)."""

    def __init__(self, factor: float, *, wall0: float, synced: bool = True,
                 boot_id: str = "11111111-2222-4333-8444-555555555555") -> None:
        self.factor = factor
        self.synced = synced
        self.boot_id = boot_id
        self._real0 = self._start = time.monotonic_ns()
        self._mono0 = self._real0
        self._wall0 = wall0

    def set_factor(self, factor: float) -> None:
        real = time.monotonic_ns()
        self._mono0, self._real0, self.factor = self.from_real_mono_ns(real), real, factor

    def from_real_mono_ns(self, real_mono_ns: int) -> int:
        return self._mono0 + int((real_mono_ns - self._real0) * self.factor)

    def now(self) -> Now:
        mono = self.from_real_mono_ns(time.monotonic_ns())
        return Now(mono, self._wall0 + (mono - self._start) / 1e9, self.synced, self.boot_id)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.factor)

    async def until_wall(self, wall: float) -> None:
        """Wait (real time) until this clock's wall time reaches `wall`."""
        for _ in range(10**9):
            left = wall - self.now().wall
            if left <= 0:
                return
            await asyncio.sleep(min(left / self.factor, 0.05))
