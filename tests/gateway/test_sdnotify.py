"""sd_notify over a real AF_UNIX datagram socket, as systemd listens for it (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier
from tests.support.slow import scaled


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(scaled(2))
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_watchdog_and_stopping_arrive_as_systemd_reads_them(listener):
    path, sock = listener
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("3 appliances, backlog 0")
    assert received(sock) == {"READY": "1", "STATUS": "3 appliances, backlog 0"}
    assert n.watchdog()
    assert received(sock) == {"WATCHDOG": "1"}
    assert n.status("washer: spin\nsecond line")
    assert received(sock) == {"STATUS": "washer: spin second line"}  # a newline would start a new assignment
    assert n.stopping()
    assert received(sock) == {"STOPPING": "1"}
    n.close()


def test_an_abstract_namespace_socket_is_reached_by_its_at_name():
    name = f"koto-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(scaled(2))
    try:
        assert Notifier(environ={"NOTIFY_SOCKET": "@" + name}).ready()
        assert received(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_outside_systemd_every_call_is_a_no_op():
    n = Notifier(environ={})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.status("x")
    assert n.watchdog_interval_s() is None


def test_a_vanished_socket_is_survived_not_raised(tmp_path: Path):
    n = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert not n.ready()  # ENOENT: logged once at debug, never raised
    assert not n.watchdog()


def test_a_listener_that_stops_reading_never_blocks_the_sender(listener):
    """A full datagram queue (net.unix.max_dgram_qlen) drops the notification; a blocking send would hang the
    daemon's event loop for ever, which is how a bench that stopped reading after READY saw a gateway do nothing."""
    path, sock = listener
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(n.status(f"status {i}") for i in range(200)), daemon=True)
    sender.start()
    sender.join(scaled(10))
    assert not sender.is_alive(), "sd_notify blocked on a full queue"
    assert results[0] and not results[-1]  # the queue took the first ones; the rest found no room and were dropped
    assert received(sock) == {"STATUS": "status 0"}
    assert n.status("after a read")  # room again: delivered
    n.close()


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "20000000"}, 10.0),  # half the timeout, as sd_watchdog_enabled(3) advises
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_the_watchdog_interval_is_half_of_watchdog_usec_for_this_process(env, interval):
    assert Notifier(environ={"NOTIFY_SOCKET": "/nonexistent", **env}).watchdog_interval_s() == interval
