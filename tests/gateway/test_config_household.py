"""STATE_DIR/household.toml, what pairing and learn mode add on the gateway itself: read after the installer's config,
it may add appliances (with their sources) and override an appliance's profile, nothing else; every problem names
household.toml and the key; `koto check` says which file each problem is in and lists what the household added."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError, ConfigErrors

CONFIG = """\
[gateway]
id = "gw-1"
state_dir = "state"

[[appliance]]
id = "washer"
profile = "washing_machine"
[appliance.sources.washer-plug]
driver = "bthome"
address = "A4:C1:38:00:00:01"
"""
DRYER = """\
[[appliance]]
id = "dryer"
profile = "tumble_dryer"
[appliance.sources.dryer-plug]
driver = "bthome"
address = "A4:C1:38:00:00:02"
"""
LEARNED = '[override."washer"]\nprofile = "profiles/washer.toml"\n'


def gateway(tmp_path: Path, household: str | None) -> Path:
    (tmp_path / "koto.toml").write_text(CONFIG)
    (tmp_path / "state" / "profiles").mkdir(parents=True)
    if household is not None:
        (tmp_path / "state" / "household.toml").write_text(household)
    return tmp_path / "koto.toml"


def problems(path: Path) -> list[str]:
    try:
        load_config(path)
    except ConfigErrors as e:
        return [str(x) for x in e.errors]
    except ConfigError as e:
        return [str(e)]
    return []


def test_without_household_toml_the_config_is_the_installers_alone(tmp_path: Path) -> None:
    assert [a.id for a in load_config(gateway(tmp_path, None)).appliances] == ["washer"]


def test_paired_appliances_are_added_and_a_learned_profile_overrides_the_configs(tmp_path: Path) -> None:
    path = gateway(tmp_path, DRYER + LEARNED + '[override."dryer"]\nprofile = "profiles/dryer.toml"\n')
    cfg = load_config(path)
    state = tmp_path / "state"
    assert [(a.id, a.profile) for a in cfg.appliances] == [("washer", str(state / "profiles" / "washer.toml")),
                                                          ("dryer", str(state / "profiles" / "dryer.toml"))]
    assert cfg.appliances[1].sources["dryer-plug"]["driver"] == "bthome" and cfg.id == "gw-1"


@pytest.mark.parametrize(("household", "key", "said"), [
    ('[gateway]\nid = "evil"\n', "gateway", "not allowed in household.toml"),
    ('[cloud]\nbroker = "mqtts://x:8883"\n', "cloud", "not allowed in household.toml"),
    ('[tariff]\nid = "free"\n', "tariff", "not allowed in household.toml"),
    (DRYER.replace('"dryer"', '"washer"', 1), "appliance.washer.id", "is an appliance of"),
    (DRYER.replace("dryer-plug", "washer-plug"), "appliance.dryer.sources.washer-plug", "is a source of 'washer'"),
    (DRYER.replace('address = "A4:C1:38:00:00:02"', 'address = "A4:C1:38:00:00:01"'),
     "appliance.dryer.sources.dryer-plug.address", "washer-plug"),
    (DRYER.replace('profile = "tumble_dryer"', 'profile = "tumble_dryer"\nsubject = "someone-else"'),
     "appliance.dryer.subject", "set by the installer"),
    (DRYER.replace('profile = "tumble_dryer"', 'profile = "tumble_dryer"\nrelay = { pin = 5 }'),
     "appliance.dryer.relay", "set by the installer"),
    ('[override."washer"]\nprofile = "/etc/koto/evil.toml"\n', "override.washer.profile", "must be a .toml file under"),
    ('[override."washer"]\nprofile = "profiles/../../koto.toml"\n', "override.washer.profile", "must be a .toml"),
    ('[override."washer"]\nprofile = "profiles/washer.toml"\nenergy = "x"\n', "override.washer.energy",
     "may change only an appliance's profile"),
    (DRYER.replace('"tumble_dryer"', '"/tmp/dryer.toml"'), "appliance.dryer.profile", "a household profile must be"),
    ("[[appliance]\n", "", "not valid TOML"),
])
def test_anything_but_additions_and_profile_overrides_is_an_error_naming_household_toml_and_the_key(
        tmp_path: Path, household: str, key: str, said: str) -> None:
    found = problems(gateway(tmp_path, household))
    where = f"{tmp_path / 'state' / 'household.toml'}: {key + ': ' if key else ''}"
    assert any(p.startswith(where) and said in p for p in found), found


def test_an_override_for_an_appliance_that_is_gone_is_ignored_not_a_gateway_that_will_not_start(
        tmp_path: Path) -> None:
    path = gateway(tmp_path, '[override."kettle"]\nprofile = "profiles/kettle.toml"\n')
    assert [(a.id, a.profile) for a in load_config(path).appliances] == [("washer", "washing_machine")]


def test_koto_check_names_the_file_of_each_problem_and_lists_what_the_household_added(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = gateway(tmp_path, DRYER + LEARNED)
    (tmp_path / "state" / "profiles" / "washer.toml").write_text("not a profile [")
    assert main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    hh = tmp_path / "state" / "household.toml"
    assert f"{hh}: override.washer.profile: " in out  # the learned file is broken: said where it is set
    assert f"household: appliance dryer (profile tumble_dryer; source dryer-plug (bthome)) added by pairing, in {hh}" \
        in out
    assert f"household: appliance washer uses the learned profile {tmp_path / 'state' / 'profiles' / 'washer.toml'}" \
        in out
    (tmp_path / "state" / "profiles" / "washer.toml").unlink()
    (tmp_path / "koto.toml").write_text(CONFIG.replace('"washing_machine"', '"no_such"'))
    (hh).write_text(DRYER.replace('"tumble_dryer"', '"no_such_either"'))
    assert main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: appliance.washer.profile: " in out and f"{hh}: appliance.dryer.profile: " in out
