"""The clock is passed in, never read inside the metering core.

`SystemClock` is the gateway's: monotonic nanoseconds for durations, wall time for placing intervals, the boot id
that ties the two together, and whether the kernel says the wall clock is synchronised (adjtimex's STA_UNSYNC flag,
which NTP/chrony/timesyncd clear). Tests use `ManualClock`; the demo and soak runs use `ScaledClock`, which runs
faster than real time. Every clock has the whole `Clock` protocol, so a driver never asks which kind it was given.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

STA_UNSYNC = 0x0040
TIME_ERROR = 5


@dataclass(frozen=True, slots=True)
class Now:
    mono_ns: int
    wall: float
    synced: bool
    boot_id: str


class Clock(Protocol):
    """What the gateway, the sync and the drivers ask of a clock.

    Drivers take timestamps from their backends on the host's monotonic clock (a GPIO edge's kernel stamp) and wait
    in real time (a poll period, a timeout that an edge may cut short); a clock that runs faster than real time
    (`ScaledClock`) must therefore say how its timeline relates to the host's.
    """

    def now(self) -> Now: ...

    @property
    def factor(self) -> float:
        """Seconds of this clock per real second: a wait of `s` clock seconds that an event may end early (a
        timeout, a poll period) waits `s / factor` real seconds."""
        ...

    def from_real_mono_ns(self, real_mono_ns: int) -> int:
        """A host monotonic stamp (`time.monotonic_ns()`'s clock, e.g. a GPIO edge's) on this clock's timeline."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Let `seconds` of this clock's time pass."""
        ...


def read_boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return f"noboot-{uuid.uuid4()}"


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (glibc, 64-bit and 32-bit layouts use C longs throughout)
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    """The C library, loaded once: `ctypes.util.find_library` runs `ldconfig -p` in a child process, which a check
    every 10 s turned into a fork, an exec and a parse of the whole library cache, a good part of the daemon's idle
    CPU. The handle is cached on success only, so a failure is retried."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def kernel_clock_synced() -> bool:
    """Ask the kernel (adjtimex, read-only) whether an NTP daemon has synchronised the clock."""
    try:
        libc = _load_libc()
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return False
    if state < 0 or state == TIME_ERROR:
        return False
    return not (tx.status & STA_UNSYNC)


class SystemClock:
    """The real clock. The sync flag is re-read at most every `sync_check_s` seconds (it changes rarely)."""

    factor = 1.0

    def __init__(self, *, sync_check_s: float = 10.0) -> None:
        self.boot_id = read_boot_id()
        self._sync_check_ns = int(sync_check_s * 1e9)
        self._synced = kernel_clock_synced()
        self._checked_ns = time.monotonic_ns()

    def now(self) -> Now:
        mono = time.monotonic_ns()
        if mono - self._checked_ns >= self._sync_check_ns:
            self._synced = kernel_clock_synced()
            self._checked_ns = mono
        return Now(mono, time.time(), self._synced, self.boot_id)

    def from_real_mono_ns(self, real_mono_ns: int) -> int:
        return real_mono_ns

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock a test or a compressed-time simulation moves by hand.

    It is not tied to real time: `sleep` moves it (the task that sleeps is the one driving the simulation), host
    stamps are taken as they are, and a wait that an event may end early takes real seconds (`factor` 1).
    """

    factor = 1.0

    def __init__(self, *, mono_ns: int = 1_000_000_000, wall: float = 1_764_460_800.0, synced: bool = True,
                 boot_id: str = "00000000-0000-4000-8000-000000000000") -> None:
        self.mono_ns = mono_ns
        self.wall = wall
        self.synced = synced
        self.boot_id = boot_id

    def now(self) -> Now:
        return Now(self.mono_ns, self.wall, self.synced, self.boot_id)

    def advance(self, seconds: float) -> None:
        self.mono_ns += int(seconds * 1e9)
        self.wall += seconds

    def from_real_mono_ns(self, real_mono_ns: int) -> int:
        return real_mono_ns

    async def sleep(self, seconds: float) -> None:
        """Move the clock `seconds` forward, then let the other tasks run once."""
        self.advance(seconds)
        await asyncio.sleep(0)


class ScaledClock:
    """Real time run `factor` times faster: the demo and soak runs compress hours of appliance use into seconds.

    Monotonic and wall time both advance `factor` times faster than the host clock from the moment of creation.
    `from_real_mono_ns` maps a host monotonic stamp (e.g. a GPIO edge's timestamp) onto this clock's timeline, so
    drivers that take timestamps from their backend keep exact ordering under compression.
    """

    def __init__(self, factor: float, *, synced: bool = True, boot_id: str | None = None) -> None:
        if factor <= 0:
            raise ValueError("factor must be positive")
        self.factor = factor
        self.synced = synced
        self.boot_id = boot_id or read_boot_id()
        self._real0 = time.monotonic_ns()
        self._wall0 = time.time()

    def from_real_mono_ns(self, real_mono_ns: int) -> int:
        return self._real0 + int((real_mono_ns - self._real0) * self.factor)

    def now(self) -> Now:
        mono = self.from_real_mono_ns(time.monotonic_ns())
        return Now(mono, self._wall0 + (mono - self._real0) / 1e9, self.synced, self.boot_id)

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of this clock's time (seconds / factor of real time)."""
        await asyncio.sleep(seconds / self.factor)
