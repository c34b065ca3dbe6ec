"""Pairing's core without a browser: STATE_DIR/household.toml edited as text (the installer's config only read),
validated before it is written, refused in plain words; pairing as the service user with a config folder it cannot
write; pairing mode's expiry, and the installer PIN (salted hash, rate-limited tries)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import cli
from gateway.config import load_config
from gateway.pairing import PairingError, PairingMode, append_block, appliance_block, remove_block
from gateway.web.pin import PinError, Tries, hash_pin, load_pin_hash, save_pin, verify_pin
from tests.support.as_user import AS_ROOT
from tests.support.paths import REPO

CONFIG = """# the installer's notes: keep me
[gateway]
id = "gw-1"
state_dir = "state"   # beside this file

[[appliance]]
id = "washer"
profile = "washing_machine"

[appliance.sources.washer-plug]
driver = "bthome"
address = "A4:C1:38:00:00:01"

[tariff]  # a table after the appliances: a new [[appliance]] must still join the array
id = "t"
version = 1
currency = "EUR"
rates = [{ match = "*/*", per_kwh = "0.30" }]
"""
DRYER = {"driver": "bthome", "address": "A4:C1:38:00:00:02"}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "koto.toml"
    p.write_text(text)
    p.chmod(0o640)
    return p


def household(tmp_path: Path) -> Path:
    return tmp_path / "state" / "household.toml"


def test_an_appliance_goes_to_household_toml_validated_and_comes_back_out_exactly(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    (tmp_path / "state").mkdir()
    cfg, added = append_block(path, appliance_block("dryer", "tumble_dryer", "dryer-plug", DRYER, when=0))
    assert path.read_text() == CONFIG  # the installer's file is never written
    assert household(tmp_path).read_text() == added and added.startswith("# Added on the status page on 1970-01-01")
    assert [a.id for a in cfg.appliances] == ["washer", "dryer"]
    assert cfg.appliances[1].sources["dryer-plug"] == DRYER and cfg.tariff is not None
    assert [a.id for a in load_config(path).appliances] == ["washer", "dryer"]  # what the next start reads
    cfg = remove_block(path, added)
    assert household(tmp_path).read_text() == "" and [a.id for a in cfg.appliances] == ["washer"]


def test_a_gateway_whose_config_folder_is_read_only_still_pairs_and_writes_only_its_state_folder(
        tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = write(etc, CONFIG.replace('state_dir = "state"', f'state_dir = "{tmp_path / "state"}"'))
    (tmp_path / "state").mkdir()
    before = path.read_bytes()
    etc.chmod(0o555)  # as /etc/koto is for the service (root ignores it: the listing below still guards)
    try:
        _, first = append_block(path, appliance_block("dryer", "tumble_dryer", "dryer-plug", DRYER, when=0))
        append_block(path, appliance_block("fridge", "fridge_freezer", "fridge-plug",
                                           {**DRYER, "address": "A4:C1:38:00:00:03"}, when=60))
        remove_block(path, first)
    finally:
        etc.chmod(0o755)
    assert path.read_bytes() == before and sorted(p.name for p in etc.iterdir()) == ["koto.toml"]
    assert [a.id for a in load_config(path).appliances] == ["washer", "fridge"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["household.toml"]


@pytest.mark.parametrize(("profile", "source", "said"), [
    ("no_such_profile", "dryer-plug", "would not be valid with this appliance"),
    ("tumble_dryer", "washer-plug", "is a source of 'washer'"),
])
def test_a_block_that_would_make_the_config_invalid_is_refused_and_nothing_is_written(
        tmp_path: Path, profile: str, source: str, said: str) -> None:
    path = write(tmp_path, CONFIG)
    (tmp_path / "state").mkdir()
    with pytest.raises(PairingError) as err:
        append_block(path, appliance_block("dryer", profile, source, DRYER, when=0))
    assert said in err.value.problem and "nothing was changed" in err.value.problem
    assert path.read_text() == CONFIG
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == []  # no temp file left behind


def test_a_household_toml_that_cannot_take_an_appended_table_is_refused_in_plain_words(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    (tmp_path / "state").mkdir()
    inline = 'appliance = []  # written as an inline array: TOML cannot add a [[appliance]] table to it\n'
    household(tmp_path).write_text(inline)
    with pytest.raises(PairingError) as err:
        append_block(path, appliance_block("dryer", "tumble_dryer", "dryer-plug", DRYER, when=0))
    assert "would not be valid TOML with this appliance added" in err.value.problem
    assert household(tmp_path).read_text() == inline


def test_undo_refuses_when_the_block_was_edited_since(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    (tmp_path / "state").mkdir()
    _, added = append_block(path, appliance_block("dryer", "tumble_dryer", "dryer-plug", DRYER, when=0))
    hh = household(tmp_path)
    hh.write_text(hh.read_text().replace('"tumble_dryer"', '"washing_machine"'))
    with pytest.raises(PairingError, match="was changed since the appliance was added"):
        remove_block(path, added)


def test_pairing_mode_is_on_until_left_or_expired() -> None:
    mode = PairingMode(duration_s=600)
    assert not mode.active_at(0)
    mode.enter(100.0)
    assert mode.active_at(100.0) and mode.active_at(699.0) and not mode.active_at(700.0)
    mode.enter(100.0)
    mode.leave()
    assert not mode.active_at(101.0)


def test_only_a_salted_hash_of_the_pin_is_stored_and_it_verifies(tmp_path: Path) -> None:
    path = save_pin(tmp_path, "2468")
    stored = load_pin_hash(tmp_path)
    assert stored is not None and "2468" not in stored and stored.startswith("scrypt$")
    assert path.stat().st_mode & 0o777 == 0o600
    assert verify_pin("2468", stored) and not verify_pin("2469", stored) and not verify_pin("", stored)
    assert hash_pin("2468") != hash_pin("2468")  # salted
    assert load_pin_hash(tmp_path / "elsewhere") is None


def test_pin_tries_are_free_at_first_then_each_must_wait_longer() -> None:
    tries = Tries(free=3, cap_s=60)
    for _ in range(3):
        assert tries.wait_s("10.0.0.7", now=0.0) == 0
        tries.failed("10.0.0.7", now=0.0)
    waits = []
    for _ in range(8):
        tries.failed("10.0.0.7", now=0.0)
        waits.append(tries.wait_s("10.0.0.7", now=0.0))
    assert waits == sorted(waits) and waits[0] > 0 and waits[-1] == 60  # doubling, capped
    assert tries.wait_s("10.0.0.8", now=0.0) == 0  # another client is not held up
    tries.succeeded("10.0.0.7")
    assert tries.wait_s("10.0.0.7", now=0.0) == 0


def test_koto_provision_sets_the_installer_pin_asked_twice(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = CliRunner().invoke(cli, ["provision", "--state-dir", str(state), "--set-pin"], input="13579\n13579\n")
    assert result.exit_code == 0, result.output
    stored = load_pin_hash(state)
    assert stored is not None and verify_pin("13579", stored)
    refused = CliRunner().invoke(cli, ["provision", "--state-dir", str(state), "--set-pin"], input="12\n")
    # a PinError, which `koto` prints as one plain line (tests/gateway/test_provision.py runs it that way)
    assert isinstance(refused.exception, PinError) and "four to twelve digits" in str(refused.exception)
    assert verify_pin("13579", load_pin_hash(state) or "")  # the PIN set before is kept


PAIR_AS_OTHER_USER = """
import os, sys
from pathlib import Path
import importlib.readers, importlib.resources.readers
import gateway.pairing, gateway.daemon, gateway.config_household, metering.profile, drivers.bthome
from gateway.pairing import append_block, appliance_block
if os.geteuid() == 0:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
cfg, _ = append_block(Path(sys.argv[1]), appliance_block("dryer", "tumble_dryer", "dryer-plug",
                                                         {"driver": "bthome", "address": "A4:C1:38:00:00:02"}, when=0))
