"""The running daemon owns its ledger (SQLite's exclusive locking: no `-shm` file on the SD card) and lends it to a
reader in another process within a second: `koto usage` and `koto verify` work while it records, and it takes the
file back when they are done (issue 10: the -shm file was ~40 % of the gateway's SD-card writes)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.gpio.sim import mock_factory, run_pulse_train
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.state import StateDir
from koto.clock import SystemClock
from tests.support.cloudpeer import until
from tests.support.ledger_checks import assert_contiguous, ledger_events
from tests.support.paths import REPO


def koto_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """A `koto` command in a process of its own, as support staff would run it beside the service."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)


def shm_exists(db: Path) -> bool:
    return Path(f"{db}-shm").exists()


async def test_a_reader_in_another_process_borrows_the_ledger_while_the_daemon_records(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    StateDir(state).provision()
    cfg = {"gateway": {"id": "gw-lend", "state_dir": str(state), "batch_ms": 20, "hold_s": 0},
           "appliance": [{"id": "kettle", "profile": "kettle", "interim_s": 1,
                          "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 20_000}}}]}
    clock, factory = SystemClock(), mock_factory()
    gw = Gateway(parse_config(cfg, file="koto.toml"), clock=clock, backends={"pin_factory": factory},
                 sync_enabled=False)
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    kettle = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: 2_200_000, 20_000, step_s=0.02))
    db = state / "ledger.db"
    try:
        with caplog.at_level(logging.INFO, logger="koto.gateway"):
            await until(lambda: run.done() or gw.ledger.head()[0] > 3, within=60.0)
            assert not run.done()
            assert not shm_exists(db)  # held alone: SQLite keeps the WAL index in the daemon's heap

            usage = await asyncio.to_thread(koto_cli, "usage", "--state-dir", str(state))
            assert usage.returncode == 0, usage.stderr
            assert "kettle" in usage.stdout
            head_while_lent = gw.ledger.head()[0]
            verify = await asyncio.to_thread(koto_cli, "verify", "--state-dir", str(state))
            assert verify.returncode == 0, verify.stderr

            await until(lambda: not gw.ledger.lent, within=10.0)  # taken back within a second of the last reader
            await until(lambda: gw.ledger.head()[0] > head_while_lent + 1, within=30.0)  # and records go on
            assert not shm_exists(db)
        said = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("ledger: lent to a reader in another process") for m in said), said
        assert any(m.startswith("ledger: the readers are done") for m in said), said
    finally:
        kettle.cancel()
        stop.set()
        await run
    assert gw.supervisor.failure is None
    assert_contiguous(ledger_events(db, "gw-lend"))


def test_a_reader_the_daemon_never_serves_gets_one_plain_line_not_a_hang(tmp_path: Path) -> None:
    """A hung daemon (here: a writer opened exclusive that nobody asks to serve its readers) holds its file; a reader
    says so after `store.BUSY_MS` and names what to look at, rather than waiting for ever."""
    from koto.signing import generate_key
    from metering.ledger import Ledger

    db = tmp_path / "ledger.db"
    with Ledger.open(db, gateway_id="gw-hung", key=generate_key(), exclusive=True) as ledger:
        ledger.append([])
        started = time.monotonic()
        reader = koto_cli("usage", "--state-dir", str(tmp_path))
        waited = time.monotonic() - started
    assert reader.returncode != 0
    assert "did not lend it within" in reader.stderr and "journalctl -u koto" in reader.stderr, reader.stderr
    assert "Traceback" not in reader.stderr
    assert waited < 45  # the reader gave up by itself (its limit is 10 s; a loaded machine adds its start-up)
