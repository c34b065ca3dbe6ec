"""`koto demo`: three appliances through the real driver stacks (pymodbus RTU on a pty, MockFactory pins, BTHome
adverts through bleak's front end and bthome-ble) into the production Gateway and ledger, at 150x.

At 150x a 100 ms hiccup of a loaded machine moves a boundary by 15 simulated seconds, so attribution is checked
to within that; totals are exact by construction and checked by the ledger tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.demo import run_demo
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
