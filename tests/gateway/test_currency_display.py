"""Costs are shown at their currency's minor unit: a yen has no cents, a Bahraini dinar has 1,000 fils.

Records carry `cost_minor` in the tariff's minor units; `koto status`, `koto usage` and the household page divided
every currency by 100, so a 1,500 JPY wash read "15.00 JPY". The tariff's `exponent` decides (koto.money), and for a
currency no tariff the gateway holds names, ISO 4217's minor unit."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from gateway.cli import main as koto
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.state import StateDir
from gateway.web.render import fmt_cost
from koto.money import fmt_costs, fmt_minor
from tests.gateway.test_status import kettle_config


def test_each_currency_is_shown_at_its_iso_4217_minor_unit_unless_a_tariff_says_otherwise() -> None:
    assert fmt_minor(1234, "EUR") == "12.34 EUR"
    assert fmt_minor(1500, "JPY") == "1500 JPY"
    assert fmt_minor(1234, "BHD") == "1.234 BHD"
    assert fmt_minor(-5, "EUR") == "-0.05 EUR"
    assert fmt_minor(1234, "EUR", {"EUR": 3}) == "1.234 EUR"  # a tariff priced in tenths of a cent
    assert fmt_minor(10**18 + 1, "EUR") == "10000000000000000.01 EUR"  # exact, never a float's rounding
    assert fmt_costs([("CHF", 90), ("JPY", 7)]) == "0.90 CHF + 7 JPY"
    assert fmt_costs([]) == "-" and fmt_cost({}) == "–"
    assert fmt_cost({"KRW": 2500, "EUR": 5}) == "0.05 EUR + 2500 KRW"


async def test_a_yen_tariff_s_costs_read_in_whole_yen_in_koto_status_and_koto_usage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drivers.gpio.sim import mock_factory, run_pulse_train
    from koto.clock import SystemClock

    cfg = kettle_config(tmp_path)
    cfg["tariff"] = {"id": "t-jp", "version": 1, "currency": "JPY", "exponent": 0,
                     "rates": [{"match": "*/*", "per_use": "50", "per_kwh": "3000"}], "windows": []}
    StateDir(tmp_path / "state").provision()
    run_dir = tmp_path / "run"
    clock, factory = SystemClock(), mock_factory()
    gw = Gateway(parse_config(cfg, file="koto.toml"), clock=clock, backends={"pin_factory": factory},
                 sync_enabled=False, runtime_dir=run_dir)
    assert gw.status is not None
    gw.status.every_s = 0.1
    stop = asyncio.Event()
    run = asyncio.create_task(gw.run(stop))
    boil = asyncio.create_task(run_pulse_train(factory.pin(17), clock, lambda: 2_200_000, 20_000, step_s=0.02))
    try:
        await asyncio.sleep(3.5)  # interim records of the boil (interim_s = 1) are priced and committed
        assert koto(["status", "--runtime-dir", str(run_dir)]) == 0
        kettle = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("kettle"))
        assert re.search(r"\s\d+ JPY$", kettle), kettle  # whole yen: "3 JPY", never "0.03 JPY"
    finally:
        boil.cancel()
        stop.set()
        await run
    assert koto(["usage", "--config", str(_write(tmp_path, cfg)), "--by", "record", "--appliance", "kettle"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "JPY" in line]
    assert lines and all(re.search(r"\s\d+ JPY\s", line) for line in lines), lines
    assert koto(["usage", "--config", str(_write(tmp_path, cfg))]) == 0
    total = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("total"))
    assert re.search(r"\s[1-9]\d* JPY\s", total), total


def _write(tmp: Path, cfg: dict[str, object]) -> Path:
    """The same config as a TOML file, for the offline commands (koto usage reads it)."""
    gw = cfg["gateway"]
    assert isinstance(gw, dict)
    p = tmp / "koto.toml"
    p.write_text(f'[gateway]\nid = "{gw["id"]}"\nstate_dir = "{gw["state_dir"]}"\n'
                 '[[appliance]]\nid = "kettle"\nprofile = "kettle"\n'
                 '[appliance.sources.k]\ndriver = "s0"\npin = 17\nimp_per_kwh = 20000\n')
    return p
