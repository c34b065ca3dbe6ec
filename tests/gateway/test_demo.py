"""`koto demo`: three appliances through the real driver stacks (pymodbus RTU on a pty, MockFactory pins, BTHome
adverts through bleak's front end and bthome-ble) into the production Gateway and ledger, at 150x.

At 150x a 100 ms hiccup of a loaded machine moves a boundary by 15 simulated seconds, so attribution is checked
to within that; totals are exact by construction and checked by the ledger tests."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.cli import main as koto
from gateway.demo import DEMO_MARK, run_demo
from gateway.state import StateDir
from metering.ledger import Ledger


@pytest.mark.slow
async def test_the_demo_shows_every_function_and_reads_usage_back_from_a_verified_ledger(tmp_path: Path) -> None:
    lines: list[str] = []
    assert await run_demo(tmp_path / "demo", speed=150.0, out=lines.append) == 0
    text = "\n".join(lines)
    assert re.match(r"Koto demo: washer \(Modbus SDM120 on the pty /\S+/ttyKOTO0\)", lines[0]), lines[0]
    for event in ("washer: fill started", "washer: heat started", "washer: wash started", "washer: spin started",
                  "washer: rinse started",
                  "kettle: boil started", "aircon: cool started", "aircon: heat started", "washer: use ended"):
        assert event in text
    assert "verify ok" in text
    # between pulses the S0 driver knows only an upper bound (ESTIMATED): the kettle's standby is "under" it
    standby = re.findall(r"kettle: standby started \((.*?)\)", text)
    measured = [p for p in standby if not p.startswith("under ")]
    assert len(measured) < len(standby) and all(float(p.split()[0]) < 100 for p in measured), standby
    with Ledger.open(tmp_path / "demo" / "ledger.db", gateway_id="demo-gw", key=None) as ledger:
        rows = {(r.appliance, r.key): r for r in ledger.usage_summary(by="function")}
    assert rows[("washer", "")].uses == 1 and rows[("kettle", "")].uses == 2 and rows[("aircon", "")].uses == 1
    # the washer's heater ran 9 minutes at 2050 W: 307.5 Wh, read from the SDM120's float32 register
    assert abs(rows[("washer", "heat")].energy_mwh - 307_500) < 10_000
    # cooling 12 min at 850 W and heating 12 min at 1100 W, from the plug's BTHome energy counter
    assert abs(rows[("aircon", "cool")].energy_mwh - 170_000) < 10_000
    assert abs(rows[("aircon", "heat")].energy_mwh - 220_000) < 10_000
    assert rows[("washer", "heat")].costs in ((("EUR", 9),), (("EUR", 10),))  # 0.3075 kWh at 0.32 EUR


@pytest.fixture
def demo_cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, str]]]:
    """`koto demo --state-dir DIR` in this process, briefly; returns its exit code and what it said on stderr."""
    koto_log = logging.getLogger("koto")
    level = koto_log.level  # the demo quiets the koto logger for its run

    def run(state: Path) -> tuple[int, str]:
        capsys.readouterr()
        rc = koto(["demo", "--state-dir", str(state), "--minutes", "0.1", "--speed", "10000"])
        return rc, capsys.readouterr().err

    yield run
    koto_log.setLevel(level)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_demo_refuses_a_folder_with_someone_else_s_file_and_deletes_nothing(
        tmp_path: Path, demo_cli: Callable[..., tuple[int, str]]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8 not the demo's")
    rc, err = demo_cli(folder)
    assert rc == 2
    assert err.count("\n") == 1 and str(folder) in err and "new or empty folder" in err, err
    assert "Traceback" not in err
    assert _tree(folder) == {"holiday.jpg": b"\xff\xd8 not the demo's"}


def live_gateway_state(tmp_path: Path) -> Path:
    """A provisioned gateway's state folder with its ledger (gateway gw-0042): what `koto run` leaves."""
    state = tmp_path / "koto"
    sd = StateDir(state)
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id="gw-0042", key=sd.private_key()):
        pass
    return state


def test_the_demo_refuses_a_live_gateway_s_state_folder_and_keeps_its_ledger_key_and_household(
        tmp_path: Path, demo_cli: Callable[..., tuple[int, str]]) -> None:
    state = live_gateway_state(tmp_path)
    (state / "household.toml").write_text("[[appliance]]\nid = \"washer\"\n")
    before = _tree(state)
    rc, err = demo_cli(state)
    assert rc == 2 and str(state) in err and "new or empty folder" in err, err
    assert _tree(state) == before


def test_a_gateway_s_ledger_and_key_alone_are_not_taken_for_an_old_demo_s(
        tmp_path: Path, demo_cli: Callable[..., tuple[int, str]]) -> None:
    """A live gateway's state folder holds exactly the files a demo leaves: only the demo's gateway id tells."""
    state = live_gateway_state(tmp_path)
    before = _tree(state)
    rc, err = demo_cli(state)
    assert rc == 2 and str(state) in err, err
    assert _tree(state) == before


def test_the_demo_runs_again_and_again_in_its_own_folder_a_new_one_or_an_empty_one(
        tmp_path: Path, demo_cli: Callable[..., tuple[int, str]]) -> None:
    for state in (tmp_path / "new" / "demo-state", tmp_path / "empty"):
        if state.name == "empty":
            state.mkdir()
        for _ in range(2):
            rc, err = demo_cli(state)
            assert rc == 0, err
            assert (state / DEMO_MARK).is_file() and (state / "ledger.db").is_file()


def test_a_folder_an_earlier_demo_made_without_the_marker_is_recognised_by_what_it_holds(
        tmp_path: Path, demo_cli: Callable[..., tuple[int, str]]) -> None:
    state = tmp_path / "demo-state"
    assert demo_cli(state)[0] == 0
    (state / DEMO_MARK).unlink()  # as a demo before the marker left it: ledger.db(.lock, .readers), keys/
    rc, err = demo_cli(state)
    assert rc == 0, err
    assert (state / DEMO_MARK).is_file()
    (state / DEMO_MARK).unlink()
    (state / "notes.txt").write_text("mine")  # anything a demo does not write makes it someone else's
    rc, err = demo_cli(state)
    assert rc == 2 and str(state) in err, err
    assert (state / "notes.txt").read_text() == "mine" and (state / "ledger.db").is_file()
