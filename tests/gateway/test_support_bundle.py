"""`koto support-bundle`: a config full of secrets goes in, and no secret comes out in any file of the archive."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.redact import redact_toml_text
from gateway.state import StateDir
from metering.ledger import Ledger
from tests.support.drafts import usage
from tests.support.pki import TestPKI

BINDKEY = "231d39c1d7cc1ab1aee224cd096db932"
SECRETS = {
    "password": "hunter2-correct-horse",
    "token": "tok_live_9f8e7d6c5b4a",
    "api_key": "AKIAIOSFODNN7EXAMPLE",
    "array token": "tok-in-an-array-0001",
    "dotted secret": "dotted-secret-value-42",
}


def secret_config(tmp: Path) -> tuple[Path, list[str]]:
    pki = TestPKI(tmp / "pki")
    pair = pki.client("gw-sb")
    key_pem = pair.key.read_text()
    inline_pem = TestPKI(tmp / "other").client("x").key.read_text()
    text = f'''
[gateway]
id = "gw-sb"
state_dir = "state"
token = "{SECRETS["token"]}"

[cloud]
broker = "mqtts://localhost:1"
ca = "{pki.ca}"
cert = "{pair.cert}"
key = "{pair.key}"
password = "{SECRETS["password"]}"
auth = {{ api_key = "{SECRETS["api_key"]}" }}
tokens = ["{SECRETS["array token"]}"]
client.secret = "{SECRETS["dotted secret"]}"
private_pem = """
{inline_pem}"""

[[appliance]]
id = "washer"
profile = "washing_machine"

[appliance.sources.plug]
driver = "bthome"
address = "A4:C1:38:8D:18:B2"
bindkey = "{BINDKEY}"
'''
    p = tmp / "koto.toml"
    p.write_text(text)
    secrets = [*SECRETS.values(), BINDKEY, *_pem_lines(key_pem), *_pem_lines(inline_pem)]
    return p, secrets


def _pem_lines(pem: str) -> list[str]:
    return [ln for ln in pem.strip().splitlines() if not ln.startswith("-----")]


@pytest.fixture
def fake_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """journald has no peer here: a `journalctl` on PATH prints what a real one would, including a careless line
    quoting the bindkey and the password."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = [{"MESSAGE": "koto starting", "PRIORITY": "6"},
             {"MESSAGE": f"plug: bad MIC with bindkey {BINDKEY}", "PRIORITY": "4"},
             {"MESSAGE": f"broker auth failed for password {SECRETS['password']}", "PRIORITY": "3"}]
    script = bin_dir / "journalctl"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(json.dumps(x) for x in lines) + "\nEOF\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_no_secret_of_the_config_is_in_any_file_of_the_bundle(tmp_path: Path, fake_journal: None,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config, secrets = secret_config(tmp_path)
    sd = StateDir(tmp_path / "state")
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id="gw-sb", key=sd.private_key()) as ledger:
        ledger.append([usage(i) for i in range(3)] + [usage(3, appliance="kettle", function="boil")])
    out = tmp_path / "bundle.tar.gz"
    assert main(["support-bundle", "--config", str(config), "--out", str(out), "--user", "root",
                 "--runtime-dir", str(tmp_path / "run"), "--timeout", "0.5"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out)
    assert printed.err == ""  # no terminal: no progress lines
    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile()}
    assert set(files) >= {"config/koto.toml", "doctor.json", "status.json", "ledger.json", "logs.jsonl",
                          "records/washer.json", "records/kettle.json", "system.json", "MANIFEST.txt"}
    leaks = [(name, s) for name, text in files.items() for s in secrets if s in text]
    assert leaks == []
    assert "PRIVATE KEY" not in "".join(files.values())
    # what is not secret stays readable
    cfg = files["config/koto.toml"]
    assert 'id = "gw-sb"' in cfg and 'address = "A4:C1:38:8D:18:B2"' in cfg and 'bindkey = "<redacted>"' in cfg
    stats = json.loads(files["ledger.json"])
    assert (stats["head_seq"], stats["acked_through"], stats["backlog"]) == (4, 0, 4)
    assert stats["records_per_appliance"] == {"washer": 3, "kettle": 1}
    assert [r["seq"] for r in json.loads(files["records/washer.json"])] == [1, 2, 3]
    assert "plug: bad MIC with bindkey <redacted>" in files["logs.jsonl"]
    assert {c["check"] for c in json.loads(files["doctor.json"])["checks"]} >= {"config", "state folder", "clock"}


def test_redaction_keeps_the_layout_and_non_secret_values() -> None:
    text = 'id = "gw"\nkey = "/etc/koto/gw.key"  # the client key\nenergy_kind = "pulses"\nbindkey = \'ab\'\n'
    assert redact_toml_text(text) == ('id = "gw"\nkey = "<redacted>"  # the client key\nenergy_kind = "pulses"\n'
                                      'bindkey = "<redacted>"\n')


def test_progress_is_shown_on_a_terminal(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.paths import REPO

    config, _ = secret_config(tmp_path)
    master, slave = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "support-bundle", "--config", str(config),
                               "--out", str(tmp_path / "b.tar.gz"), "--user", "root", "--timeout", "0.2",
                               "--runtime-dir", str(tmp_path / "run")],
                              stdout=subprocess.PIPE, stderr=slave, cwd=REPO, timeout=60)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert done.returncode == 0
    assert b"support-bundle: running the doctor..." in shown
    assert f"support-bundle: writing {tmp_path / 'b.tar.gz'}...".encode() in shown


