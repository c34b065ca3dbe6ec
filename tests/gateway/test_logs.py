"""Logs a person can read: journald's native fields (appliance, source, seq) under systemd, repeats held back with a
count, an hourly summary, and `koto logs` reading a real journal file with journalctl."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main as koto
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.journal import JournalHandler, encode, stderr_is_journal
from gateway.logs import RepeatFilter
from gateway.state import StateDir
from gateway.summary import summary_line
from tests.support.slow import scaled

JOURNAL_REMOTE = next((p for p in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
                       if os.path.exists(p)), None)


@pytest.fixture
def journal_socket() -> Iterator[tuple[str, socket.socket]]:
    """A real AF_UNIX datagram socket standing in for /run/systemd/journal/socket (short path: sun_path is 108 B)."""
    folder = tempfile.mkdtemp(prefix="kj", dir="/tmp")
    path = os.path.join(folder, "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()
    shutil.rmtree(folder)


def decode(datagram: bytes) -> dict[str, str]:
    """journald's side of the native protocol (what systemd-journald parses)."""
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        head = datagram[i:nl]
        if b"=" in head:
            k, _, v = head.partition(b"=")
            fields[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", datagram[nl + 1:nl + 9])
            fields[head.decode()] = datagram[nl + 9:nl + 9 + n].decode()
            assert datagram[nl + 9 + n:nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return fields


def test_a_record_reaches_the_journal_with_its_priority_and_the_appliance_it_is_about(
        journal_socket: tuple[str, socket.socket]) -> None:
    path, sock = journal_socket
    handler = JournalHandler(path)
    log = logging.getLogger("koto.test.journal")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("washer/main: source failed (%s)", "timeout", extra={"appliance": "washer", "source": "main"})
        log.error("two\nlines", extra={"seq": 42})
    finally:
        log.removeHandler(handler)
        handler.close()
    first, second = decode(sock.recv(65536)), decode(sock.recv(65536))
    assert first["MESSAGE"] == "washer/main: source failed (timeout)" and first["PRIORITY"] == "4"
    assert first["KOTO_APPLIANCE"] == "washer" and first["KOTO_SOURCE"] == "main"
    assert first["SYSLOG_IDENTIFIER"] == "koto" and first["LOGGER"] == "koto.test.journal"
    assert second["MESSAGE"] == "two\nlines" and second["PRIORITY"] == "3" and second["KOTO_SEQ"] == "42"
    assert "KOTO_APPLIANCE" not in second


def test_when_the_journal_socket_is_gone_lines_go_to_stderr_and_it_is_said_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = logging.StreamHandler(sys.stderr)
    handler = JournalHandler(str(tmp_path / "no-such-socket"), fallback=plain)
    log = logging.getLogger("koto.test.fallback")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("first")
        log.warning("second")
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("cannot write to the journal socket") == 1
    assert "first" in err and "second" in err


def test_systemd_s_journal_stream_is_recognised_only_when_it_is_our_stderr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "stderr", "w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # stderr redirected elsewhere
        assert not stderr_is_journal()
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal()


def test_the_same_warning_over_and_over_is_said_once_per_window_and_then_with_its_count() -> None:
    now = [0.0]
    f = RepeatFilter(300, clock=lambda: now[0])

    def rec(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("koto.sync", level, __file__, 1, msg, args, None)

    ack = "no cloud ack for %.0f s with %d record(s) outstanding; resending from seq %d"
    assert f.filter(rec(ack, 15.0, 3, 101))
    shown = [f.filter(rec(ack, 15.0 * i, 3, 101)) for i in range(2, 12)]
    assert not any(shown)  # the numbers change, the news does not
    assert f.filter(rec("%s: source failed (%s)", "dryer/main", "timeout"))  # another kind: said
    assert f.filter(rec("%s: source failed (%s)", "washer/main", "timeout"))  # another source: said
    assert f.filter(rec("function %s started", "wash", level=logging.INFO))  # events are never held
    assert f.held() == 10
    now[0] = 301.0
    again = rec(ack, 300.0, 3, 101)
    assert f.filter(again)
    assert again.getMessage().endswith("(10 more like this in the last 301 s)")
    assert f.held() == 0


def test_held_back_warnings_are_counted_in_the_hour_summary_so_none_go_unsaid() -> None:
    f = RepeatFilter(300, clock=lambda: 0.0)
    for _ in range(5):
        f.filter(logging.LogRecord("koto.x", logging.WARNING, __file__, 1, "boom", (), None))
    assert f.take_held() == {"boom": 4}
    assert f.take_held() == {}


def test_the_hour_summary_says_records_made_how_far_the_cloud_acked_and_which_sources_are_in_trouble() -> None:
    prev = {"ledger": {"head_seq": 1200}, "sources": {"washer/main": {"errors": {"timeout": 2}}}}
    snap = {"written_wall": 1000.0,
            "ledger": {"head_seq": 1612, "acked_through": 1610, "backlog": 2, "last_ack_wall": 986.0},
            "cloud": {"connected": True},
            "sources": {"washer/main": {"errors": {"timeout": 14}, "age_s": 95.0, "state": "ok"},
                        "kettle/s0": {"errors": {}, "age_s": 1.0, "state": "ok"}}}
    line = summary_line(prev, snap, held=37)
    assert line == ("hour summary: 412 record(s) (seq 1201-1612), cloud acked through 1610 (backlog 2, last ack "
                    "14 s ago); sources in trouble: washer/main (12 errors, last reading 95 s ago); 37 repeated "
                    "warning(s) not shown")
    snap["sources"] = {"kettle/s0": {"errors": {}, "age_s": 1.0, "state": "ok"}}
    snap["cloud"] = None
    assert summary_line(snap, snap) == "hour summary: 0 record(s), local only; every source reading"


def kettle_config(tmp: Path) -> dict[str, object]:
    return {"gateway": {"id": "gw-logs", "state_dir": str(tmp / "state"), "batch_ms": 20},
            "appliance": [{"id": "kettle", "profile": "kettle", "interim_s": 1,
                           "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 20_000}}}]}


async def boil_kettle_logging_to(path: str, tmp_path: Path) -> None:
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    clock, factory = SystemClock(), mock_factory()
    handler = JournalHandler(path)
    root = logging.getLogger("koto")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    gw = Gateway(parse_config(kettle_config(tmp_path), file="koto.toml"), clock=clock,
                 backends={"pin_factory": factory}, sync_enabled=False)
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    boil = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: 2_200_000, 20_000, step_s=0.02))
    try:
        await asyncio.sleep(2.0)
    finally:
        boil.cancel()
        stop.set()
        await run
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def test_koto_logs_finds_the_kettle_s_boil_in_a_real_journal_written_from_the_daemon_s_native_log(
        tmp_path: Path, journal_socket: tuple[str, socket.socket], capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon logs natively; the datagrams become a journal file as journald would store them (trusted fields
    added), and `koto logs` reads it back with the real journalctl, filtered by appliance and level."""
    path, sock = journal_socket
    asyncio.run(boil_kettle_logging_to(path, tmp_path))
    export = bytearray()
    sock.setblocking(False)
    while True:
        try:
            datagram = sock.recv(65536)
        except BlockingIOError:
            break
        export += datagram + encode({"__REALTIME_TIMESTAMP": str(time.time_ns() // 1000),
                                     "_SYSTEMD_UNIT": "koto.service", "_PID": str(os.getpid())}) + b"\n"
    journal = tmp_path / "koto.journal"
    assert JOURNAL_REMOTE is not None, "systemd-journal-remote is missing: `make system-deps` installs it"
    subprocess.run([JOURNAL_REMOTE, "-o", str(journal), "-"], input=bytes(export), check=True, capture_output=True)

    assert koto(["logs", "--file", str(journal), "--appliance", "kettle"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(" kettle " in line for line in out)
    assert any("boil" in line and " INFO " in line for line in out)
    assert koto(["logs", "--file", str(journal), "--level", "warning", "--appliance", "kettle"]) == 0
    assert "no log entries for kettle" in capsys.readouterr().err


def test_koto_run_logs_a_normal_start_at_info(tmp_path: Path) -> None:
    """A person reading the journal sees WARNING only when something is wrong: the start is news, not trouble."""
    StateDir(tmp_path / "state").provision()
    cfg = tmp_path / "koto.toml"
    cfg.write_text(f"""
[gateway]
id = "gw-start"
state_dir = "{tmp_path / 'state'}"

[[appliance]]
id = "washer"
profile = "washing_machine"

[appliance.sources.meter]
driver = "modbus"
model = "sdm120"
port = "{tmp_path / 'ttyNONE'}"
""")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=scaled(20))[1]
    assert first.startswith("INFO koto") and "running" in first, first + rest


FAKE_JOURNALCTL = """#!/bin/sh
# journalctl --follow as `koto logs -f` sees it: one entry, then waiting for more (sleep is what gets the signals)
echo $$ > "$KOTO_TEST_JOURNALCTL_PID"
printf '%s\\n' '{"__REALTIME_TIMESTAMP": "1700000000000000", "MESSAGE": "fill started", "KOTO_APPLIANCE": "washer"}'
exec sleep 600
"""


def _running(pid: int) -> bool:
    """Whether a process still runs (a zombie waiting to be reaped has stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def following(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`koto logs -f` in its own process group (as a terminal's foreground job), reading a fake journalctl found on
    PATH; yields once the first entry is printed, with where the fake journalctl's pid is written."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "journalctl"
    fake.write_text(FAKE_JOURNALCTL)
    fake.chmod(0o755)
    pid_file = tmp_path / "journalctl.pid"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "KOTO_TEST_JOURNALCTL_PID": str(pid_file)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "logs", "-f"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parents[2],
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "fill started" in first and pid_file.exists(), first
        yield proc, pid_file
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=scaled(20))
        if pid_file.exists() and _running(child := int(pid_file.read_text())):
            os.kill(child, signal.SIGKILL)


def test_ctrl_c_ends_koto_logs_follow_quietly(following: tuple[subprocess.Popen[str], Path]) -> None:
    """Ctrl-C at a terminal signals the whole foreground job: koto and its journalctl both get SIGINT."""
    proc, pid_file = following
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=scaled(20))
    assert proc.returncode in (0, 130), (proc.returncode, err)
    assert "failed" not in err and "Traceback" not in err and "aborted" not in err, err
    assert not _running(int(pid_file.read_text()))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stopping_koto_logs_follow_stops_its_journalctl_too(
        following: tuple[subprocess.Popen[str], Path], sig: signal.Signals) -> None:
    """A service manager, `kill` or a closed ssh session signals koto alone: its journalctl must not stay behind."""
    proc, pid_file = following
    os.kill(proc.pid, sig)
    _out, err = proc.communicate(timeout=scaled(20))
    assert proc.returncode in (128 + sig, -sig), (proc.returncode, err)  # ended by it, now or after cleaning up
    assert "Traceback" not in err and "failed" not in err, err
    child = int(pid_file.read_text())
    deadline = time.monotonic() + scaled(5)
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child), "journalctl was left running"
