"""The support call, end to end: "my washer use on Tuesday was not billed".

A simulated gateway (the production Gateway, a real Modbus RTU SDM120 simulator on a pty, a real Mosquitto and the
reference receiver) meters a washer cycle on Tuesday 1 December from 10:02 to 11:12 while the cloud is away; the
cloud comes back on Wednesday at 08:03. Support staff then answer with Koto's own commands alone: `koto usage --by
cycle` says the use ran 10:02–11:12, used 0.81 kWh and was synced on Wednesday at 08:03; `koto status` and
`koto verify` agree. Time is compressed by a clock that follows a fixed plan (the night passes in seconds).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import open_store
from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.cli import main as koto
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.simulate import Phase, Script
from tests.support.broker import Mosquitto
from tests.support.slow import scaled
from tests.support.varclock import PlannedClock

GW = "gw-support"
BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=BERLIN).timestamp()  # Tuesday 10:00
CLOUD_BACK = datetime(2026, 12, 2, 8, 3, tzinfo=BERLIN).timestamp()  # Wednesday 08:03

# The programme: fill at 10:02:30, heat, wash (tumbling in 12 s bursts with 4 s pauses), a drain/rinse fill, spin
# until 11:12:45, then standby; the washing-machine profile confirms a use's end after 90 s near standby
# (metering/profiles/washing_machine.toml), and the use ends where the spin did: it ran 10:02-11:12. About 0.81 kWh
# in the use.
TUMBLE = [Phase("wash", 12, 180), Phase("pause", 4, 6, ripple=0.0)]
WASH = Script("washer", [
    Phase("standby", 150, 1.5, ripple=0.0),
    Phase("fill", 180, 14),
    Phase("heat", 1050, 2000),
    *TUMBLE * 139,
    Phase("fill", 126, 14),
    Phase("spin", 635, 800, ripple=0.02),
    Phase("standby", 600, 1.5, ripple=0.0),
])


def config(tmp: Path, port: str, broker: Mosquitto) -> Path:
    cfg = tmp / "koto.toml"
    cfg.write_text(f"""
[gateway]
id = "{GW}"
state_dir = "{tmp / 'state'}"
timezone = "Europe/Berlin"
batch_ms = 50

[cloud]
broker = "{broker.url}"
ack_timeout_s = 2

[tariff]
id = "household"
version = 1
currency = "EUR"
exponent = 2
rates = [{{ match = "*/*", per_kwh = "0.40" }}]
windows = []

[[appliance]]
id = "washer"
profile = "washing_machine"
energy = "meter"
max_gap_s = 3600

[appliance.sources.meter]
driver = "modbus"
model = "sdm120"
port = "{port}"
baud = 38400
address = 1
poll_s = 1
timeout_s = {scaled(0.3)}
""")
    return cfg


@pytest.mark.slow
async def test_tuesday_s_wash_is_found_metered_and_synced_on_wednesday_with_koto_s_commands_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    night = CLOUD_BACK - T0
    clock = PlannedClock([(0, 300), (135, 30), (180, 300),  # the use's start, at a pace the meter's polls follow
                          (4320, 30), (4500, 300),  # its end, from before the spin stops (11:12:45): at 300x a
                          # loaded machine polls every few simulated seconds, and the fall came at 11:13 once
                          (4800, 20_000), (night - 300, 100), (night - 5, 1)],  # the night; Wednesday morning
                         wall0=T0)
    meter = SimMeter("sdm120", 1, energy_kwh=10.0, time_fn=lambda: clock.now().mono_ns / 1e9,
                     power_fn=lambda _t: WASH.power_w(clock.now().wall - T0))
    broker = Mosquitto(tmp_path / "broker")  # configured now, started only when the cloud comes back
    cloud_db = tmp_path / "cloud.db"
    async with ModbusSimulator([meter], baud=38400) as bus:
        cfg = config(tmp_path, bus.port, broker)
        assert koto(["provision", "--config", str(cfg)]) == 0
        capsys.readouterr()
        store = open_store(str(cloud_db))
        store.register(GW, (tmp_path / "state" / "keys" / "device.pub.pem").read_text())
        gw = Gateway(load_config(cfg), clock=clock, runtime_dir=tmp_path / "run")
        assert gw.status is not None
        gw.status.every_s = 0.2
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        try:
            await clock.until_wall(T0 + 80 * 60)  # Tuesday 11:20: the cycle is over, nothing synced
            assert gw.ledger.acked_through() == 0 and gw.ledger.head()[0] > 3
            await clock.until_wall(CLOUD_BACK)  # Wednesday 08:03, in real time
            broker.start()
            async with Receiver(store, ReceiverConfig(broker=broker.url, client_id="rx")):
                for _ in range(300):
                    if gw.ledger.acked_through() == gw.ledger.head()[0]:
                        break
                    await asyncio.sleep(0.05)
                assert gw.ledger.acked_through() == gw.ledger.head()[0], "the backlog reached the cloud"
                await asyncio.sleep(0.5)  # the status file catches up
                assert koto(["status", "--runtime-dir", str(tmp_path / "run")]) == 0
                screen = capsys.readouterr().out
                assert "backlog 0" in screen
        finally:
            stop.set()
            await run
            broker.stop()
        store.close()

    # The call: "my washer use on Tuesday was not billed".
    assert koto(["usage", "--config", str(cfg), "--by", "cycle", "--appliance", "washer",
                 "--since", "2026-12-01"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("washer"))
    assert koto(["usage", "--config", str(cfg), "--by", "record", "--appliance", "washer"]) == 0
    table += capsys.readouterr().out  # every record, for whoever reads a failure
    assert "Tue 2026-12-01 10:02–11:12" in row, table
    # ~0.81 kWh. The simulator's register (the truth the gateway bills) integrates the power seen at each poll, and
    # the polls follow the compressed clock, so on a loaded machine (fewer polls per simulated minute) the register
    # itself drifts by a few % from the programme's 0.81: the band is loose, the register check below is exact.
    assert abs(float(row.split("kWh")[0].split()[-1]) - 0.81) <= 0.05, table
    assert "Wed 2026-12-02 08:03" in row, table

    assert koto(["usage", "--config", str(cfg), "--by", "cycle", "--appliance", "washer",
                 "--since", "2026-12-01", "--json"]) == 0
    cycles = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(cycles) == 1
    (cycle,) = cycles
    assert abs(cycle["energy_mwh"] - 810_000) <= 50_000
    # Nothing lost, nothing invented: the washer's records add up to what its register advanced, to the float32
    # step of an SDM120's kWh register near 10 kWh (~1 Wh) at each end.
    assert koto(["usage", "--config", str(cfg), "--by", "record", "--appliance", "washer", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    billed_mwh = sum(r.get("energy_mwh", 0) for r in records)
    assert abs(billed_mwh - round((meter.energy_kwh - 10.0) * 1e6)) <= 2_000, (billed_mwh, meter.energy_kwh)
    assert cycle["synced"] == "yes" and cycle["synced_at"].startswith("2026-12-02T08:03")
    assert koto(["verify", "--config", str(cfg)]) == 0
