"""The faults of the chaos suite, each a coroutine on a running `Rig`, and the seeded schedule that orders them.

Every fault has an injection (the moment things go wrong) and a clearing (the moment the world is normal again:
the broker is back, the card has space, the adapter is plugged in). Its recovery time is measured from the
clearing to the first record committed after it that the receiver holds — "fault → next record acked" — where
"after it" means a seq above the gateway's ledger head at the clearing. For a fault that hits one source (the
serial adapter, a BLE device) the record must come from that source.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.sim_gateway import silent_flag

from .rig import Rig

FAULTS = ("gateway_sigkill", "broker_restart", "receiver_restart", "full_disk", "serial_vanish", "ble_silent",
          "clock_jump", "power_cut")
CLOCK_JUMP_S = 7200.0  # the wall clock jumps two hours ahead, and back at the next jump


@dataclass
class Outcome:
    fault: str
    at_s: float  # real seconds since the rig started
    lasted_s: float  # injection to clearing
    recovered_s: float | None  # clearing to the next record acked; None: not within the limit
    detail: str = ""

    @property
    def total_s(self) -> float | None:
        return None if self.recovered_s is None else self.lasted_s + self.recovered_s


def fill(folder: Path) -> int:
    """Write a filler file into `folder` until its file system says ENOSPC; returns the bytes written."""
    chunk = b"\0" * 65536
    written = 0
    with (folder / "filler").open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 512:
                    return written
    return written


class Faults:
    """The faults, bound to one rig. `duration_s` is how long a lasting fault lasts (real seconds)."""

    def __init__(self, rig: Rig, *, recover_within_s: float = 60.0) -> None:
        self.rig = rig
        self.recover_within_s = recover_within_s
        self._jumped = False
        self.modbus_source = next((f"{a.id}-meter" for a in rig.cfg.appliances if a.kind == "modbus"), "")
        self.ble = next((a for a in rig.cfg.appliances if a.kind == "ble"), None)

    def available(self) -> list[str]:
        out = list(FAULTS)
        if not self.rig.mounted:
            out.remove("full_disk")  # no size-limited file system here (mounting a tmpfs needs root)
        if not self.modbus_source:
            out.remove("serial_vanish")
        if self.ble is None:
            out.remove("ble_silent")
        return out

    async def run(self, fault: str, duration_s: float) -> Outcome:
        act: Callable[[float], Awaitable[tuple[str | None, str]]] = getattr(self, fault)
        t0 = time.monotonic()
        self.rig.note(f"fault: {fault} ({duration_s:.1f} s)")
        source, detail = await act(duration_s)
        cleared = time.monotonic()
        head = await self._head()
        recovered = await self._next_acked(head, source)
        out = Outcome(fault, t0 - self.rig.real0_ns / 1e9, cleared - t0, recovered, detail)
        when = f"NOT within {self.recover_within_s:g} s" if recovered is None else f"after {recovered:.1f} s"
        tail = f"; {detail}" if detail else ""
        self.rig.note(f"  cleared after {out.lasted_s:.1f} s; next record acked {when}{tail}")
        return out

    async def _head(self) -> int:
        for _ in range(50):
            with contextlib.suppress(Exception):  # the ledger may be mid-restore or not yet created
                # in a thread: the daemon lends its ledger within a second, and this loop runs the meters' bus
                return (await asyncio.to_thread(self.rig.gateway_head))[1]
            await asyncio.sleep(0.05)
        return 0

    async def _next_acked(self, head: int, source: str | None) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.recover_within_s:
            with contextlib.suppress(Exception):
                if self.rig.cloud_records_after(head, source) > 0:
                    return time.monotonic() - t0
            await asyncio.sleep(0.05)
        return None

    # -- the faults: each returns (the source a recovery must come from, or None; a detail for the log) --------
    async def gateway_sigkill(self, duration_s: float) -> tuple[str | None, str]:
        code = self.rig.kill_gateway()
        self.rig.start_gateway()
        return None, f"exit {code}"

    async def power_cut(self, duration_s: float) -> tuple[str | None, str]:
        if not self.rig.power_cut():
            return None, "no committed image yet: skipped"
        await asyncio.sleep(duration_s)
        self.rig.start_gateway()
        return None, "ledger restored to its last committed image"

    async def broker_restart(self, duration_s: float) -> tuple[str | None, str]:
        self.rig.broker.stop(kill=True)
        await asyncio.sleep(duration_s)
        self.rig.broker.start()
        return None, ""

    async def receiver_restart(self, duration_s: float) -> tuple[str | None, str]:
        self.rig.kill_receiver()
        await asyncio.sleep(duration_s)
        self.rig.start_receiver()
        return None, ""

    async def full_disk(self, duration_s: float) -> tuple[str | None, str]:
        filler = self.rig.state / "filler"
        written = await asyncio.to_thread(fill, self.rig.state)
        await asyncio.sleep(duration_s)
        filler.unlink()
        return None, f"filled with {written // 1024} KiB"

    async def serial_vanish(self, duration_s: float) -> tuple[str | None, str]:
        assert self.rig.modbus is not None
        self.rig.modbus.wire.unplug()
        await asyncio.sleep(duration_s)
        self.rig.modbus.wire.plug()
        return self.modbus_source, ""

    async def ble_silent(self, duration_s: float) -> tuple[str | None, str]:
        assert self.ble is not None
        flag = silent_flag(self.rig.control, self.rig.ble_address(self.ble))
        flag.touch()
        await asyncio.sleep(duration_s)
        flag.unlink()
        return f"{self.ble.id}-meter", ""

    async def clock_jump(self, duration_s: float) -> tuple[str | None, str]:
        self._jumped = not self._jumped
        offset = CLOCK_JUMP_S if self._jumped else 0.0
        (self.rig.control / "wall_offset").write_text(str(offset))
        return None, f"wall clock {'+' if self._jumped else '-'}{CLOCK_JUMP_S / 3600:g} h"


def schedule(faults: list[str], rounds: int, rng: random.Random, *, gap_s: tuple[float, float],
             duration_s: tuple[float, float]) -> list[tuple[float, str, float]]:
    """`rounds` of every fault in `faults`, shuffled: (pause before it, fault, its duration), all from `rng`."""
    order = [f for _ in range(rounds) for f in faults]
    rng.shuffle(order)
    return [(rng.uniform(*gap_s), f, rng.uniform(*duration_s)) for f in order]
