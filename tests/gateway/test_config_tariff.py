"""A `[tariff]` edited after the first start: applied as a new version when its version goes up, refused (one
warning, `koto check` fails) when the content changed under the same version, and left alone when the cloud's tariff
prices the same appliances. Real starts of the gateway on a real ledger."""

from __future__ import annotations

import asyncio
import copy
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import parse_config
from gateway.config_tariff import CONFIG_TARIFF_DOC, plan_config_tariff
from gateway.daemon import Gateway
from gateway.state import StateDir
from koto.clock import ManualClock
from metering.ledger import Doc, Ledger
from metering.tariff import Tariff

TARIFF: dict[str, Any] = {"id": "home", "version": 1, "currency": "EUR", "rates": [{"match": "*", "per_kwh": "0.30"}]}


def config(tmp: Path, tariff: dict[str, Any]) -> dict[str, Any]:
    return {"gateway": {"id": "gw-t", "state_dir": str(tmp / "state")}, "tariff": tariff,
            "appliance": [{"id": "kettle", "profile": "kettle",
                           "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 1000}}}]}


def start_and_stop(tmp: Path, tariff: dict[str, Any]) -> Tariff:
    """Start the gateway for real (its pricing snapshot is checkpointed at the clean stop); the tariff in force."""
    from drivers.gpio.sim import mock_factory

    gw = Gateway(parse_config(config(tmp, tariff), file="koto.toml"), clock=ManualClock(),
                 backends={"pin_factory": mock_factory()}, sync_enabled=False)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await asyncio.sleep(0.2)
        stop.set()
        await task

    asyncio.run(run())
    t = gw.pricing.tariff_for("kettle")
    assert t is not None
    return t


def edited(**changes: Any) -> dict[str, Any]:
    t = copy.deepcopy(TARIFF)
    t.update(changes)
    return t


def write_toml(tmp: Path, tariff: dict[str, Any]) -> Path:
    rates = ", ".join(f'{{match = "{r["match"]}", per_kwh = "{r["per_kwh"]}"}}' for r in tariff["rates"])
    text = (f'[gateway]\nid = "gw-t"\nstate_dir = "state"\n\n[tariff]\nid = "{tariff["id"]}"\n'
            f'version = {tariff["version"]}\ncurrency = "EUR"\nrates = [{rates}]\n\n'
            '[[appliance]]\nid = "kettle"\nprofile = "kettle"\n[appliance.sources.k]\ndriver = "s0"\npin = 17\n'
            "imp_per_kwh = 1000\n")
    p = tmp / "koto.toml"
    p.write_text(text)
    return p


def test_an_edit_with_a_higher_version_applies_at_the_next_start_and_is_recorded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    StateDir(tmp_path / "state").provision()
    assert start_and_stop(tmp_path, TARIFF).rates[0].per_kwh == Tariff.from_dict(TARIFF).rates[0].per_kwh
    new = edited(version=2, rates=[{"match": "*", "per_kwh": "0.40"}])
    with caplog.at_level(logging.INFO, logger="koto.tariff"):
        t = start_and_stop(tmp_path, new)
    assert (t.version, str(t.rates[0].per_kwh)) == (2, "0.40")
    assert "version 2 applies to the records priced from now on (it replaces version 1)" in caplog.text
    sd = StateDir(tmp_path / "state")
    with Ledger.open(sd.ledger, gateway_id="gw-t", key=None) as ledger:
        doc = ledger.doc(CONFIG_TARIFF_DOC, "home")
    assert doc is not None and doc.version == 2 and doc.body["rates"][0]["per_kwh"] == "0.40"
    # and it stays: a third start with the same file keeps version 2
    assert start_and_stop(tmp_path, new).version == 2


def test_an_edit_under_the_same_version_is_refused_with_one_warning_and_koto_check_fails(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    StateDir(tmp_path / "state").provision()
    start_and_stop(tmp_path, TARIFF)
    same_version = edited(rates=[{"match": "*", "per_kwh": "0.40"}])
    with caplog.at_level(logging.INFO, logger="koto.tariff"):
        t = start_and_stop(tmp_path, same_version)
    assert (t.version, str(t.rates[0].per_kwh)) == (1, "0.30")  # records keep version 1's prices
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "koto.toml: tariff.version: [tariff] 'home' was edited but its version 1 is not above version 1" in \
        warnings[0].getMessage()
    assert "set version = 2" in warnings[0].getMessage()
    path = write_toml(tmp_path, same_version)
    assert main(["check", "--config", str(path)]) == 1
    assert f"{path}: tariff.version: [tariff] 'home' was edited" in capsys.readouterr().out
    path = write_toml(tmp_path, edited(version=2, rates=[{"match": "*", "per_kwh": "0.40"}]))
    assert main(["check", "--config", str(path)]) == 0
    assert "version 2 applies to the records priced from now on (it replaces version 1)" in capsys.readouterr().err


def test_a_tariff_from_the_cloud_for_the_same_appliances_supersedes_the_config(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "state")
    sd.provision()
    start_and_stop(tmp_path, TARIFF)
    cloud = {"id": "cloud-2026", "version": 3, "currency": "EUR", "exponent": 2,
             "rates": [{"match": "*/*", "per_kwh": "0.25"}], "windows": []}
    with Ledger.open(sd.ledger, gateway_id="gw-t", key=sd.private_key()) as ledger:
        ledger.append([], docs=[Doc("tariff", "cloud-2026", 3, cloud)])
    t = start_and_stop(tmp_path, edited(version=5, rates=[{"match": "*", "per_kwh": "0.99"}]))
    assert (t.id, t.version) == ("cloud-2026", 3)


@pytest.mark.parametrize(
    ("config_t", "in_use", "cloud", "action"),
    [
        (TARIFF, [], [], "apply"),
        (TARIFF, [TARIFF], [], "same"),
        (edited(version=2), [TARIFF], [], "apply"),
        (edited(currency="USD"), [TARIFF], [], "refused"),
        (TARIFF, [edited(version=2)], [], "refused"),  # a lowered version
        (TARIFF, [], [edited(id="c")], "superseded"),  # a cloud default prices the same (all) appliances
        (TARIFF, [], [edited(id="c", appliances=["washer"])], "apply"),  # a cloud tariff for one appliance only
        (edited(appliances=["washer"]), [], [edited(id="c", appliances=["washer", "dryer"])], "superseded"),
    ],
)
def test_the_plan(config_t: dict[str, Any], in_use: list[dict[str, Any]], cloud: list[dict[str, Any]],
                  action: str) -> None:
    plan = plan_config_tariff(config_t, "koto.toml", [Tariff.from_dict(t) for t in in_use],
                              [Tariff.from_dict(t) for t in cloud])
    assert plan.action == action
    assert (plan.problem is not None) == (action == "refused")
