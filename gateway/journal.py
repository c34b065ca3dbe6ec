"""Log records straight to journald, with Koto's own fields, when the service's stderr is the journal.

Under systemd, stderr lines reach the journal too, but flattened: one priority guessed from a prefix, no way to ask
"everything about the washer". journald's native protocol (a datagram of `KEY=value` fields on
/run/systemd/journal/socket, documented as systemd's "Native Journal Protocol") keeps the priority, the logger, the
code location and our fields — KOTO_APPLIANCE, KOTO_SOURCE, KOTO_FUNCTION, KOTO_SEQ, taken from a record's
`extra=` — so `koto logs --appliance washer` is a journal match, not a text search.

Why not `systemd-python`'s JournalHandler: it is a C extension built against libsystemd (a compiler and
libsystemd-dev on every Pi, or Debian's python3-systemd, which a venv does not see on x86). The protocol is small,
stable and public; the encoder below is the whole of it that we need (no file-descriptor passing: a message larger
than a datagram is cut, and says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping

SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "koto"
MAX_MESSAGE = 48 * 1024  # well under the datagram limit journald accepts without fd passing

# Python level -> syslog priority (journalctl -p takes these names).
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

# `log.info(..., extra={"appliance": "washer"})` -> KOTO_APPLIANCE=washer in the journal.
FIELDS = {"appliance": "KOTO_APPLIANCE", "source": "KOTO_SOURCE", "function": "KOTO_FUNCTION", "seq": "KOTO_SEQ"}


def priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return PRIORITY[level]
    return PRIORITY[logging.DEBUG]


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal ($JOURNAL_STREAM names its device and inode): the
    documented way to know that native logging is wanted, and that plain lines would land in the journal anyway."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


def encode(fields: Mapping[str, str]) -> bytes:
    """Fields in the native protocol: `KEY=value\\n`, or for a value holding a newline, `KEY\\n` + its length as a
    little-endian 64-bit integer + the value + `\\n`."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Send each record to journald; if the socket fails, fall back to `fallback` (plain stderr) and say so once."""

    def __init__(self, path: str = SOCKET, *, identifier: str = IDENTIFIER,
                 fallback: logging.Handler | None = None) -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.fallback = fallback
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._failing = False

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        message = self.format(record)
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + f" [cut: {len(message):,} characters]"
        out = {"MESSAGE": message, "PRIORITY": str(priority(record.levelno)),
               "SYSLOG_IDENTIFIER": self.identifier, "LOGGER": record.name,
               "CODE_FILE": record.pathname, "CODE_LINE": str(record.lineno), "CODE_FUNC": record.funcName}
        for attr, field in FIELDS.items():
            value = getattr(record, attr, None)
            if value is not None and value != "":
                out[field] = str(value)
        return out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sock.sendto(encode(self.fields(record)), self.path)
        except OSError as e:
            if self.fallback is None:
                self.handleError(record)
                return
            if not self._failing:
                self._failing = True
                self.fallback.emit(logging.LogRecord(
                    "koto.logs", logging.WARNING, __file__, 0,
                    "cannot write to the journal socket %s (%s); logging plain lines to stderr", (self.path, e), None))
            self.fallback.emit(record)
        else:
            self._failing = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        super().close()