print(",".join(a.id for a in cfg.appliances))
"""


def test_the_service_user_pairs_with_a_config_folder_it_cannot_write() -> None:
    """As on an install: koto.toml in a folder of root's (0755; 0555 when not run as root), the state folder the
    service user's own. Pairing as that user works and writes only the state folder."""
    tmp_path = Path(tempfile.mkdtemp(prefix="koto-pair-"))  # not under pytest's 0700 folder: `nobody` must reach it
    try:
        _pair_as_service_user(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _pair_as_service_user(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir(mode=0o755)
    state.mkdir(mode=0o700)
    path = write(etc, CONFIG.replace('state_dir = "state"', f'state_dir = "{state}"'))
    path.chmod(0o644)
    if AS_ROOT:
        os.chown(state, 65534, 65534)
    else:
        etc.chmod(0o555)
    try:
        out = subprocess.run([sys.executable, "-c", PAIR_AS_OTHER_USER, str(path)], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
    finally:
        etc.chmod(0o755)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "washer,dryer" and path.read_text() == CONFIG.replace(
        'state_dir = "state"', f'state_dir = "{state}"')
    assert sorted(p.name for p in etc.iterdir()) == ["koto.toml"]
    hh = state / "household.toml"
    assert "[appliance.sources.dryer-plug]" in hh.read_text()
    if AS_ROOT:
        assert hh.stat().st_uid == 65534  # the service's own file, which it can replace again (undo)
