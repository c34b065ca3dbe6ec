"""`koto status`: one screen of what the running gateway does, from the status file the daemon refreshes in its
runtime folder (tmpfs), readable by the koto group; plain words when the daemon is not running."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import pytest

from gateway.cli import main as koto
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.state import StateDir
from gateway.status import STATUS_FILE, StatusFile, read_status
from metering.entitlement import Entitlement, EntitlementKind


def kettle_config(tmp: Path) -> dict[str, object]:
    # hold_s 0: today's figures come from the ledger, and records are committed every batch instead of held
    return {"gateway": {"id": "gw-status", "state_dir": str(tmp / "state"), "batch_ms": 20, "hold_s": 0},
            "tariff": {"id": "t", "version": 1, "currency": "EUR", "exponent": 2,
                       "rates": [{"match": "*/*", "per_kwh": "0.40"}], "windows": []},
            "appliance": [{"id": "kettle", "profile": "kettle", "interim_s": 1,
                           "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 20_000}}}]}


async def test_status_shows_the_boiling_kettle_its_energy_today_and_the_source_while_the_daemon_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    run_dir = tmp_path / "run"
    clock, factory = SystemClock(), mock_factory()
    gw = Gateway(parse_config(kettle_config(tmp_path), file="koto.toml"), clock=clock,
                 backends={"pin_factory": factory}, sync_enabled=False, runtime_dir=run_dir)
    assert gw.status is not None
    gw.status.every_s = 0.1
    gw.pricing.entitlements.grant(Entitlement("e-turbo", "kettle", "boil", EntitlementKind.USES, limit=3,
                                              valid_until=int(time.time()) + 86_400))
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    boil = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: 2_200_000, 20_000, step_s=0.02))
    try:
        await asyncio.sleep(3.5)  # the boil starts, interim records (interim_s = 1) reach the ledger
        assert koto(["status", "--runtime-dir", str(run_dir)]) == 0
        screen = capsys.readouterr().out
        kettle = next(line for line in screen.splitlines() if line.startswith("kettle"))
        assert kettle.split()[1] == "boil"
        assert float(kettle.split()[2]) > 1500  # W
        assert float(kettle.split()[4]) > 0  # kWh today: the interim records
        assert "k " in screen and " ok " in screen  # the S0 source, healthy
        assert "local only (no [cloud])" in screen and "clock:" in screen
        assert "kettle/boil: uses, 3 uses left" in screen
        assert koto(["status", "--runtime-dir", str(run_dir), "--json"]) == 0
        snap = json.loads(capsys.readouterr().out)
        assert snap["running"] is True
        assert snap["status"]["ledger"]["head_seq"] >= 1 and snap["status"]["pid"] == os.getpid()
        mode = stat.S_IMODE((run_dir / STATUS_FILE).stat().st_mode)
        assert mode == 0o640  # the koto group reads it; nobody else
    finally:
        boil.cancel()
        stop.set()
        await run
    # A clean stop leaves the last snapshot, marked stopped: status says so, and exits 1.
    assert koto(["status", "--runtime-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "the gateway daemon is not running (it stopped cleanly" in err


def test_no_status_file_says_the_daemon_is_not_running_and_how_to_start_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["status", "--runtime-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not running" in err and "systemctl start koto" in err


def test_a_status_whose_writer_is_gone_or_silent_is_reported_as_such(tmp_path: Path) -> None:
    status = StatusFile(tmp_path)
    now = time.time()
    status.write({"pid": 2**22 + 17, "written_wall": now, "state": "running"})  # no such pid
    assert "pid 4194321 is gone" in read_status(tmp_path, now_wall=now).not_running
    status.write({"pid": os.getpid(), "written_wall": now - 120, "state": "running"})
    assert "not responding: its status is 120 s old" in read_status(tmp_path, now_wall=now).not_running
    status.write({"pid": os.getpid(), "written_wall": now, "state": "running"})
    assert read_status(tmp_path, now_wall=now).not_running == ""


def test_a_runtime_folder_that_cannot_be_written_is_said_once_and_the_daemon_runs_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    status = StatusFile(blocker / "koto")
    assert status.write({"a": 1}) is False
    assert status.write({"a": 2}) is False
    lines = [r for r in caplog.records if "cannot write the status file" in r.getMessage()]
    assert len(lines) == 1 and "RuntimeDirectory=koto" in lines[0].getMessage()


def test_entitlements_say_what_is_left_in_uses_and_kwh_not_in_milliwatt_hours() -> None:
    """`koto-cloud grant --kwh 12.5` was shown as `kwh, 12500000 left` (the ledger's mWh): support read it as
    12.5 million kWh. The screen says it as the household's page does."""
    from gateway.status import render

    ents = [{"id": "e1", "appliance": "washer", "function": "*", "kind": "uses", "remaining": 10, "valid_until": 0},
            {"id": "e2", "appliance": "washer", "function": "*", "kind": "kwh", "remaining": 12_500_000,
             "valid_until": 0}]
    screen = render({"gateway": "gw", "entitlements": ents}, now_wall=0)
    assert "  washer/*: uses, 10 uses left, open-ended (e1)" in screen
    assert "  washer/*: kwh, 12.500 kWh left, open-ended (e2)" in screen
