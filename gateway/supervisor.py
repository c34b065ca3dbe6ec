"""Supervision of `koto run`'s tasks: a failing source is restarted, anything else ends in a clean stop with one
plain line, and a stop always ends within a deadline.

Why this is its own module: the daemon used to run its tasks bare in one `asyncio.TaskGroup`. One error let through
(a source's config error found only when it opened) aborted the group; the group then waited for every other task
to finish cancelling, and a task that swallowed its cancellation (Python 3.11's `wait_for` inside pymodbus can) kept
it waiting for ever. The process logged "running" and then nothing, and ignored SIGTERM, because nothing waited for
the stop event any more (issue 10). So here:

- every task runs inside a guard (`Supervisor.guard`, `Supervisor.run_source`): no exception ever reaches the task
  group. A source's error restarts that source with capped, jittered backoff (`koto.net.Backoff`); an error that a
  restart cannot mend (a source's configuration, a ledger file deleted under us, a bug in the meter loop) records
  one `DaemonFailed`, logs it once, and sets the stop event: the normal, graceful stop runs, and `koto run` exits
  with that one line;
- a source's open and close are bounded (`OPEN_LIMIT_S`, `CLOSE_LIMIT_S`): a driver that never returns from its
  close is left behind with a warning instead of holding its task, and its restart, for ever;
- `StopDeadline` is armed by the first stop request (SIGTERM, Ctrl-C, or a failure). It is a thread, independent of
  the event loop: if the graceful path (close segments, write the stop record, let the cloud ack) has not ended the
  process within `stop_timeout_s` (10 s by default, half of the unit's `TimeoutStopSec=20`), it logs one line and
  exits at once. What the ledger has committed is on disk (every commit is fsynced, as a kill -9 test shows); what
  was not committed is what a power cut would lose, and a register meter's next reading reconciles it;
- `StopSignals` hears SIGTERM and SIGINT on a thread of its own, so a blocked event loop cannot keep a stop from
  arming the deadline;
- `stop_tasks` cancels the daemon's tasks at a stop and asks again any that swallowed the cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from drivers.base import Source
from drivers.errors import DriverConfigError
from koto.net import Backoff
from koto.reading import Reading
from metering.errors import LedgerGone

from .errors import ConfigError, DaemonFailed

log = logging.getLogger("koto.gateway")

OPEN_LIMIT_S = 60.0  # a source's open (a serial port, a BLE connection) that takes longer is a failure: restart
CLOSE_LIMIT_S = 5.0  # a source's close that takes longer is abandoned (its task moves on)
EXIT_DEADLINE = 1  # the exit status when the stop deadline cut the graceful path short
SOURCE_BACKOFF = (0.5, 30.0)  # a failing source is tried again at least every 30 s (an unplugged adapter)

# Errors a restart cannot mend: the daemon stops with one line instead of retrying for ever.
FATAL = (ConfigError, DriverConfigError, LedgerGone)


@dataclass
class SourceState:
    """The supervisor's view of one source: the driver's own health plus restarts."""

    name: str
    appliance: str
    driver: str
    source: Source | None = None
    restarts: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        h = self.source.health.as_dict() if self.source else {"state": "starting"}
        return {"appliance": self.appliance, "driver": self.driver, "restarts": self.restarts,
                "last_error": self.last_error, **h}


class StopDeadline:
    """Once `start()`ed, ends the process after `seconds` unless it has ended by itself.

    A daemon thread with a timer, so it fires whatever the event loop is doing (waiting for a task that does not
    cancel, `asyncio.run` waiting for a worker thread stuck in a commit). `exit` is `os._exit`: no cleanup runs, as
    after a kill -9, which the ledger is built to survive.
    """

    def __init__(self, seconds: float, *, exit: Callable[[int], Any] = os._exit) -> None:
        self.seconds = seconds
        self._exit = exit
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    @property
    def started(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        """Arm the deadline (idempotent: the first stop request counts)."""
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.name = "koto-stop-deadline"
            self._timer.daemon = True
            self._timer.start()

    def finished(self, *, code: int = 0, last_words: str = "", grace_s: float = 1.0) -> None:
        """The graceful stop is over (the ledger is closed): nothing is left to protect, so whatever still holds the
        process (a source's close left behind, a worker thread) may hold it only `grace_s` more; then `last_words`
        (the error `koto run` would print) go to stderr and the process exits with `code`."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(grace_s, self._leave, (code, last_words))
            self._timer.name = "koto-stop-deadline"
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        log.error("the stop did not finish within %g s (a source, the cloud or the disk did not let go); exiting now: "
                  "what the ledger committed is kept, a register meter's next reading accounts for the rest",
                  self.seconds)
        self._flush()
        self._exit(EXIT_DEADLINE)

    def _leave(self, code: int, last_words: str) -> None:
        log.warning("stopped; something left behind (a source that would not close) held the process, exiting")
        if last_words:
            print(last_words, file=sys.stderr, flush=True)
        self._flush()
        self._exit(code)

    @staticmethod
    def _flush() -> None:
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


class StopSignals:
    """SIGTERM and SIGINT taken by a thread of their own (`sigwait`), not by the event loop.

    A handler the loop runs (`loop.add_signal_handler`) waits for the loop: when the loop is blocked (a commit
    waiting out SQLite's busy timeout on its thread, a driver stuck in synchronous code), the stop deadline would not
    even be armed, and a second Ctrl-C would not be heard. Here the signals are blocked in the main thread (and so in
    every thread started after, which inherits the mask) and one thread waits for them: the first calls `on_first`
    (arm the deadline, wake the loop with `call_soon_threadsafe`), any later one `on_again`. `close()` restores the
    mask for an in-process caller. A child process would inherit the mask too (SIGTERM blocked): `koto run` starts
    none, and one that ever does must unblock them in the child (`pthread_sigmask` in a `preexec_fn`).
    """

    def __init__(self, on_first: Callable[[signal.Signals], None], on_again: Callable[[signal.Signals], None]) -> None:
        self.on_first = on_first
        self.on_again = on_again
        self._thread: threading.Thread | None = None
        self._closed = False
        self._old_mask: set[int | signal.Signals] = set()

    def install(self) -> None:
        self._old_mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS))
        self._thread = threading.Thread(target=self._wait, name="koto-signals", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        heard = False
        while True:
            sig = signal.Signals(signal.sigwait(STOP_SIGNALS))
            if self._closed:
                return
            if heard:
                self.on_again(sig)
            else:
                heard = True
                self.on_first(sig)

    def close(self) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        if self._thread.is_alive() and self._thread.ident is not None:
            signal.pthread_kill(self._thread.ident, signal.SIGINT)  # wakes its sigwait; it sees `_closed` and ends
            self._thread.join(1.0)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)


