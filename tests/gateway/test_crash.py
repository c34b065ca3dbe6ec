"""Kill -9 at random moments: the gateway (`koto run`, a child process) meters a Modbus meter on a real pymodbus RTU
server; it is killed with SIGKILL 30 times and restarted. After every restart the ledger verifies, seq is contiguous
and energy is conserved to the milliwatt-hour against the register (ARCHITECTURE §2, invariants 1-3)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.cli import main as koto
from gateway.simulate import washer
from tests.support.ledger_checks import assert_contiguous, conservation, ledger_events, served_mwh
from tests.support.paths import REPO
from tests.support.slow import scaled

ROOT = REPO
KILLS = 30
FIRST_KWH = 1234.5  # exactly representable as float32: the first register value the gateway reads


def config(tmp: Path, port: str) -> Path:
    cfg = tmp / "koto.toml"
    cfg.write_text(f"""
[gateway]
id = "crash-gw"
state_dir = "{tmp / 'state'}"
batch_ms = 50
checkpoint_s = 0.2

[[appliance]]
id = "washer"
profile = "washing_machine"
energy = "meter"
interim_s = 10
max_gap_s = 2

[appliance.sources.meter]
driver = "modbus"
model = "sdm120"
port = "{port}"
address = 1
poll_s = 0.05
timeout_s = {scaled(0.3)}
""")
    return cfg


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as err:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "-v", "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)


RUNNING = " running: "  # what `koto -v run` logs once it has opened the ledger and started its sources


async def running(log: Path, starts: int, limit_s: float = 30.0) -> None:
    """Wait until `starts` runs in all have said they are running (a hang bound only): starting Python and opening the
    ledger takes a few seconds on a slow machine, more than the fixed pauses below assume."""
    for _ in range(int(scaled(limit_s) / 0.05)):
        if _log_text(log).count(RUNNING) >= starts:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway did not say it was running {starts} times: {_log_text(log)[-2000:]}")


def _log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def wait_exit(proc: subprocess.Popen[bytes], limit_s: float = 20.0) -> int:
    for _ in range(int(scaled(limit_s) / 0.05)):
        if proc.poll() is not None:
            return proc.returncode
        await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("the gateway did not stop in time")


def check(state: Path) -> dict[str, tuple[int, int, int]]:
    assert koto(["verify", "--state-dir", str(state)]) == 0
    events = ledger_events(state / "ledger.db", "crash-gw")
    assert_contiguous(events)
    return conservation(events)


@pytest.mark.slow
async def test_thirty_sigkills_lose_nothing_and_invent_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    program = washer()
    t0 = asyncio.get_running_loop().time()

    def power_w(t: float) -> float:  # the washer programme, 10x faster than life: a cycle every 221 s
        return program.power_w((t - t0) * 10 % program.length_s)

    meter = SimMeter("sdm120", 1, energy_kwh=FIRST_KWH, power_fn=power_w)
    log = tmp_path / "gateway.log"
    async with ModbusSimulator([meter]) as bus:
        cfg = config(tmp_path, bus.port)
        assert koto(["provision", "--config", str(cfg)]) == 0
        proc = start(cfg, log)  # a first run long enough to commit the register's baseline
        await running(log, 1)
        await asyncio.sleep(3.0)
        for _ in range(KILLS):
            proc.send_signal(signal.SIGKILL)
            assert await wait_exit(proc) == -signal.SIGKILL
            check(tmp_path / "state")
            said = _log_text(log).count(RUNNING)  # runs killed during their start never said it
            proc = start(cfg, log)
            await asyncio.sleep(rng.uniform(0.2, 2.0))  # sometimes before the ledger is even open
        await running(log, said + 1)  # the last run is past its start, so SIGTERM meets its handler
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGTERM)  # the last run stops cleanly and closes its open segment
        assert await wait_exit(proc) == 0, log.read_text()[-3000:]
        last_served = served_mwh(meter.truth["energy"])

    totals = check(tmp_path / "state")
    total, first, last = totals["meter"]
    assert first == served_mwh(FIRST_KWH)
    # The last register value the gateway read is the last one served, unless a poll was on the wire at SIGTERM.
    assert last <= last_served
    assert last_served - last <= 2_500 * 1000 * 0.3 / 3.6  # at most one poll's worth at the washer's peak
    assert total == last - first
    assert total > 0
