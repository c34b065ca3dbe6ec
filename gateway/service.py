"""`koto run` under systemd (`Type=notify`, `WatchdogSec=`): READY, WATCHDOG pings, a STATUS line, STOPPING.

- READY=1 once the ledger is open (the start record is committed, or held when the disk is full) and every source's
  task has started: `systemctl start koto` returns then, and units ordered after Koto start then.
- WATCHDOG=1 every half of `$WATCHDOG_USEC`, sent from the event loop, and only while the ledger writer is healthy:
  no commit has been running for longer than that half (`Gateway.writer_stalled_s`). A hung event loop sends nothing
  by itself; a commit stuck in its thread (a wedged SD card, a lock someone holds) stops the pings on purpose, and
  systemd kills and restarts the daemon after `WatchdogSec=`. A full disk is not a stall: the commit fails at once,
  the records are held in memory and retried, and restarting would not help, so the pings go on and STATUS says it.
- STATUS= every few seconds: "2 appliances metering, backlog 0, last ack 12 s ago", plus what is wrong ("ledger
  not writable: 14 records held in memory", "source k failing"), for `systemctl status koto`. It is built in a
  worker thread (it reads the ledger, which a stuck writer may hold); a build still running is not started twice.
- STOPPING=1 when the stop begins (with the reason when a failure caused it).

Outside systemd (no `$NOTIFY_SOCKET`) every message is skipped by `Notifier` and only the writer check runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .sdnotify import Notifier

if TYPE_CHECKING:
    from .daemon import Gateway

log = logging.getLogger("koto.gateway")

STATUS_EVERY_S = 5.0
MIN_STALL_S = 1.0  # a commit is never called stuck before this, however short the watchdog


def ago(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    return f"{s // 3600} h ago"


def status_line(gw: Gateway) -> str:
    """What `systemctl status koto` shows on its Status: line (reads the ledger: call it from a worker thread)."""
    n = len(gw.meters)
    head, _ = gw.ledger.head()
    backlog = head - gw.ledger.acked_through()
    parts = [f"{n} appliance{'s' if n != 1 else ''} metering"]
    if gw.sync is not None:
        last = gw.ledger.last_ack()
        parts.append(f"backlog {backlog}")
        parts.append(f"last ack {ago(gw.clock.now().wall - last[1])}" if last else "no ack yet")
    held = gw.held_drafts()
    if held:
        parts.append(f"ledger not writable: {len(held)} records held in memory")
    failing = sorted(name for name, st in gw.sources.items() if st.last_error and st.source is not None
                     and st.source.health.state != "ok")
    if failing:
        parts.append(f"source{'s' if len(failing) > 1 else ''} {', '.join(failing)} failing")
    return ", ".join(parts)


class ServiceNotify:
    """The task that talks to systemd for a running `Gateway` (see the module docstring)."""

    def __init__(self, gw: Gateway, notifier: Notifier) -> None:
        self.gw = gw
        self.notifier = notifier
        self.interval_s = notifier.watchdog_interval_s()
        self.stall_limit_s = max(self.interval_s or 0.0, MIN_STALL_S) if self.interval_s else None
        self._status: asyncio.Future[str] | None = None
        self._withheld = False

    async def run(self) -> None:
        try:
            first = await asyncio.to_thread(status_line, self.gw)
        except Exception as e:  # a status line is for people: it never keeps READY back or stops the daemon
            log.debug("cannot build the status line: %s", e)
            first = ""
        self.notifier.ready(first)
        tick = min(self.interval_s or STATUS_EVERY_S, STATUS_EVERY_S)
        loop = asyncio.get_running_loop()
        next_status = loop.time() + STATUS_EVERY_S
        while True:
            if self.interval_s is not None and self.healthy():
                self.notifier.watchdog()
            if loop.time() >= next_status:
                next_status = loop.time() + STATUS_EVERY_S
                self._refresh_status()
            await asyncio.sleep(tick)

    def healthy(self) -> bool:
        """False while a commit has been running for longer than half the watchdog: the pings stop (said once)."""
        stalled = self.gw.writer_stalled_s()
        ok = self.stall_limit_s is None or stalled <= self.stall_limit_s
        if not ok and not self._withheld:
            log.error("ledger: a commit has been running for %.0f s; not telling systemd's watchdog that all is well, "
                      "so it restarts Koto if the commit does not end", stalled)
        elif ok and self._withheld:
            log.warning("ledger: the stuck commit ended; the watchdog is told again that all is well")
        self._withheld = not ok
        return ok

    def _refresh_status(self) -> None:
        if self._status is not None and not self._status.done():
            return  # the last one is still reading the ledger (a stuck writer holds it): do not pile up threads
        self._status = asyncio.ensure_future(asyncio.to_thread(status_line, self.gw))
        self._status.add_done_callback(self._send_status)

    def _send_status(self, task: asyncio.Future[str]) -> None:
        if task.cancelled():
            return
        if (err := task.exception()) is not None:
            log.debug("cannot build the status line: %s", err)
            return
        self.notifier.status(task.result())

    def stopping(self, reason: str = "") -> None:
        self.notifier.stopping(f"stopping: {reason}" if reason else "stopping")
