"""One line an hour in the journal: what the gateway did, how far the cloud has it, and what is in trouble.

Support staff reading a journal weeks later need the shape of each hour without the thousand event lines:
"hour summary: 412 records (seq 1201-1612), cloud acked through 1610 (backlog 2, last ack 14 s ago); sources in
trouble: washer/main (12 errors, last reading 95 s ago); 37 repeated warnings not shown". It is built from the
same snapshot as `koto status`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .logs import REPEATS, RepeatFilter

log = logging.getLogger("koto.summary")

EVERY_S = 3600.0
QUIET_SOURCE_S = 120.0  # a source with no reading for this long is "in trouble" in the summary


def _errors(source: Mapping[str, Any]) -> int:
    return sum(int(v) for v in dict(source.get("errors") or {}).values())


def summary_line(prev: Mapping[str, Any] | None, snap: Mapping[str, Any], *, held: int = 0) -> str:
    """The summary of what changed between two status snapshots (`prev` None: since the start)."""
    led = snap.get("ledger", {})
    head = int(led.get("head_seq", 0))
    before = int((prev or {}).get("ledger", {}).get("head_seq", 0))
    made = head - before
    parts = [f"{made} record(s)" + (f" (seq {before + 1}-{head})" if made > 0 else "")]
    if snap.get("cloud") is None:
        parts.append("local only")
    else:
        last = led.get("last_ack_wall")
        ago = "never" if not last else f"{max(0, float(snap.get('written_wall', 0)) - float(last)):.0f} s ago"
        parts.append(f"cloud acked through {led.get('acked_through', 0)} (backlog {led.get('backlog', 0)}, "
                     f"last ack {ago})")
    trouble = []
    before_src = (prev or {}).get("sources", {})
    for name, s in sorted(snap.get("sources", {}).items()):
        new_errors = _errors(s) - _errors(before_src.get(name, {}))
        age = s.get("age_s")
        quiet = age is None or float(age) > QUIET_SOURCE_S
        if new_errors > 0 or quiet or s.get("state") not in ("ok", "running", None):
            what = [f"{new_errors} errors"] if new_errors > 0 else []
            what.append("no reading yet" if age is None else f"last reading {float(age):.0f} s ago")
            trouble.append(f"{name} ({', '.join(what)})")
    line = "hour summary: " + ", ".join(parts)
    line += "; sources in trouble: " + ", ".join(trouble) if trouble else "; every source reading"
    if held:
        line += f"; {held} repeated warning(s) not shown"
    return line


class HourlySummary:
    """Log `summary_line` every `every_s` (one hour) from the status snapshot `build` (run in a thread)."""

    def __init__(self, build: Callable[[], dict[str, Any]], *, every_s: float = EVERY_S,
                 repeats: RepeatFilter = REPEATS) -> None:
        self.build = build
        self.every_s = every_s
        self.repeats = repeats
        self._prev: dict[str, Any] | None = None

    async def run(self) -> None:
        try:
            self._prev = await asyncio.to_thread(self.build)
        except Exception:  # the summary is for people; the next hour tries again
            self._prev = None
        while True:
            await asyncio.sleep(self.every_s)
            try:
                snap = await asyncio.to_thread(self.build)
            except Exception as e:
                log.warning("cannot build the hour summary: %s", e)
                continue
            held = sum(self.repeats.take_held().values())
            log.info("%s", summary_line(self._prev, snap, held=held))
            self._prev = snap
