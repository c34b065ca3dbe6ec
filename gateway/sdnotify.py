"""Telling systemd how the daemon is doing: READY, WATCHDOG pings, STATUS lines, STOPPING (sd_notify(3)).

The protocol is one datagram of newline-separated `KEY=value` assignments to the AF_UNIX socket named by
`$NOTIFY_SOCKET` (a path, or an abstract-namespace name written with a leading `@`). It is a few lines, so it is
written here rather than taken from the PyPI `sdnotify` package, which is unmaintained. Outside systemd (no
`$NOTIFY_SOCKET`: a developer's shell, the demo, the tests) every call does nothing.

The watchdog: with `WatchdogSec=` in the unit, systemd sets `$WATCHDOG_USEC` (and `$WATCHDOG_PID`) and kills and
restarts the service when no `WATCHDOG=1` arrives within that time. `watchdog_interval_s()` returns half of it, the
interval sd_watchdog_enabled(3) recommends, or None when the watchdog is off or meant for another process.

Sending never raises and never blocks: a notification that cannot be delivered (the socket went away during a
shutdown, or a listener that stopped reading left no room in its queue) must not take the daemon down or stall its
event loop; it is dropped and logged once at debug level.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("koto.sdnotify")


class Notifier:
    """Send sd_notify datagrams to `$NOTIFY_SOCKET` (or to `socket_path`, for tests). Cheap when there is none."""

    def __init__(self, socket_path: str | None = None, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._env = env
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if path:
            # An abstract socket is written "@name"; its address is the name after a NUL byte.
            self._addr = b"\0" + path[1:].encode() if path.startswith("@") else path
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def send(self, **fields: str | int) -> bool:
        """Send one datagram of `KEY=value` lines (e.g. `send(READY=1, STATUS="...")`). True when delivered."""
        if self._addr is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")  # one assignment per line; a STATUS must not break the datagram
            lines.append(f"{key}={text}")
        try:
            if self._sock is None:
                # Non-blocking: a listener that does not read (a stuck manager, a test harness that got its READY
                # and stopped listening) fills its queue (net.unix.max_dgram_qlen, often 10 datagrams), and a
                # blocking sendto would then stop the event loop for good. A datagram that finds no room is dropped.
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                self._sock = socket.socket(socket.AF_UNIX, kind)
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError as e:
            if not self._failed:
                log.debug("could not notify systemd at %r: %s", self._addr, e)
                self._failed = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, STATUS=status) if status else self.send(READY=1)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "") -> bool:
        return self.send(STOPPING=1, STATUS=status) if status else self.send(STOPPING=1)

    def watchdog_interval_s(self) -> float | None:
        """Half of `$WATCHDOG_USEC` when the watchdog is on for this process, else None."""
        usec = self._env.get("WATCHDOG_USEC", "")
        pid = self._env.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return None
        return int(usec) / 2_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
