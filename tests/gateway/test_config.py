"""The gateway config: a good file loads; every bad one names the file and the key and says what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.errors import UnknownDriver
from gateway.config import load_config
from gateway.errors import ConfigError
from koto.errors import FieldError

GOOD = """
[gateway]
id = "gw-0001"
state_dir = "state"
timezone = "Europe/Berlin"

[cloud]
broker = "mqtts://broker.example.net:8883"
ca = "ca.pem"
cert = "gw.crt"
key = "gw.key"
operator_keys = ["operator.pub.pem"]

[[appliance]]
id = "washer"
profile = "washing_machine"
subject = "household-42/washer"
energy = "washer-meter"

[appliance.sources.washer-meter]
driver = "modbus"
model = "sdm120"
port = "/dev/ttyUSB0"
address = 1

[[appliance]]
id = "kettle"
profile = "kettle"

[appliance.sources.kettle-s0]
driver = "s0"
pin = 17
imp_per_kwh = 1000
"""


BROKER = 'broker = "mqtts://broker.example.net:8883"'


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "koto.toml"
    p.write_text(text)
    return p


def test_a_good_config_loads_with_paths_resolved_next_to_the_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.id == "gw-0001"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.cloud is not None and cfg.cloud.ca == tmp_path / "ca.pem"
    assert cfg.cloud.operator_keys == (tmp_path / "operator.pub.pem",)
    washer, kettle = cfg.appliances
    assert (washer.energy, washer.energy_kind, washer.subject) == ("washer-meter", "register", "household-42/washer")
    assert (kettle.energy, kettle.energy_kind, kettle.imp_per_kwh) == ("kettle-s0", "pulses", 1000)
    assert kettle.subject == "urn:koto:gw:gw-0001:kettle"
    assert cfg.source_owner() == {"washer-meter": "washer", "kettle-s0": "kettle"}


@pytest.mark.parametrize(
    ("old", "new", "key", "says"),
    [
        ('id = "gw-0001"', 'id = "gw 0001!"', "gateway.id", "not allowed"),
        ('timezone = "Europe/Berlin"', 'timezone = "Mars/Olympus"', "gateway.timezone", "IANA"),
        ('broker = "mqtts://broker.example.net:8883"', 'broker = "http://x"', "cloud.broker", "mqtt://"),
        ('energy = "washer-meter"', 'energy = "nope"', "appliance.washer.energy", "not one of"),
        ("imp_per_kwh = 1000", "imp_per_kwh = 0", "imp_per_kwh", "0 is out of range"),  # the S0 driver's key
        ('profile = "kettle"', 'profile = "kettle"\ncolour = "red"', "appliance.kettle.colour", "unknown key"),
        ('state_dir = "state"', "state_dir = 5", "gateway.state_dir", "expected a file path"),
        ('driver = "s0"', 'pin_no = 3', "appliance.kettle.sources.kettle-s0.driver", "missing"),
        (BROKER, f"{BROKER}\nwindow = 10001", "cloud.window", "1 to 10000"),
        (BROKER, f'{BROKER}\ntopic_prefix = "koto/#"', "cloud.topic_prefix", "without wildcards"),
        (BROKER, 'broker = "mqtt://broker.example.net/path"', "cloud.broker", "no path"),
        ('key = "gw.key"', "", "cloud.cert", "both `cert` and `key`"),
        ('timezone = "Europe/Berlin"', 'timezone = "Europe/Berlin"\nretain_days = 0', "gateway.retain_days", "1 to"),
        ('timezone = "Europe/Berlin"', 'timezone = "Europe/Berlin"\ncheckpoint_s = 0', "gateway.checkpoint_s",
         "0.1 to 3600"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(tmp_path: Path, old: str, new: str, key: str, says: str) -> None:
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(FieldError) as err:  # ConfigError, or a driver's DriverConfigError for its own keys
        load_config(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert says in err.value.problem


def test_a_missing_file_and_broken_toml_are_plain_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.toml")
    assert str(err.value) == f"{tmp_path / 'absent.toml'}: file not found"  # no key to name: no "-: " between
    with pytest.raises(ConfigError, match=r"koto\.toml: not valid TOML"):
        load_config(write(tmp_path, "[gateway\nid="))


def test_two_appliances_cannot_share_a_source_name(tmp_path: Path) -> None:
    text = GOOD.replace("[appliance.sources.kettle-s0]", "[appliance.sources.washer-meter]")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert "already used by appliance 'washer'" in err.value.problem


def test_retain_days_and_web_port_are_carried(tmp_path: Path) -> None:
    """`retain_days` drives pruning (default 90); `web_port` is where the household page listens (default 8080,
    0 = off), and a bad value of either is named (above)."""
    cfg = load_config(write(tmp_path, GOOD.replace('timezone = "Europe/Berlin"',
                                                   'timezone = "Europe/Berlin"\nretain_days = 30\nweb_port = 80')))
    assert cfg.retain_days == 30 and cfg.web_port == 80
    assert load_config(write(tmp_path, GOOD)).retain_days == 90
    assert load_config(write(tmp_path, GOOD)).web_port == 8080
    assert load_config(write(tmp_path, GOOD)).checkpoint_s == 300


def test_the_cloud_table_becomes_the_sync_config_with_the_gateway_id(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace(BROKER, f"{BROKER}\nwindow = 10000")))
    assert cfg.cloud is not None
    assert (cfg.cloud.gateway_id, cfg.cloud.window, cfg.cloud.url.port) == ("gw-0001", 10_000, 8883)


def test_an_unknown_driver_is_named_when_the_config_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('driver = "s0"', 'driver = "s1"'))
    with pytest.raises(UnknownDriver) as err:
        load_config(path)
    assert (err.value.file, err.value.source, err.value.key) == (str(path), "kettle-s0", "driver")
    assert "allowed: bthome, gpio_signal, line, mcp3008, modbus, s0" in err.value.problem
