"""Drivers that misbehave the way real ones have, for the supervision tests (`tests/support/koto_child.py` registers
them in a `koto run` child process; nothing in Koto itself knows them).

`flaky` is a power source (a steady `watts`, a reading every `every_s`) that can be told to:
- `fail_opens = N`: raise OSError at its first N opens (an adapter not plugged in yet);
- `fail_after = N`: raise after N readings (a driver bug, a device that went away);
- `config_error_at_open = true`: raise a `DriverConfigError` when it opens, as the Modbus driver did when a second
  meter on one port asked for other line settings: an error the config loader could not know and a restart cannot
  mend;
- `hang_close = true`: never return from its close, swallowing every cancellation (Python 3.11's `wait_for`, inside
  pymodbus, swallows one: the hang of issue 10);
- `hang_open = true`: never return from its open;
- `block_loop_after = N`: after N readings, block the whole event loop in synchronous code (a driver calling a
  blocking library function): nothing on the loop runs any more.

Each open, failure and close is printed to stderr as `flaky:EVENT:NAME` so a test can count them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Self

from drivers.base import EnergyKind, Source
from drivers.errors import DriverConfigError
from koto.clock import Clock
from koto.reading import Quantity, Reading

KEYS = {"driver", "watts", "every_s", "fail_opens", "fail_after", "config_error_at_open", "hang_close", "hang_open",
        "block_loop_after"}
_OPENS: dict[str, int] = {}  # per source name, across restarts (a new object is built for each)


def say(event: str, name: str) -> None:
    print(f"flaky:{event}:{name}", file=sys.stderr, flush=True)


class FlakySource(Source):
    driver: ClassVar[str] = "flaky"
    energy_kind: ClassVar[EnergyKind] = "power"

    def __init__(self, name: str, *, clock: Clock, cfg: Mapping[str, Any]) -> None:
        super().__init__(name, clock=clock)
        self.cfg = cfg

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], *, clock: Clock, **backends: Any) -> Self:
        extra = set(cfg) - KEYS
        if extra:
            raise DriverConfigError(name, sorted(extra)[0], f"unknown key; allowed: {', '.join(sorted(KEYS))}")
        return cls(name, clock=clock, cfg=cfg)

    async def _open(self) -> None:
        n = _OPENS[self.name] = _OPENS.get(self.name, 0) + 1
        say("open", self.name)
        if self.cfg.get("hang_open"):
            await asyncio.Event().wait()
        if self.cfg.get("config_error_at_open"):
            raise DriverConfigError(self.name, "baud", "/dev/ttyX is already used at 9600 baud; every meter on one "
                                    "bus must use the same line settings, not 2400 baud")
        if n <= int(self.cfg.get("fail_opens", 0)):
            raise OSError(2, "No such file or directory", f"/dev/flaky-{self.name}")

    async def _close(self) -> None:
        say("close", self.name)
        if self.cfg.get("hang_close"):
            while True:  # every cancellation swallowed: worse than asyncio.wait_for in 3.11, which swallows one
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()

    async def _readings(self) -> AsyncIterator[Reading]:
        every = float(self.cfg.get("every_s", 0.1))
        fail_after = int(self.cfg.get("fail_after", 0))
        n = 0
        while True:
            await asyncio.sleep(every)
            now = self.clock.now()
            yield self._emit(Reading(self.name, now.mono_ns, now.wall, now.boot_id, Quantity.POWER_MW,
                                     int(self.cfg.get("watts", 100)) * 1000, wall_synced=now.synced))
            n += 1
            if n == int(self.cfg.get("block_loop_after", 0)):
                say("blocking", self.name)
                time.sleep(3600)  # noqa: ASYNC251 - the point: a driver that blocks the loop
            if fail_after and n >= fail_after:
                say("fail", self.name)
                raise RuntimeError(f"{self.name} went away after {n} readings")
