"""The example config installers copy (deploy/koto.example.toml) loads, and every source in it builds."""

from __future__ import annotations

from drivers.base import build_source
from drivers.ble_backend import ReplayBackend
from drivers.gpio.sim import mock_factory
from gateway.config import load_config
from koto.clock import ManualClock
from metering.profile import builtin_profile
from tests.support.paths import REPO

EXAMPLE = REPO / "deploy" / "koto.example.toml"


def test_the_example_config_is_valid_and_every_source_builds() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.cloud is not None and cfg.cloud.protocol == 5
    assert {a.id for a in cfg.appliances} == {"washer", "dryer", "kettle", "aircon", "coffee"}
    clock = ManualClock()
    backends = {"pin_factory": mock_factory(), "ble": ReplayBackend(clock=clock)}
    for app in cfg.appliances:
        builtin_profile(app.profile)
        for name, scfg in app.sources.items():
            src = build_source(name, scfg, clock=clock, file=str(EXAMPLE), **backends)
            assert src.name == name
    assert next(a for a in cfg.appliances if a.id == "dryer").channel == "L2"
    assert next(a for a in cfg.appliances if a.id == "kettle").energy_kind == "pulses"
