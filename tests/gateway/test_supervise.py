"""`koto run` never hangs and never half-runs (issue 10, item 3), shown on a real `koto run` child process.

The exact case of the issue (two Modbus meters on one port with different line settings) is refused at load; the
run-time variants the config cannot know use the misbehaving drivers of `tests/support/bad_drivers.py`: a source
that fails at open and after a while is restarted while the others meter on; a source whose configuration turns out
unusable when it opens stops the daemon with one line; a close that never returns and a ledger writer that cannot
commit do not keep the process past its stop deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.cli import main as koto
from metering.ledger.lease import reader_lease
from tests.support.ledger_checks import assert_contiguous, ledger_events
from tests.support.paths import REPO
from tests.support.slow import scaled

WAIT_S = 30.0  # far above any stop deadline used here: the tests fail on a hang, they do not time anything


def write_config(tmp: Path, body: str, *, stop_timeout_s: float = 3) -> Path:
    cfg = tmp / "koto.toml"
    cfg.write_text(f"""
[gateway]
id = "sup-gw"
state_dir = "{tmp / 'state'}"
batch_ms = 50
checkpoint_s = 0.2
hold_s = 0  # every batch committed at once: these tests watch each commit (READY after the start record)
stop_timeout_s = {stop_timeout_s}
{body}""")
    return cfg


def appliance(aid: str, source: str, **keys: object) -> str:
    lines = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in keys.items())
    return f"""
[[appliance]]
id = "{aid}"
profile = "kettle"
[appliance.sources.{source}]
driver = "flaky"
{lines}
"""


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test() -> Iterator[None]:
    """A test that fails before it stops its `koto run` would leave it running for ever (and holding a CPU share
    of every later test and bench): kill what is left."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Child:
    """`koto -v run` (with the test drivers registered) as a child process; its stderr goes to a file."""

    def __init__(self, cfg: Path, env: dict[str, str] | None = None) -> None:
        self.log = cfg.parent / "koto.log"
        self.cfg = cfg
        assert koto(["provision", "--state-dir", str(cfg.parent / "state")]) == 0
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.koto_child", "-v", "run", "--config", str(cfg)],
                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        _started.append(self.proc)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, count: int = 1) -> None:
        end = time.monotonic() + scaled(WAIT_S)
        while self.text().count(needle) < count:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"{needle!r} x{count} never came:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def wait(self) -> int:
        try:
            return self.proc.wait(scaled(WAIT_S))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"koto run hung:\n{self.text()[-3000:]}") from None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def events(self) -> list[dict[str, object]]:
        evs = ledger_events(self.cfg.parent / "state" / "ledger.db", "sup-gw")
        assert_contiguous(evs)
        return evs


def lifecycle(events: list[dict[str, object]]) -> list[str]:
    return [e["data"]["event"] for e in events if e["type"] == "io.koto.lifecycle.v1"]  # type: ignore[index]


@pytest.mark.parametrize("module", ["gateway.entry", "gateway.cli"])  # the console script's light path, and click's
async def test_the_issues_two_meters_on_one_port_with_different_line_settings_exit_at_load_with_one_line(
        tmp_path: Path, module: str) -> None:
    """An SDM120 (2400 baud by default) and an SDM630 at 9600 on one RS-485 pty: `koto run` used to log "running"
    and hang for ever. Now it never starts: exit 2, one line naming the file and the key."""
    async with ModbusSimulator([SimMeter("sdm120", 1), SimMeter("sdm630", 2)]) as bus:
        cfg = tmp_path / "koto.toml"
        cfg.write_text(f"""
[gateway]
id = "sup-gw"
state_dir = "{tmp_path / 'state'}"

[[appliance]]
id = "washer"
profile = "washing_machine"
[appliance.sources.washer]
driver = "modbus"
model = "sdm630"
port = "{bus.port}"
address = 2
baud = 9600

[[appliance]]
id = "dryer"
profile = "washing_machine"
[appliance.sources.dryer]
driver = "modbus"
model = "sdm120"
port = "{bus.port}"
address = 1
""")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "run", "--config", str(cfg), cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        _, err = await asyncio.wait_for(proc.communicate(), scaled(WAIT_S))
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"koto: {cfg}: appliance.dryer.sources.dryer.baud: ")
    assert b"running" not in err


def test_a_source_failing_at_open_and_after_a_while_is_restarted_and_the_others_meter_on(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000, fail_opens=2, fail_after=5)
                       + appliance("dryer", "d", watts=300))
    child = Child(cfg)
    child.wait_for("flaky:fail:k", 2)  # opened after two failed opens, then failed twice after five readings
    assert child.stop() == 0
    text = child.text()
    # Each kind of failure is said once: its repeats within 5 minutes are held back (gateway/logs.py RepeatFilter).
    assert text.count("k: source failed (FileNotFoundError") == 1
    assert text.count("k: source failed (RuntimeError: k went away after 5 readings)") == 1
    assert text.count("flaky:open:d") == 1  # the healthy source was never touched
    assert text.count("flaky:close:k") == text.count("flaky:open:k") - 2  # every source that opened was closed
    events = child.events()
    assert lifecycle(events) == ["start", "stop"]
    assert {e["data"]["appliance"] for e in events if e["type"] == "io.koto.usage.v1"} >= {"kettle", "dryer"}  # type: ignore[index]
    assert koto(["verify", "--state-dir", str(cfg.parent / "state")]) == 0


