"""How Koto logs: plain lines on a terminal, journald's native fields under systemd, and no wall of repeats.

Levels mean something: info is a normal event a person may want to see (a start, a function change, a sync
caught up), warning is something wrong that Koto works around (a source timing out, the cloud away), error is
something someone must act on (the ledger cannot be written). A warning that comes back every few seconds says
nothing new after the first time: `RepeatFilter` lets one through per `window_s` for each kind of message, and the
next one that passes says how many were held back; the hourly summary (`gateway.summary`) reports the rest.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from .journal import JournalHandler, stderr_is_journal

PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"
REPEAT_WINDOW_S = 300.0
_MAX_KINDS = 2_000  # distinct warning kinds remembered; a flood of unique messages cannot grow memory


@dataclass(slots=True)
class _Seen:
    last: float
    held: int = 0


class RepeatFilter(logging.Filter):
    """Let a warning (or worse) through once per `window_s` per kind; count the others.

    A kind is the logger, the level, the message template and its text arguments — so "washer/main: source
    failed (timeout)" and "dryer/main: source failed (timeout)" are two kinds, while "no cloud ack for 15 s" and
    "no cloud ack for 30 s" (numbers differ) are one. Info and debug pass untouched: they are events, not alarms.
    """

    def __init__(self, window_s: float = REPEAT_WINDOW_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[object, ...], _Seen] = {}

    @staticmethod
    def kind(record: logging.LogRecord) -> tuple[object, ...]:
        args = record.args if isinstance(record.args, tuple) else ()
        words = tuple(a for a in args if isinstance(a, str))
        return (record.name, record.levelno, str(record.msg), words,
                getattr(record, "appliance", None), getattr(record, "source", None))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self._clock()
        key = self.kind(record)
        seen = self._seen.get(key)
        if seen is not None and now - seen.last < self.window_s:
            seen.held += 1
            return False
        if seen is not None and seen.held:
            record.msg = f"{record.msg} ({seen.held} more like this in the last {now - seen.last:.0f} s)"
        if len(self._seen) >= _MAX_KINDS:
            self._forget(now)
        self._seen[key] = _Seen(now)
        return True

    def held(self) -> int:
        """How many warnings are held back right now (not yet reported by a later one)."""
        return sum(s.held for s in self._seen.values())

    def take_held(self) -> dict[str, int]:
        """Held-back counts by message template, reset: the hourly summary reports them so none go unsaid."""
        out: dict[str, int] = {}
        for key, seen in self._seen.items():
            if seen.held:
                out[str(key[2])] = out.get(str(key[2]), 0) + seen.held
                seen.held = 0
        return out

    def _forget(self, now: float) -> None:
        for key in [k for k, s in self._seen.items() if now - s.last >= self.window_s and not s.held]:
            del self._seen[key]
        if len(self._seen) >= _MAX_KINDS:  # all recent: forget the oldest half
            for key in sorted(self._seen, key=lambda k: self._seen[k].last)[: _MAX_KINDS // 2]:
                del self._seen[key]


REPEATS = RepeatFilter()


def setup_logging(level: int, *, journal: bool | None = None) -> logging.Handler:
    """Configure the root logger once per process: journald's native protocol when systemd connected stderr to the
    journal (or `journal=True`), plain lines on stderr otherwise; warnings pass through `REPEATS`."""
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler: logging.Handler = plain
    if journal if journal is not None else stderr_is_journal():
        handler = JournalHandler(fallback=plain)
        handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(REPEATS)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler
