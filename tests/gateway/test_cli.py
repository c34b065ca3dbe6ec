"""`koto` for installers and support staff: provision, verify, usage, discover — called as `main(argv)`."""

from __future__ import annotations

import sqlite3
import stat
import tomllib
from pathlib import Path

import pytest

from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.cli import main as koto
from gateway.config import parse_config
from gateway.state import StateDir
from koto.clock import ManualClock
from metering.ledger import Ledger
from metering.records import RecordKind, TimeStatus, UsageRecord, usage_draft
from tests.support.slow import scaled

S = 1_000_000_000


def test_provision_makes_a_private_key_only_its_owner_reads_and_prints_the_public_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    assert koto(["provision", "--state-dir", str(state)]) == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert (state / "keys" / "device.pub.pem").read_text() == pem
    assert stat.S_IMODE((state / "keys" / "device.pem").stat().st_mode) == 0o600
    assert koto(["provision", "--state-dir", str(state)]) == 0  # run again: the key is kept
    assert capsys.readouterr().out == pem


def test_commands_without_a_state_dir_or_config_say_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["verify"]) == 2
    assert "--state-dir" in capsys.readouterr().err


def write_ledger(state: Path, n: int = 12) -> None:
    sd = StateDir(state)
    sd.provision()
    clock = ManualClock()
    with Ledger.open(sd.ledger, gateway_id="gw-cli", key=sd.private_key()) as ledger:
        for i in range(n):
            t0 = clock.now()
            clock.advance(60)
            t1 = clock.now()
            rec = UsageRecord(RecordKind.FUNCTION, "washer", "meter", ["heat", "spin"][i % 2], t0.mono_ns, t1.mono_ns,
                              t0.wall, t1.wall, t1.boot_id, TimeStatus.SYNCED, energy_mwh=1000 * (i + 1),
                              duration_ms=60_000, currency="EUR", cost_minor=i)
            ledger.append([usage_draft(rec, "household/washer")])


def test_verify_passes_on_an_intact_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ledger(tmp_path / "state")
    assert koto(["verify", "--state-dir", str(tmp_path / "state")]) == 0
    out = capsys.readouterr()
    assert "ok: 12 records verified" in out.out
    assert "verify: 12 of 12 records checked" in out.err  # not a terminal: progress as lines (the journal)


@pytest.mark.parametrize("seq", [1, 7, 12])
def test_verify_exits_1_naming_the_seq_whose_byte_was_flipped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], seq: int) -> None:
    state = tmp_path / "state"
    write_ledger(state)
    db = sqlite3.connect(state / "ledger.db")
    (body,) = db.execute("SELECT body FROM records WHERE seq=?", (seq,)).fetchone()
    b = bytearray(body)
    b[len(b) // 2] ^= 0x01
    db.execute("UPDATE records SET body=? WHERE seq=?", (bytes(b), seq))
    db.commit()
    db.close()
    assert koto(["verify", "--state-dir", str(state)]) == 1
    assert f"FAILED at seq {seq}" in capsys.readouterr().err


def test_usage_prints_energy_time_and_cost_per_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ledger(tmp_path / "state")
    assert koto(["usage", "--state-dir", str(tmp_path / "state")]) == 0
    out = capsys.readouterr().out.splitlines()
    heat = next(line for line in out if line.startswith("washer") and " heat " in line).split()
    spin = next(line for line in out if line.startswith("washer") and " spin " in line).split()
    # heat: records 1,3,...,11 -> 1+3+5+7+9+11 Wh = 0.036 kWh, 6 minutes, cost 0+2+4+6+8+10 cents
    assert heat[2:4] == ["0.036", "0:06:00"] and heat[5:7] == ["0.30", "EUR"]
    assert spin[2] == "0.042"
    assert out[-1].split()[:2] == ["total", "0.078"]
    assert koto(["usage", "--state-dir", str(tmp_path / "state"), "--since", "2999-01-01"]) == 0
    assert "no usage recorded since 2999-01-01" in capsys.readouterr().out
    # A mistyped appliance is named as unknown, with the ones the ledger knows, not reported as unused.
    assert koto(["usage", "--state-dir", str(tmp_path / "state"), "--appliance", "dryer"]) == 2
    assert "koto: no appliance named 'dryer' (known: washer)" in capsys.readouterr().err


async def test_discover_finds_a_simulated_sdm120_on_a_pty_and_prints_a_config_to_paste(tmp_path: Path) -> None:
    from gateway.discover import run_discover

    async with ModbusSimulator([SimMeter("sdm120", 3)]) as bus:
        report = await run_discover(ports=[bus.port], addresses=[1, 2, 3], bauds=[9600], timeout_s=scaled(0.2),
                                    ble_seconds=0, gpio_pins=[17], pin_factory="mock")
    assert f"{bus.port} address 3 at 9600 baud: sdm120" in report
    assert "GPIO17: high" in report  # the pull-up holds an unconnected input high
    block = report.split("Paste into koto.toml (then name each appliance and check its profile):", 1)[1]
    doc = tomllib.loads(block)
    (app,) = doc["appliance"]
    assert app["sources"]["meter-3"] == {"driver": "modbus", "model": "sdm120", "port": bus.port, "address": 3,
                                         "baud": 9600}
    cfg = parse_config({"gateway": {"id": "gw-new"}, **doc}, file="pasted")  # what was printed is a valid config
    assert cfg.appliances[0].energy == "meter-3"


def test_a_config_error_is_one_plain_line_naming_file_and_key(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "koto.toml"
    cfg.write_text('[gateway]\nid = "gw-1"\ntimezone = "Nowhere/Special"\n')
    assert koto(["usage", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: gateway.timezone: unknown time zone" in err
    assert "Traceback" not in err


def test_run_before_provision_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "koto.toml"
    cfg.write_text(f'[gateway]\nid = "gw-1"\nstate_dir = "{tmp_path / "state"}"\n')
    assert koto(["run", "--config", str(cfg)]) == 2
    assert "run `koto provision" in capsys.readouterr().err


def test_run_with_a_missing_operator_key_is_one_plain_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "koto.toml"
    cfg.write_text(f'[gateway]\nid = "gw-1"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[cloud]\nbroker = "mqtt://127.0.0.1:1883"\noperator_keys = ["{tmp_path / "op.pub.pem"}"]\n')
    assert koto(["provision", "--config", str(cfg)]) == 0  # the device key is made; the missing key is said
    assert f"operator key: {tmp_path / 'op.pub.pem'}: no such file" in capsys.readouterr().err
    assert koto(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: cloud.operator_keys: cannot read {tmp_path / 'op.pub.pem'}" in err
    assert "Traceback" not in err
