"""Home Assistant MQTT discovery: the config payloads against Home Assistant's documented sensor schema, the
[home_assistant] table, and the lifetime energy total that only grows (restarts, pruning, a new ledger)."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.ha_totals import TOTALS_FILE, EnergyTotals
from gateway.homeassistant import HomeAssistantConfig, discovery_configs, kwh, state_payload, topics_for
from tests.support.gw_child import append_usage, open_ledger

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "ha_mqtt_sensor_discovery.schema.json"
DISCOVERY_TOPIC = re.compile(r"^homeassistant/sensor/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config$")  # HA's topic rule


def ha_errors(payload: Any) -> list[str]:
    v = Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in v.iter_errors(payload)]


def test_the_schema_is_valid_and_refuses_what_home_assistant_refuses() -> None:
    Draft202012Validator.check_schema(json.loads(SCHEMA.read_text()))
    good = {"state_topic": "a/b", "unique_id": "u", "device": {"identifiers": ["x"]},
            "device_class": "energy", "state_class": "total_increasing", "unit_of_measurement": "kWh"}
    assert ha_errors(good) == []
    assert ha_errors({k: v for k, v in good.items() if k != "state_topic"})  # state_topic is required
    assert ha_errors({**good, "unit_of_measurement": "W"})  # not an energy unit
    assert ha_errors({**good, "state_class": "measurement"})  # energy: total or total_increasing
    assert ha_errors({**good, "device": {"name": "no id"}})  # a device needs identifiers or connections
    assert ha_errors({**good, "state_topic": "a/#"})  # no wildcards in a topic to subscribe to as a state
    assert ha_errors({**good, "unit_of_measurment": "kWh"})  # a misspelt key would be dropped by HA


def test_each_appliance_is_a_device_with_power_function_and_energy_sensors() -> None:
    topics = topics_for(HomeAssistantConfig(host="h"), "gw-0042")
    configs = discovery_configs(topics, "washer.cellar", "washing_machine")
    assert len(configs) == 3
    for topic, payload in configs.items():
        assert DISCOVERY_TOPIC.match(topic), topic
        assert ha_errors(payload) == [], (topic, ha_errors(payload))
        assert payload["device"]["identifiers"] == ["koto_gw-0042_washer_cellar"]
        assert payload["state_topic"] == "koto/gw-0042/washer_cellar/state"
        assert payload["availability_topic"] == "koto/gw-0042/availability"
    by = {p["unique_id"].rsplit("_", 1)[1]: p for p in configs.values()}
    assert (by["power"]["device_class"], by["power"]["unit_of_measurement"], by["power"]["state_class"]) == (
        "power", "W", "measurement")
    assert (by["energy"]["device_class"], by["energy"]["unit_of_measurement"], by["energy"]["state_class"]) == (
        "energy", "kWh", "total_increasing")
    assert "device_class" not in by["function"]
    assert len({p["unique_id"] for p in configs.values()}) == 3


def test_the_state_is_one_json_the_templates_read() -> None:
    assert state_payload(2_200_456, "boil", 1_234_567_891) == {"power_w": 2200.5, "function": "boil",
                                                               "energy_kwh": "1234.567891"}
    assert state_payload(0, "", 999) == {"power_w": 0.0, "function": "idle", "energy_kwh": "0.000999"}
    assert [kwh(v) for v in (0, 1, 1_000_000, 12_345_678_999)] == ["0.000000", "0.000001", "1.000000",
                                                                   "12345.678999"]


def _cfg(tmp: Path, ha: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"gateway": {"id": "gw-ha", "state_dir": str(tmp / "state")},
                           "appliance": [{"id": "kettle", "profile": "kettle",
                                          "sources": {"k": {"driver": "s0", "pin": 17, "imp_per_kwh": 1000}}}]}
    if ha is not None:
        doc["home_assistant"] = ha
    return doc


def test_the_home_assistant_table_is_off_by_default_and_every_error_names_its_key(tmp_path: Path) -> None:
    assert parse_config(_cfg(tmp_path, None), file="koto.toml").home_assistant is None
    cfg = parse_config(_cfg(tmp_path, {"host": "ha.local", "username": "koto", "password": "pw", "ca": "ca.pem"}),
                       file="koto.toml", base=tmp_path)
    ha = cfg.home_assistant
    assert ha is not None and (ha.host, ha.port, ha.tls, ha.ca, ha.discovery_prefix) == (
        "ha.local", 8883, True, tmp_path / "ca.pem", "homeassistant")
    for table, key, words in (
            ({}, "host", "missing"),
            ({"host": "h", "port": 0}, "port", "1 to 65535"),
            ({"host": "h", "password": "x"}, "password", "needs a username"),
            ({"host": "h", "discovery_prefix": "ha/#"}, "discovery_prefix", "wildcards"),
            ({"host": "h", "hots": "x"}, "hots", "unknown key")):
        with pytest.raises(ConfigError, match=rf"koto.toml: home_assistant.{key}: .*{words}"):
            parse_config(_cfg(tmp_path, table), file="koto.toml")


def test_a_ca_that_cannot_be_loaded_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    from gateway.daemon import Gateway
    from gateway.state import StateDir
    from koto.clock import SystemClock

    StateDir(tmp_path / "state").provision()
    cfg = parse_config(_cfg(tmp_path, {"host": "h", "ca": "missing.pem"}), file="koto.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"koto.toml: home_assistant.ca: cannot load .*missing.pem"):
        Gateway(cfg, clock=SystemClock(), sync_enabled=False)
    Gateway(dataclasses.replace(cfg, home_assistant=None), clock=SystemClock(),
            sync_enabled=False).ledger.close()  # the ledger was released: it opens again


def _sum(ledger: Any) -> int:
    return sum(r.energy_mwh for r in ledger.iter_usage())


def test_the_lifetime_total_survives_pruning_a_restart_and_a_new_ledger(tmp_path: Path) -> None:
    """The records the cloud acked leave the ledger after retain_days; the total Home Assistant sees does not."""
    state = tmp_path / "state"
    ledger = open_ledger(state, "gw-ha")
    append_usage(ledger, 40)
    totals = EnergyTotals(state, rebase_s=0)  # the daemon moves its base every 6 h; pruning waits a day or more
    assert totals.start(ledger) == {} and totals.pending  # no base yet: counted by catch_up, in the background
    first = totals.catch_up(threading.Event())["washer"]
    assert first == _sum(ledger) > 0 and not totals.pending
    append_usage(ledger, 10)
    assert totals.refresh(ledger)["washer"] == _sum(ledger)
    seq, head_hash = ledger.head()
    ledger.mark_acked(ledger.epoch, seq, head_hash)
    assert ledger.prune(1, 1_764_460_800.0 + 30 * 86_400) > 0  # all but the chain head, gone
    assert _sum(ledger) < first
    before = totals.refresh(ledger)["washer"]
    assert before >= first
    ledger.close()

    ledger = open_ledger(state, "gw-ha")  # the gateway starts again: the base file carries what was pruned
    again = EnergyTotals(state)
    assert again.start(ledger)["washer"] == before and not again.pending  # a restart: counted at once
    append_usage(ledger, 5)
    grown = again.refresh(ledger)["washer"]
    assert grown > before
    assert again.refresh(ledger, save=True)["washer"] == grown  # a clean stop saves the base
    ledger.close()

    (state / "ledger.db").unlink()  # a new ledger (another epoch) in the same folder: its records add on top
    for side in state.glob("ledger.db-*"):
        side.unlink()
    ledger = open_ledger(state, "gw-ha", epoch=8)
    append_usage(ledger, 3)
    third = EnergyTotals(state)
    assert third.start(ledger) == {} and third.pending
    assert third.catch_up(threading.Event())["washer"] == grown + _sum(ledger)
    ledger.close()
    assert json.loads((state / TOTALS_FILE).read_text())["epoch"] == 8


def test_the_household_brokers_password_stays_out_of_a_support_bundle() -> None:
    from gateway.redact import redact_toml_text

    text = '[home_assistant]\nhost = "ha.local"\nusername = "koto"\npassword = "s3cret-pw"   # the broker user\n'
    out = redact_toml_text(text)
    assert "s3cret-pw" not in out and 'host = "ha.local"' in out and "# the broker user" in out


@given(st.integers(0, 10**15), st.integers(0, 10**15))
def test_the_energy_text_is_exact_and_keeps_the_order(a: int, b: int) -> None:
    """Home Assistant parses the text as a float: no float drift may make a larger total read smaller."""
    assert int(kwh(a).replace(".", "")) == a
    if a <= b:
        assert float(kwh(a)) <= float(kwh(b))


def test_koto_check_names_every_household_problem_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main as koto

    cfg = tmp_path / "koto.toml"
    cfg.write_text(f'[gateway]\nid = "gw-x"\nstate_dir = "{tmp_path / "state"}"\n\n[gateway.led]\npin = 17\n\n'
                   '[home_assistant]\nhost = "h"\nport = 0\n\n[[appliance]]\nid = "kettle"\nprofile = "kettle"\n'
                   '[appliance.sources.k]\ndriver = "s0"\npin = 17\nimp_per_kwh = 1000\n')
    assert koto(["check", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert f"{cfg}: home_assistant.port: expected a port number" in out
    assert f"{cfg}: appliance.kettle.sources.k.pin: GPIO 17" in out and "(see gateway.led)" in out


def test_the_recent_records_sum_through_the_primary_key_as_through_the_usage_index(tmp_path: Path) -> None:
    """`Ledger.energy_from` (a start's and a refresh's sum, O(records since the base)) adds up what `iter_usage`
    (the usage index) adds up, from every seq: partition kinds only (cycles carry theirs as cycle_energy_mwh), every
    appliance, lifecycle records left out."""
    from metering.records import RecordKind
    from tests.support.drafts import lifecycle, usage

    ledger = open_ledger(tmp_path / "state", "gw-ha")
    kinds = (RecordKind.FUNCTION, RecordKind.INTERIM, RecordKind.GAP, RecordKind.CYCLE)
    ledger.append([usage(i, kind=kinds[i % 4], appliance=("washer", "dryer", "oven")[i % 3], energy_mwh=1000 + 7 * i,
                         extra={"reason": "restart"} if kinds[i % 4] == RecordKind.GAP else None) for i in range(30)])
    ledger.append([lifecycle("start")])
    ledger.append([usage(i, appliance="washer", energy_mwh=10 + i) for i in range(30, 36)])
    head = ledger.head()[0]
    for from_seq in range(1, head + 2):
        by_index: dict[str, int] = {}
        for r in ledger.iter_usage(from_seq=from_seq):
            by_index[r.appliance] = by_index.get(r.appliance, 0) + r.energy_mwh
        found = {a: e for a, e in ledger.energy_from(from_seq).items() if e}
        assert found == {a: e for a, e in by_index.items() if e}, from_seq
    ledger.close()