def test_a_source_whose_config_fails_when_it_opens_stops_the_daemon_cleanly_with_one_line(tmp_path: Path) -> None:
    """What the issue's Modbus conflict did at run time: now no task-group abort, no hang. The graceful stop runs
    (the other appliance's segment is closed, the stop record written) and `koto run` exits 2 with one line."""
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000)
                       + appliance("dryer", "d", config_error_at_open=True))
    child = Child(cfg)
    assert child.wait() == 2
    text = child.text()
    last = text.strip().splitlines()[-1]
    assert last.startswith("koto: source 'd': baud: ") and "same line settings" in last
    assert text.count("koto: ") == 1
    assert "Traceback" not in text
    assert lifecycle(child.events()) == ["start", "stop"]


def test_sources_that_never_return_from_their_open_or_close_do_not_hold_the_stop(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000, hang_close=True)
                       + appliance("dryer", "d", hang_open=True), stop_timeout_s=60)
    child = Child(cfg)
    child.wait_for("kettle: ")  # metering
    child.wait_for("flaky:open:d")  # and the dryer's source stuck in its open
    assert child.stop() == 0  # well before the 60 s deadline: the close is left behind once the ledger is closed
    text = child.text()
    assert "left behind" in text and "gateway stopped" in text
    assert lifecycle(child.events()) == ["start", "stop"]


def test_a_stop_that_cannot_commit_ends_at_the_deadline_with_what_is_committed(tmp_path: Path) -> None:
    """The test holds SQLite's write lock on the ledger: every commit waits 10 s (busy_timeout) and fails, so the
    graceful path would take 20 s and more. The deadline (2 s) ends the process with one line; the ledger keeps
    every record committed before, and verifies."""
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000), stop_timeout_s=2)
    child = Child(cfg)
    child.wait_for("kettle: ")
    lease = reader_lease(tmp_path / "state" / "ledger.db")  # the daemon lends its ledger within a second
    db = sqlite3.connect(tmp_path / "state" / "ledger.db", isolation_level=None, timeout=10)
    db.execute("BEGIN EXCLUSIVE")
    try:
        code = child.stop()
    finally:
        db.execute("ROLLBACK")
        db.close()
        lease.release()
    assert code == 1
    assert "the stop did not finish within 2 s" in child.text()
    assert lifecycle(child.events()) == ["start"]  # the stop record could not be committed; nothing half-written
    assert koto(["verify", "--state-dir", str(cfg.parent / "state")]) == 0


def test_a_ledger_deleted_under_the_running_daemon_stops_it_with_one_line_and_no_second_chain(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000))
    child = Child(cfg)
    child.wait_for("kettle: ")
    db = tmp_path / "state" / "ledger.db"
    os.unlink(db)
    assert child.wait() == 2
    text = child.text()
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"koto: the ledger {db} was deleted or replaced while Koto ran (the file was deleted); "
                           f"what it held is saved as {db}.rescued; nothing more was written to it")
    assert "Traceback" not in text
    assert not db.exists()  # nothing was written at the path: no second chain
    again = subprocess.run([sys.executable, "-m", "tests.support.koto_child", "run", "--config", str(cfg)],
                           cwd=REPO, capture_output=True, text=True, timeout=scaled(WAIT_S),
                           env={**os.environ, "PYTHONPATH": str(REPO)})  # systemd's Restart=always
    assert again.returncode == 2
    assert again.stderr.startswith(f"koto: {db}: {db}.rescued holds this ledger") and again.stderr.count("\n") == 1
    assert not db.exists()
    os.replace(f"{db}.rescued", db)  # what an operator does to restore it
    assert lifecycle(child.events()) == ["start"]
    assert koto(["verify", "--state-dir", str(db.parent)]) == 0


def test_a_second_stop_signal_exits_at_once(tmp_path: Path) -> None:
    """An impatient Ctrl-C during a stop that cannot finish (the ledger's write lock is held; the deadline is 60 s)."""
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000), stop_timeout_s=60)
    child = Child(cfg)
    child.wait_for("kettle: ")
    lease = reader_lease(tmp_path / "state" / "ledger.db")  # the daemon lends its ledger within a second
    db = sqlite3.connect(tmp_path / "state" / "ledger.db", isolation_level=None, timeout=10)
    db.execute("BEGIN EXCLUSIVE")
    try:
        child.proc.send_signal(signal.SIGTERM)
        child.wait_for("SIGTERM: stopping")
        child.proc.send_signal(signal.SIGINT)
        code = child.wait()
    finally:
        db.execute("ROLLBACK")
        db.close()
        lease.release()
    assert code == 1
    assert "SIGINT again: exiting now" in child.text()
    assert koto(["verify", "--state-dir", str(tmp_path / "state")]) == 0


def test_sigterm_ends_the_process_at_the_deadline_even_when_the_event_loop_is_blocked(tmp_path: Path) -> None:
    """A driver blocks the event loop in synchronous code: no handler on the loop could run. The signals are heard on
    a thread of their own, so SIGTERM still arms the deadline and the process ends with one line."""
    cfg = write_config(tmp_path, appliance("kettle", "k", watts=2000, block_loop_after=10), stop_timeout_s=1)
    child = Child(cfg)
    child.wait_for("flaky:blocking:k")
    assert child.stop() == 1
    text = child.text()
    assert "SIGTERM: stopping" in text and "the stop did not finish within 1 s" in text
    assert koto(["verify", "--state-dir", str(tmp_path / "state")]) == 0
