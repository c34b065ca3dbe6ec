"""`koto run` tells systemd how it is (issue 10, item 4), over a real AF_UNIX datagram socket set as $NOTIFY_SOCKET:
READY once the ledger is open and the sources started, WATCHDOG pings while the ledger writer is healthy, and none
while a commit is stuck (the test holds SQLite's write lock on the ledger, so the daemon's own commit blocks in its
thread), a STATUS line, STOPPING at the stop."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metering.ledger.lease import reader_lease
from tests.gateway.test_supervise import Child, appliance, lifecycle, write_config
from tests.support.ledger_checks import ledger_events
from tests.support.slow import scaled


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    folder = tempfile.mkdtemp(prefix="koto-n")  # short: an AF_UNIX path has at most 107 bytes
    path = f"{folder}/notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(folder)


def receive(sock: socket.socket, timeout_s: float) -> dict[str, str] | None:
    sock.settimeout(timeout_s)
    try:
        data = sock.recv(4096).decode()
    except TimeoutError:
        return None
    return dict(line.split("=", 1) for line in data.split("\n"))


def next_with(sock: socket.socket, key: str, limit_s: float = 20.0) -> dict[str, str]:
    end = time.monotonic() + scaled(limit_s)
    while time.monotonic() < end:
        msg = receive(sock, max(0.01, end - time.monotonic()))
        if msg is not None and key in msg:
            return msg
    raise AssertionError(f"no {key} within {limit_s} s")


def test_ready_watchdog_status_stopping_and_no_pings_while_the_writer_is_stuck(
        tmp_path: Path, notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000, every_s=0.05))
    child = Child(cfg, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "RUNTIME_DIRECTORY": str(tmp_path)})
    try:
        ready = receive(sock, scaled(20))
        assert ready is not None and ready["READY"] == "1", ready
        # By READY the ledger is open with the start record committed, and the source has been opened.
        assert lifecycle(ledger_events(tmp_path / "state" / "ledger.db", "sup-gw")) == ["start"]
        assert "flaky:open:k" in child.text()
        assert ready["STATUS"].startswith("1 appliance metering")

        for _ in range(3):
            next_with(sock, "WATCHDOG")
        status = next_with(sock, "STATUS")
        assert status["STATUS"].startswith("1 appliance metering")

        lease = reader_lease(tmp_path / "state" / "ledger.db")  # the daemon lends its ledger within a second
        db = sqlite3.connect(tmp_path / "state" / "ledger.db", isolation_level=None, timeout=10)
        db.execute("BEGIN EXCLUSIVE")  # the daemon's next commit now waits in its thread
        try:
            last_ping = time.monotonic()
            end = last_ping + 9.0  # before SQLite's busy timeout (10 s) fails that commit
            silent = False
            while time.monotonic() < end:
                msg = receive(sock, 0.1)
                if msg is not None and "WATCHDOG" in msg:
                    last_ping = time.monotonic()
                if time.monotonic() - last_ping >= 3.0:  # six ping intervals without one
                    silent = True
                    break
            assert silent, "the watchdog kept being pinged while the ledger writer was stuck"
            assert "not telling systemd's watchdog" in child.text()
        finally:
            db.execute("ROLLBACK")
            db.close()
            lease.release()
        next_with(sock, "WATCHDOG")  # the commit went through: pings again
        assert child.proc.poll() is None

        child.proc.send_signal(15)
        assert next_with(sock, "STOPPING")["STOPPING"] == "1"
        assert child.wait() == 0
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    assert lifecycle(child.events()) == ["start", "stop"]


def test_a_blocked_event_loop_stops_the_pings(tmp_path: Path, notify_socket: tuple[str, socket.socket]) -> None:
    """A driver blocks the event loop in synchronous code: the pings, sent from the loop, stop by themselves, so
    systemd kills and restarts the daemon after WatchdogSec."""
    path, sock = notify_socket
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000, block_loop_after=30), stop_timeout_s=1)
    child = Child(cfg, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "RUNTIME_DIRECTORY": str(tmp_path)})
    try:
        next_with(sock, "READY")
        next_with(sock, "WATCHDOG")
        child.wait_for("flaky:blocking:k")
        for _ in range(100):  # what was queued before the block (read at once; pings come every 0.5 s)
            if receive(sock, 0.2) is None:
                break
        assert receive(sock, 3.0) is None, "the watchdog kept being pinged while the event loop was blocked"
        assert child.proc.poll() is None  # alive, and silent: systemd's watchdog is what ends this
    finally:
        child.proc.kill()
        child.proc.wait()
