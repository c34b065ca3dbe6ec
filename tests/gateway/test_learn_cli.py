"""`koto learn` end to end: a running gateway meters a simulated kettle on an S0 pulse meter (MockFactory pins);
`koto learn` records a boil from it, stops by itself when the kettle is back at rest, saves the learned rule into
a copy of the built-in profile in the state folder and points household.toml at it (the config is never written);
the gateway started again meters with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from gateway.cli import main as koto
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.power_log import format_trace
from gateway.state import StateDir
from metering.profile import builtin_profile
from tests.gateway.test_learn import _keep_warm

CONFIG = """\
# a test household
[gateway]
id = "gw-learn"
state_dir = "{state}"
batch_ms = 20

[[appliance]]
id = "kettle"
profile = "kettle"   # the built-in
[appliance.sources.k]
driver = "s0"
pin = 17
imp_per_kwh = 20000
report_s = 0.2
"""


@pytest.mark.slow
async def test_koto_learn_records_a_boil_from_the_running_gateway_and_the_next_start_uses_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    cfg_path = tmp_path / "koto.toml"
    cfg_path.write_text(CONFIG.format(state=tmp_path / "state"))
    run_dir = tmp_path / "run"
    clock, factory = SystemClock(), mock_factory()
    gw = Gateway(load_config(cfg_path), clock=clock, backends={"pin_factory": factory}, sync_enabled=False,
                 runtime_dir=run_dir)
    assert gw.status is not None
    gw.status.every_s = 0.3
    watts = {"now": 300_000}  # resting on a 300 W base load, so the pulses (and readings) keep coming
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    pulses = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: watts["now"], 20_000, step_s=0.02))
    try:
        await asyncio.sleep(1.5)
        learning = asyncio.create_task(asyncio.to_thread(
            koto, ["learn", "kettle", "--function", "boil", "--config", str(cfg_path), "--runtime-dir", str(run_dir),
                   "--idle-s", "2", "--max-minutes", "1", "--yes", "--width", "60"]))
        await asyncio.sleep(1.0)
        watts["now"] = 2_200_000  # the person switches the kettle on
        await asyncio.sleep(3.0)
        watts["now"] = 300_000
        assert await learning == 0
    finally:
        pulses.cancel()
        stop.set()
        await run
    out = capsys.readouterr().out
    assert "recording ended (back at rest for 2 s)" in out  # by itself, not at --max-minutes
    assert "boil: relearned" in out and "B boil" in out
    profile_path = tmp_path / "state" / "profiles" / "kettle.toml"
    assert f"saved: {profile_path}" in out and f"{tmp_path / 'state' / 'household.toml'} now points kettle" in out
    cfg = load_config(cfg_path)
    assert cfg.appliances[0].profile == str(profile_path)
    assert cfg_path.read_text() == CONFIG.format(state=tmp_path / "state")

    gw2 = Gateway(cfg, clock=clock, backends={"pin_factory": mock_factory()}, sync_enabled=False)
    try:
        boil = gw2.meters["kettle"].profile.functions[0]
        assert boil.name == "boil" and 1_200_000 < boil.on_min_mw < 2_100_000  # between the rest and the boil
        assert boil.on_min_mw != builtin_profile("kettle").functions[0].on_min_mw
    finally:
        gw2.ledger.close()


def test_koto_learn_without_a_daemon_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "koto.toml"
    cfg_path.write_text(CONFIG.format(state=tmp_path / "state"))
    rc = koto(["learn", "kettle", "--function", "boil", "--config", str(cfg_path), "--runtime-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not running" in err and "--trace FILE" in err and "\n" not in err


def test_koto_learn_from_a_recording_shows_the_rule_and_saves_only_when_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "koto.toml"
    cfg_path.write_text(CONFIG.format(state=tmp_path / "state"))
    before = cfg_path.read_text()
    trace = tmp_path / "keep-warm.csv"
    trace.write_text(format_trace(_keep_warm(1), "recorded"))
    args = ["learn", "kettle", "--function", "keep_warm", "--config", str(cfg_path), "--trace", str(trace)]
    assert koto([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "keep_warm: new function" in out and "K keep_warm" in out and '[[function]]\nname = "keep_warm"' in out
    assert koto(args) == 1  # no terminal and no --yes: nothing saved
    assert "pass --yes" in capsys.readouterr().err
    assert cfg_path.read_text() == before and not (tmp_path / "state").exists()
    flat = tmp_path / "flat.csv"
    flat.write_text(format_trace(_keep_warm(1)[:50], "only rest"))
    assert koto(["learn", "kettle", "--function", "keep_warm", "--config", str(cfg_path), "--trace", str(flat)]) == 2
    assert "koto: keep_warm: not learned: no function seen" in capsys.readouterr().err


def test_a_state_folder_that_cannot_be_written_is_one_line_naming_the_file() -> None:
    """`koto learn` by a user who does not own the state folder (no sudo): one line naming what it meant to write."""
    import shutil
    import tempfile

    from tests.support.as_user import AS_ROOT, koto_as_other_user

    folder = Path(tempfile.mkdtemp(prefix="koto-learn-"))
    try:
        os.chmod(folder, 0o755)
        (folder / "state").mkdir(mode=0o755)
        if not AS_ROOT:
            os.chmod(folder / "state", 0o555)
        cfg_path = folder / "koto.toml"
        cfg_path.write_text(CONFIG.format(state=folder / "state"))
        trace = folder / "keep-warm.csv"
        trace.write_text(format_trace(_keep_warm(1), "recorded"))
        for f in (cfg_path, trace):
            os.chmod(f, 0o644)
        out = koto_as_other_user("learn", "kettle", "--function", "keep_warm", "--config", cfg_path, "--trace",
                                 trace, "--yes", preload=("gateway.cli_learn", "gateway.learn", "gateway.learn_files",
                                                          "gateway.config_household", "gateway.profile_plot",
                                                          "gateway.profile_suggest", "importlib.readers",
                                                          "importlib.resources.readers"))
    finally:
        os.chmod(folder, 0o755)
        with contextlib.suppress(OSError):
            os.chmod(folder / "state", 0o755)
        shutil.rmtree(folder, ignore_errors=True)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"koto: {folder / 'state' / 'profiles'}: ") and "permission denied" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
def test_koto_learn_as_root_leaves_what_it_writes_to_the_state_folders_owner(tmp_path: Path) -> None:
    """`sudo koto learn`: the profile, its folder and household.toml belong to the service's user, who must replace
    them later (pairing, the next learn on the page)."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # the state folder's owner: "koto" (here nobody)
    cfg_path = tmp_path / "koto.toml"
    cfg_path.write_text(CONFIG.format(state=state))
    trace = tmp_path / "keep-warm.csv"
    trace.write_text(format_trace(_keep_warm(1), "recorded"))
    assert koto(["learn", "kettle", "--function", "keep_warm", "--config", str(cfg_path), "--trace", str(trace),
                 "--yes"]) == 0
    written = [state / "profiles", state / "profiles" / "kettle.toml", state / "household.toml"]
    assert [(p.stat().st_uid, p.stat().st_gid) for p in written] == [(65534, 65534)] * 3
    assert cfg_path.stat().st_uid == 0 and load_config(cfg_path).appliances[0].profile == str(written[1])
