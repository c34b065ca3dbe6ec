"""An appliance on one phase of a three-phase meter is metered on that phase; a channel the meter cannot give is
refused by `koto check`, naming the appliance's `channel`.

Until 2026-12-07 the SDM630's map had each phase's power but only the meter's total energy: an appliance with
`channel = "L1"` (as deploy/koto.example.toml's dryer has `L2`) logged its uses and showed its power, and never wrote a
usage record, while `koto check` said ok; `"L4"`, or `"L2"` on a single-phase SDM120, passed the check too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.cli import main as koto
from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.support.ledger_checks import assert_contiguous, conservation, ledger_events, served_mwh
from tests.support.paths import REPO
from tests.support.slow import scaled

PORT = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"


def with_oven(model: str, channel: str, **extra: Any) -> dict[str, Any]:
    source = {"driver": "modbus", "port": PORT, "address": 1, **({"model": model} if model else extra.pop("src"))}
    return {"gateway": {"id": "gw-1"},
            "appliance": [{"id": "oven", "profile": "oven", "channel": channel, "sources": {"m": source}, **extra}]}


def refused(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, file="koto.toml")
    assert (e.value.file, e.value.key) == ("koto.toml", "appliance.oven.channel")
    return e.value


@pytest.mark.parametrize("channel", ["", "L1", "L2", "L3"])
def test_every_channel_of_an_sdm630_is_accepted(channel: str) -> None:
    assert parse_config(with_oven("sdm630", channel)).appliances[0].channel == channel


@pytest.mark.parametrize(("model", "channel"), [("sdm630", "L4"), ("sdm630", "xyz"), ("sdm120", "L2"),
                                                ("pzem004t", "L1")])
def test_a_channel_the_meter_does_not_have_is_refused_with_the_ones_it_has(model: str, channel: str) -> None:
    e = refused(with_oven(model, channel))
    assert f"{channel!r} is not a channel of source 'm'" in e.problem
    assert '"" (the meter\'s total)' in e.problem


PHASE_POWER_ONLY = {"meter": {"function": "input"}, "register": [
    {"key": "power_l1", "address": 0x0C, "type": "float32", "quantity": "power_mw", "signal": "L1", "unit": "W"},
    {"key": "energy", "address": 0x0156, "type": "float32", "quantity": "energy_mwh", "unit": "kWh"},
]}


def test_a_phase_with_power_but_no_energy_register_says_to_meter_its_power() -> None:
    e = refused(with_oven("", "L1", src={"map": PHASE_POWER_ONLY}))
    assert "no energy register on channel 'L1'" in e.problem and 'energy_kind = "power"' in e.problem
    ok = parse_config(with_oven("", "L1", src={"map": PHASE_POWER_ONLY}, energy_kind="power"))
    assert ok.appliances[0].energy_kind == "power"


async def test_an_appliance_on_phase_l2_is_metered_on_that_phase_register(tmp_path: Path) -> None:
    """`koto run` with an oven on L2 of a simulated SDM630 (a pymodbus server on a pty) writes usage records whose
    energy is L2's register: they chain, sum to its last reading minus its first, and match what was served."""
    meter = SimMeter("sdm630", 1, energy_kwh=1000.0, power_fn=lambda t: 2000.0)  # 600 W on L2 all along
    log = tmp_path / "gateway.log"
    async with ModbusSimulator([meter], baud=9600) as bus:
        cfg = tmp_path / "koto.toml"
        cfg.write_text(f"""
[gateway]
id = "phase-gw"
state_dir = "{tmp_path / 'state'}"
batch_ms = 50
checkpoint_s = 0.2

[[appliance]]
id = "oven"
profile = "oven"
energy = "m"
channel = "L2"
interim_s = 1

[appliance.sources.m]
driver = "modbus"
model = "sdm630"
port = "{bus.port}"
address = 1
baud = 9600
poll_s = 0.1
timeout_s = {scaled(0.3)}
""")
        assert koto(["check", "--config", str(cfg)]) == 0
        assert koto(["provision", "--config", str(cfg)]) == 0
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.entry", "-v", "run", "--config", str(cfg),
                stdout=asyncio.subprocess.DEVNULL, stderr=err, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            for _ in range(int(scaled(30) / 0.1)):  # a hang bound: until it runs, then a few seconds of use
                await asyncio.sleep(0.1)
                if " running: " in log.read_text(errors="replace") or proc.returncode is not None:
                    break
            await asyncio.sleep(3.0)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), scaled(20)) == 0, log.read_text()[-3000:]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        served_l2 = served_mwh(meter.truth["energy_l2"])
    events = ledger_events(tmp_path / "state" / "ledger.db", "phase-gw")
    assert_contiguous(events)
    total, first, last = conservation(events)["m"]
    assert total > 0 and total == last - first
    assert first >= served_mwh(1000.0 * 0.3)  # L2's register, not the meter's total (1000 kWh)
    assert first < served_mwh(1000.0 * 0.5)
    assert last <= served_l2
