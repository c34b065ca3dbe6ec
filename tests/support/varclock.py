"""A compressed-time clock that follows a plan: hours of a quiet night pass in seconds, the minutes that matter run
at a rate the real drivers can follow, and the moment the cloud comes back runs in real time.

The plan is fixed up front as (simulated second, speed) breakpoints, so the mapping from host time to simulated time
is exact whatever the machine's load: a stalled test loop makes readings sparser, never moves a breakpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

from koto.clock import Now


class PlannedClock:
    """Monotonic and wall time run `speed` times faster than the host's; the speed changes at simulated seconds
    (from the start) given in `plan` as (at_s, speed), the first at 0. The wall time starts at `wall0`."""

    def __init__(self, plan: Sequence[tuple[float, float]], *, wall0: float, synced: bool = True,
                 boot_id: str = "11111111-2222-4333-8444-555555555555") -> None:
        if not plan or plan[0][0] != 0 or any(b[0] <= a[0] for a, b in itertools.pairwise(plan)):
            raise ValueError("the plan starts at 0 and its times increase")
        self.synced = synced
        self.boot_id = boot_id
        self._wall0 = wall0
        self._real0 = time.monotonic_ns()
        # Each segment: (host seconds at its start, simulated seconds at its start, speed).
        self._segments: list[tuple[float, float, float]] = []
        real = 0.0
        for i, (at, speed) in enumerate(plan):
            self._segments.append((real, at, speed))
            if i + 1 < len(plan):
                real += (plan[i + 1][0] - at) / speed

    def _segment(self, real_s: float) -> tuple[float, float, float]:
        return next(s for s in reversed(self._segments) if s[0] <= real_s) if real_s >= 0 else self._segments[0]

    def _sim_s(self, real_s: float) -> float:
        r0, s0, speed = self._segment(real_s)
        return s0 + (real_s - r0) * speed

    @property
    def factor(self) -> float:
        return self._segment((time.monotonic_ns() - self._real0) / 1e9)[2]

    def from_real_mono_ns(self, real_mono_ns: int) -> int:
        return self._real0 + int(self._sim_s((real_mono_ns - self._real0) / 1e9) * 1e9)

    def now(self) -> Now:
        mono = self.from_real_mono_ns(time.monotonic_ns())
        return Now(mono, self._wall0 + (mono - self._real0) / 1e9, self.synced, self.boot_id)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.factor)

    async def until_wall(self, wall: float) -> None:
        """Wait (host time) until this clock's wall time reaches `wall`."""
        for _ in range(10**9):
            left = wall - self.now().wall
            if left <= 0:
                return
            await asyncio.sleep(min(left / self.factor, 0.05))
