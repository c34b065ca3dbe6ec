"""Every OS, permission, encoding and key-file error a `koto` command can meet is one line, `koto: PATH: what is
wrong; what to do`, and exit code 2, never a traceback (issue 10). The commonest: a state folder made by root (e.g.
`sudo koto provision`) for a service that runs as `koto`: the README's crash loop."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main as koto
from gateway.state import StateDir
from metering.ledger import Ledger
from tests.support.as_user import AS_ROOT, koto_as_other_user
from tests.support.drafts import batch


def one_line(out: subprocess.CompletedProcess[str] | str) -> str:
    err = out if isinstance(out, str) else out.stderr
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("koto: ")
    return lines[0]


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder every user can reach (pytest's own tmp_path sits under a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="koto-perm-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def root_state(open_tmp: Path) -> Path:
    """A provisioned state folder with a ledger, owned by this process, not writable by anyone else."""
    tmp_path = open_tmp
    sd = StateDir(tmp_path / "state")
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id="gw-e", key=sd.private_key()) as ledger:
        ledger.append(batch(0, 3))
    os.chmod(sd.root, 0o755 if AS_ROOT else 0o500)  # root: the other user may look but not write
    (tmp_path / "koto.toml").write_text(
        f'[gateway]\nid = "gw-e"\nstate_dir = "{sd.root}"\n\n[[appliance]]\nid = "kettle"\nprofile = "kettle"\n'
        '[appliance.sources.k]\ndriver = "modbus"\nmodel = "sdm120"\nport = "/dev/ttyKOTO-none"\n')
    os.chmod(tmp_path / "koto.toml", 0o644)
    return sd.root


@pytest.mark.parametrize("command", [
    ["provision"], ["verify"], ["usage"], ["usage", "--by", "cycle"],
])
def test_a_state_folder_of_another_user_is_one_line_that_names_the_owner(root_state: Path, command: list[str]) -> None:
    out = koto_as_other_user(*command, "--state-dir", root_state)
    assert out.returncode == 2
    line = one_line(out)
    assert str(root_state) in line and ("owned by" in line or "run the command as" in line)


def test_koto_run_on_a_state_folder_of_another_user_is_one_line(root_state: Path) -> None:
    out = koto_as_other_user("run", "--config", root_state.parent / "koto.toml")
    assert out.returncode == 2
    assert "owned by" in one_line(out)


def test_provision_into_a_folder_the_user_cannot_create_in(open_tmp: Path) -> None:
    parent = open_tmp / "locked"
    parent.mkdir(mode=0o755 if AS_ROOT else 0o500)
    out = koto_as_other_user("provision", "--state-dir", parent / "state")
    assert out.returncode == 2
    assert "permission denied" in one_line(out)


def test_a_config_that_is_not_utf8_names_the_file_and_the_byte(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "koto.toml"
    text = b'[gateway]\nid = "gw-\xe9"\n'  # Latin-1, as an editor on another system may save it
    cfg.write_bytes(text)
    assert koto(["usage", "--config", str(cfg)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(cfg) in line and "not UTF-8" in line and f"byte {text.index(0xE9)}" in line


def test_a_profile_that_is_not_utf8_names_the_file(tmp_path: Path, capsys) -> None:
    profile = tmp_path / "mine.toml"
    profile.write_bytes(b'name = "sp\xfclmaschine"\n')
    cfg = tmp_path / "koto.toml"
    cfg.write_text(f'[gateway]\nid = "gw-e"\nstate_dir = "{tmp_path / "state"}"\n\n[[appliance]]\nid = "dw"\n'
                   f'profile = "{profile}"\n[appliance.sources.k]\ndriver = "modbus"\nmodel = "sdm120"\n'
                   'port = "/dev/ttyKOTO-none"\n')
    StateDir(tmp_path / "state").provision()
    assert koto(["run", "--config", str(cfg)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(profile) in line and "not UTF-8" in line


def test_an_unreadable_device_key_is_one_line(root_state: Path) -> None:
    (root_state / "keys" / "device.pub.pem").unlink()  # verify then needs the private key, which is 0600
    os.chmod(root_state, 0o777)  # the folder and ledger are usable by anyone; only the key is not
    os.chmod(root_state / "keys", 0o755)
    out = koto_as_other_user("verify", "--state-dir", root_state)
    assert out.returncode == 2
    line = one_line(out)
    assert "device.pem" in line and "owned by" in line
