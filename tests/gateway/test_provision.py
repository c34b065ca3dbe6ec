"""`koto provision`: the device key is written all or nothing, and a new key never silently orphans a ledger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main as koto
from gateway.state import StateDir
from koto.signing import load_public_key
from metering.ledger import Ledger
from tests.support.drafts import batch
from tests.support.paths import REPO


def provisioned_with_records(tmp_path: Path, n: int = 5) -> StateDir:
    sd = StateDir(tmp_path / "state")
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id="gw-p", key=sd.private_key(), epoch=1_790_000_000) as ledger:
        ledger.append(batch(0, n))
    return sd


def test_force_while_a_ledger_exists_is_refused_and_the_key_kept(tmp_path: Path, capsys) -> None:
    sd = provisioned_with_records(tmp_path)
    before = sd.private_key_path.read_bytes()
    assert koto(["provision", "--state-dir", str(sd.root), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--new-epoch" in err and "ledger.db" in err
    assert sd.private_key_path.read_bytes() == before
    assert koto(["verify", "--state-dir", str(sd.root)]) == 0


def test_a_new_epoch_archives_the_old_ledger_verifiably_and_records_the_change(tmp_path: Path, capsys) -> None:
    sd = provisioned_with_records(tmp_path, 5)
    old_pub = sd.public_key_path.read_text()
    assert koto(["provision", "--state-dir", str(sd.root), "--force", "--new-epoch"]) == 0
    err = capsys.readouterr().err
    assert "archived epoch 1790000000" in err and "5 record(s) of epoch 1790000000 were never acknowledged" in err
    archive = sd.root / "ledger-1790000000.db"
    assert (sd.keys / "device-1790000000.pub.pem").read_text() == old_pub
    with Ledger.open(archive, gateway_id="gw-p", key=None) as old:
        assert old.verify(load_public_key(old_pub)).ok and old.head()[0] == 5
    assert sd.public_key_path.read_text() != old_pub
    with Ledger.open(sd.ledger, gateway_id="gw-p", key=None) as new:
        assert new.epoch > 1_790_000_000
        assert new.verify(sd.public_key()).ok
        first = next(iter(new.iter_records())).event()
    assert first["data"]["event"] == "new_epoch"
    assert (first["data"]["previous_epoch"], first["data"]["previous_head_seq"]) == (1_790_000_000, 5)
    assert koto(["verify", "--state-dir", str(sd.root)]) == 0


def test_a_new_epoch_is_refused_while_the_gateway_writes_the_ledger(tmp_path: Path, capsys) -> None:
    sd = provisioned_with_records(tmp_path)
    with Ledger.open(sd.ledger, gateway_id="gw-p", key=sd.private_key()):
        assert koto(["provision", "--state-dir", str(sd.root), "--force", "--new-epoch"]) == 2
    assert "stop it first" in capsys.readouterr().err
    assert not (sd.root / "ledger-1790000000.db").exists()


def test_a_write_that_fails_half_way_leaves_no_empty_key_and_later_commands_say_one_line(tmp_path: Path) -> None:
    """A full disk (here a file-size limit of 100 bytes: the PEM is ~240) must not leave a 0-byte device.pem."""
    state = tmp_path / "state"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "from gateway.cli import main\n"
        f"sys.exit(main(['provision', '--state-dir', {str(state)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("koto: ") and "Traceback" not in out.stderr
    assert not (state / "keys" / "device.pem").exists()
    assert [p.name for p in (state / "keys").iterdir()] == []  # no temporary file left behind


@pytest.mark.parametrize("content", [b"", b"garbage, not a key\n"])
def test_an_empty_or_garbage_key_file_is_one_plain_line(tmp_path: Path, capsys, content: bytes) -> None:
    sd = StateDir(tmp_path / "state")
    sd.provision()
    sd.private_key_path.write_bytes(content)
    os.unlink(sd.public_key_path)
    assert koto(["provision", "--state-dir", str(sd.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device.pem" in err and "--new-epoch" in err


def _set_pin_from(tmp_path: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    """`koto provision --set-pin` as a script runs it: stdin a pipe, and (a new session) no terminal to fall back on."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", "provision", "--state-dir", str(tmp_path / "state"),
                           "--set-pin"], input=stdin, capture_output=True, text=True, cwd=REPO,
                          start_new_session=True, timeout=60)


def test_a_pin_on_stdin_is_read_without_getpass_s_warning(tmp_path: Path) -> None:
    from gateway.web.pin import load_pin_hash, verify_pin

    done = _set_pin_from(tmp_path, "13579\n13579\n")
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "getpass" not in done.stderr and "echoed" not in done.stderr, done.stderr
    assert "installer PIN set" in done.stderr
    assert verify_pin("13579", load_pin_hash(tmp_path / "state") or "")


@pytest.mark.parametrize(("stdin", "said"), [
    ("12\n12\n", "four to twelve digits"),
    ("13579\n24680\n", "differ"),
    ("13579\n", "twice"),
    ("", "no installer PIN"),
])
def test_a_bad_pin_on_stdin_is_one_plain_line_and_nothing_is_written(tmp_path: Path, stdin: str, said: str) -> None:
    done = _set_pin_from(tmp_path, stdin)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("koto: ") and said in done.stderr, done.stderr
    assert "aborted" not in done.stderr.lower() and "Warning" not in done.stderr
    assert not (tmp_path / "state").exists()  # refused before the key or anything else is made