class Supervisor:
    """Runs the daemon's tasks so that none of them can abort the others (see the module docstring)."""

    def __init__(self, stop: asyncio.Event, *, deadline: StopDeadline | None = None) -> None:
        self.stop = stop
        self.deadline = deadline
        self.failure: DaemonFailed | None = None
        self._abandoned: set[asyncio.Future[Any]] = set()  # closes that overran: referenced until they end

    def fail(self, task: str, error: BaseException) -> None:
        """A failure a restart cannot mend: remember the first, log it once, and ask for the graceful stop."""
        if self.failure is None:
            self.failure = DaemonFailed(task, error)
            log.error("%s; stopping", self.failure)
        self.stopping()

    def stopping(self) -> None:
        """A stop was asked for (or is under way): arm the deadline and wake whoever waits for the stop."""
        if self.deadline is not None:
            self.deadline.start()
        self.stop.set()

    async def guard(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run a task that should run until cancelled; its error becomes a clean stop, never a task-group abort."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the point: nothing reaches the task group
            self.fail(name, e)
        else:
            if not self.stop.is_set():
                self.fail(name, RuntimeError("the task ended by itself"))

    async def run_source(self, st: SourceState, build: Callable[[], Source],
                         put: Callable[[Reading], Awaitable[None]]) -> None:
        """Run one source for ever: on a failure log once in plain words, back off (capped, jittered), restart.

        The backoff starts again from its shortest wait once the source has delivered a reading, so a source that
        opens and then fails at once is not retried twice a second for ever."""
        backoff = Backoff(*SOURCE_BACKOFF)
        while True:
            opening = True
            try:
                src = build()
                st.source = src
                async with asyncio.timeout(OPEN_LIMIT_S):
                    await src.__aenter__()
                opening = False
                try:
                    async for reading in src:
                        backoff.reset()
                        await put(reading)
                    st.last_error = "the source ended"
                finally:
                    await self._close(st, src)
            except asyncio.CancelledError:
                raise
            except FATAL as e:
                st.last_error = str(e)
                self.fail(f"source {st.name}", e)
                return
            except Exception as e:  # a driver failure must never take the gateway down
                st.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if opening and isinstance(e, TimeoutError):
                    st.last_error = f"did not open within {OPEN_LIMIT_S:g} s"
                wait = backoff.next()
                log.warning("%s: source failed (%s); restarting in %.1f s", st.name, st.last_error, wait,
                            extra={"source": st.name, "appliance": st.appliance})
            else:
                wait = backoff.next()
            st.restarts += 1
            await asyncio.sleep(wait)

    async def _close(self, st: SourceState, src: Source) -> None:
        """Close a source within `CLOSE_LIMIT_S`, or leave its close running and move on (said once, as a warning).

        The close runs as its own task, so a cancellation of ours (a stop) does not interrupt it half-way."""
        closing = asyncio.ensure_future(src.__aexit__(None, None, None))
        self._abandoned.add(closing)  # referenced until it ends, even if we stop waiting for it
        closing.add_done_callback(self._abandoned.discard)
        done, _ = await asyncio.wait({closing}, timeout=CLOSE_LIMIT_S)
        if not done:
            log.warning("%s: the source did not close within %g s; left behind (its port or pins may stay busy "
                        "until the gateway restarts)", st.name, CLOSE_LIMIT_S)
            closing.cancel()
        elif not closing.cancelled() and (err := closing.exception()) is not None:
            log.warning("%s: closing the source failed (%s)", st.name, err)


async def stop_tasks(tasks: list[asyncio.Task[Any]], *, every_s: float = 1.0) -> None:
    """Cancel `tasks` and wait until they have ended, cancelling again any that is still running after `every_s`.

    One cancel is not always enough: Python 3.11's `asyncio.wait_for` (used inside libraries such as pymodbus) can
    swallow a cancellation that arrives as its inner call completes, and the task then runs on — a stop would hang.
    `asyncio.wait` never raises the tasks' own exceptions, and our own cancellation still reaches us.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
        for t in pending:
            log.warning("task %s did not stop when asked; asking again", t.get_name())