def test_a_ledger_that_cannot_be_read_is_a_note_and_the_bundle_is_still_made(tmp_path: Path) -> None:
    from gateway.support_bundle import make_bundle

    config, _ = secret_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.db").write_bytes(b"this is not an SQLite database, it is a broken card" * 100)
    out = make_bundle(config, tmp_path / "b.tar.gz", user="root", runtime_dir=tmp_path / "run", timeout_s=0.2)
    with tarfile.open(out) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
        manifest = tar.extractfile(f"{out.name.removesuffix('.tar.gz')}/MANIFEST.txt").read().decode()  # type: ignore[union-attr]
    assert {"config/koto.toml", "doctor.json", "ledger.json", "MANIFEST.txt"} <= names
    assert "note: no ledger statistics:" in manifest or "note: ledger.json:" in manifest


def test_the_bundle_carries_what_the_household_added_in_the_state_folder(tmp_path: Path) -> None:
    """Pairing and learn mode write STATE_DIR/household.toml, not the config: support staff see it in the bundle."""
    from gateway.support_bundle import make_bundle

    config, _ = secret_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "household.toml").write_text('# Added on the status page\n[override."washer"]\n'
                                          'profile = "profiles/washer.toml"\n')
    out = make_bundle(config, tmp_path / "b.tar.gz", state_dir=state, user="root", runtime_dir=tmp_path / "run",
                      timeout_s=0.2)
    with tarfile.open(out) as tar:
        member = tar.extractfile(f"{out.name.removesuffix('.tar.gz')}/config/household.toml")
        assert member is not None
        assert member.read().decode() == (state / "household.toml").read_text()


def test_the_bundle_reads_a_ledger_the_daemon_holds_exclusively_by_borrowing_it(tmp_path: Path) -> None:
    """The daemon owns its ledger (no other connection can read it) and lends it to a reader that asks with a lease
    (metering/ledger/lease.py): the bundle, in another process, asks for both of its reads and gets every record."""
    import subprocess
    import sys
    import threading

    from tests.support.paths import REPO

    config, _ = secret_config(tmp_path)
    sd = StateDir(tmp_path / "state")
    sd.provision()
    out = tmp_path / "b.tar.gz"
    with Ledger.open(sd.ledger, gateway_id="gw-sb", key=sd.private_key(), exclusive=True) as ledger:
        ledger.append([usage(i) for i in range(3)] + [usage(3, appliance="kettle", function="boil")])
        said: list[str | None] = []
        stop = threading.Event()

        def serve() -> None:  # the daemon's loop
            while not stop.wait(0.1):
                said.append(ledger.serve_readers())

        serving = threading.Thread(target=serve)
        serving.start()
        try:
            done = subprocess.run([sys.executable, "-m", "gateway.cli", "support-bundle", "--config", str(config),
                                   "--out", str(out), "--user", "root", "--timeout", "0.2",
                                   "--runtime-dir", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO,
                                  timeout=120)
        finally:
            stop.set()
            serving.join()
    assert done.returncode == 0, done.stderr
    assert "lent" in said
    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile()}
    stats = json.loads(files["ledger.json"])
    assert stats["head_seq"] == 4 and stats["records_per_appliance"] == {"washer": 3, "kettle": 1}
    assert [r["seq"] for r in json.loads(files["records/washer.json"])] == [1, 2, 3]


def test_a_local_only_gateway_has_no_backlog_in_its_bundle(tmp_path: Path, fake_journal: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Without [cloud] nothing is ever sent, so nothing is behind: `backlog` 4 there read as four records stuck,
    beside a doctor that says there is nothing to sync."""
    config = tmp_path / "koto.toml"
    config.write_text('[gateway]\nid = "gw-local"\nstate_dir = "state"\n\n[[appliance]]\nid = "washer"\n'
                      'profile = "washing_machine"\n\n[appliance.sources.plug]\ndriver = "bthome"\n'
                      'address = "A4:C1:38:8D:18:B2"\n')
    sd = StateDir(tmp_path / "state")
    sd.provision()
    with Ledger.open(sd.ledger, gateway_id="gw-local", key=sd.private_key()) as ledger:
        ledger.append([usage(i) for i in range(4)])
    out = tmp_path / "bundle.tar.gz"
    assert main(["support-bundle", "--config", str(config), "--out", str(out), "--user", "root",
                 "--runtime-dir", str(tmp_path / "run"), "--timeout", "0.5"]) == 0
    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/ledger.json"))
        stats = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    assert (stats["head_seq"], stats["backlog"]) == (4, None) and stats["sync"].startswith("none: no [cloud]")


def test_a_journal_without_koto_entries_says_why_there_may_be_none(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """journalctl finding nothing exits 0 with nothing on stderr: logs.txt read `(journalctl exit 0: )`. It now says,
    as `koto logs` does, that the journal may be in RAM only (Raspberry Pi OS without Koto's drop-in)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "journalctl").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "journalctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config, _ = secret_config(tmp_path)
    out = tmp_path / "bundle.tar.gz"
    assert main(["support-bundle", "--config", str(config), "--out", str(out), "--user", "root",
                 "--runtime-dir", str(tmp_path / "run"), "--timeout", "0.2"]) == 0
    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/logs.txt"))
        text = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    assert text == ("no log entries of koto in the last 48 h (has koto run here? journald may keep its journal in "
                    "RAM only, lost at each boot, as Raspberry Pi OS does unless deploy/install.sh installed "
                    "systemd/journald.conf.d/60-koto.conf)\n")
