"""`koto provision` for a new gateway: koto.toml from flags or questions, a CSR the operator's CA signs into a
certificate a real TLS broker accepts, fingerprints either side can check, and the operator's key pinned."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pty
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gateway.cli import main as koto
from gateway.config import load_config
from gateway.state import StateDir
from gateway.sync import Sync
from koto.clock import ManualClock
from koto.signing import generate_key, public_pem
from metering.ledger import Ledger
from tests.support.broker import Mosquitto
from tests.support.paths import REPO
from tests.support.pki import TestPKI
from tests.support.slow import scaled


def operator_key(path: Path) -> Path:
    path.write_text(public_pem(generate_key()))
    return path


def der_sha256(pem: bytes) -> str:
    key = serialization.load_pem_public_key(pem)
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def test_flags_write_a_private_config_a_csr_for_the_gateway_id_and_print_both_fingerprints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, state = tmp_path / "etc" / "koto.toml", tmp_path / "state"
    op = operator_key(tmp_path / "op.pub.pem")
    assert koto(["provision", "--config", str(cfg), "--state-dir", str(state), "--id", "gw-0042",
                 "--timezone", "Europe/Berlin", "--operator-key", str(op)]) == 0
    out, err = capsys.readouterr()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    loaded = load_config(cfg)
    assert (loaded.id, loaded.state_dir, loaded.timezone, loaded.cloud) == ("gw-0042", state, "Europe/Berlin", None)

    sd = StateDir(state)
    assert out == sd.public_key_path.read_text()  # stdout is still the public key alone: `> gw.pub.pem` works
    csr = x509.load_pem_x509_csr((sd.keys / "device.csr.pem").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-0042"
    assert public_pem(csr.public_key()) == out  # type: ignore[arg-type]
    assert f"fingerprint sha256:{der_sha256(out.encode())}" in err
    pinned = cfg.parent / "operator.pub.pem"
    assert pinned.read_text() == op.read_text()
    assert f"fingerprint sha256:{der_sha256(op.read_bytes())}" in err
    assert "# operator_keys" in cfg.read_text()  # no [cloud] yet: the key is named for when it syncs


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_printed_fingerprint_is_what_openssl_computes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert koto(["provision", "--state-dir", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    pub = tmp_path / "s" / "keys" / "device.pub.pem"
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(pub), "-outform", "DER"], capture_output=True,
                         check=True).stdout
    assert f"fingerprint sha256:{hashlib.sha256(der).hexdigest()}" in err
    assert "no certificate request" in err  # no gateway id, no CSR


async def test_the_csr_signed_by_the_operators_ca_is_a_certificate_the_tls_broker_accepts(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    with Mosquitto(tmp_path / "broker", pki=pki) as broker:
        cfg, state = tmp_path / "etc" / "koto.toml", tmp_path / "state"
        assert koto(["provision", "--config", str(cfg), "--state-dir", str(state), "--id", "gw-csr",
                     "--broker", broker.url, "--ca", str(pki.ca),
                     "--operator-key", str(operator_key(tmp_path / "op.pub.pem"))]) == 0
        loaded = load_config(cfg)
        assert loaded.cloud is not None and loaded.cloud.cert == cfg.parent / "gw-csr.crt"
        assert loaded.cloud.ca == cfg.parent / "ca.pem" and loaded.cloud.key == StateDir(state).private_key_path
        assert loaded.cloud.operator_keys == (cfg.parent / "operator.pub.pem",)
        pki.sign_request((state / "keys" / "device.csr.pem").read_bytes(), loaded.cloud.cert)

        sd = StateDir(state)
        with Ledger.open(sd.ledger, gateway_id="gw-csr", key=sd.private_key(), epoch=1) as ledger:
            async with Sync(loaded.cloud, ledger, clock=ManualClock()) as sync:
                async with asyncio.timeout(scaled(20)):
                    while not sync.health.connected:  # noqa: ASYNC110 - the sync's health has no event
                        await asyncio.sleep(0.02)


def test_a_rerun_keeps_the_csr_and_a_new_epoch_makes_a_new_one(tmp_path: Path) -> None:
    cfg, state = tmp_path / "koto.toml", tmp_path / "state"
    assert koto(["provision", "--config", str(cfg), "--state-dir", str(state), "--id", "gw-1"]) == 0
    csr = state / "keys" / "device.csr.pem"
    first = csr.read_bytes()
    assert koto(["provision", "--config", str(cfg)]) == 0
    assert csr.read_bytes() == first  # ECDSA is randomised: an unchanged request is not re-signed
    with Ledger.open(StateDir(state).ledger, gateway_id="gw-1", key=StateDir(state).private_key(), epoch=1):
        pass
    assert koto(["provision", "--config", str(cfg), "--force", "--new-epoch"]) == 0
    new = x509.load_pem_x509_csr(csr.read_bytes())
    assert public_pem(new.public_key()) == StateDir(state).public_key_path.read_text()  # type: ignore[arg-type]


@pytest.mark.parametrize("broker", [[], ["--broker", "mqtt://127.0.0.1:1883"]])
def test_a_rerun_prints_both_fingerprints_again(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 broker: list[str]) -> None:
    """docs/provisioning.md: a re-run without flags keeps the key and prints both fingerprints again, so the
    installer can read them to the operator later; the pinned operator key's was missing."""
    cfg, state = tmp_path / "etc" / "koto.toml", tmp_path / "state"
    op = operator_key(tmp_path / "op.pub.pem")
    assert koto(["provision", "--config", str(cfg), "--state-dir", str(state), "--id", "gw-1", *broker,
                 "--operator-key", str(op)]) == 0
    capsys.readouterr()
    assert koto(["provision", "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert f"fingerprint sha256:{der_sha256(out.encode())}" in err
    assert (f"operator key pinned at {cfg.parent / 'operator.pub.pem'}, fingerprint "
            f"sha256:{der_sha256(op.read_bytes())}; compare it with the operator's") in err


def test_an_existing_config_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "koto.toml"
    assert koto(["provision", "--config", str(cfg), "--state-dir", str(tmp_path / "s"), "--id", "gw-1"]) == 0
    before = cfg.read_bytes()
    capsys.readouterr()
    assert koto(["provision", "--config", str(cfg), "--id", "gw-2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(cfg) in err and "--id" in err and "move it away" in err
    assert cfg.read_bytes() == before


@pytest.mark.parametrize(("flags", "names"), [
    (["--timezone", "Mars/Olympus"], "gateway.timezone"),
    (["--broker", "https://cloud.example.net"], "cloud.broker"),
    (["--id", "gw one"], "gateway.id"),
])
def test_a_bad_flag_is_one_line_naming_the_key_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], names: str) -> None:
    cfg, state = tmp_path / "etc" / "koto.toml", tmp_path / "state"
    args = ["provision", "--config", str(cfg), "--state-dir", str(state)]
    args += flags if "--id" in flags else ["--id", "gw-1", *flags]
    assert koto(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err and "Traceback" not in err
    assert not cfg.exists() and not state.exists()


def test_an_operator_key_that_is_not_one_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "op.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot a key\n-----END CERTIFICATE-----\n")
    cfg = tmp_path / "etc" / "koto.toml"
    assert koto(["provision", "--config", str(cfg), "--state-dir", str(tmp_path / "s"), "--id", "gw-1",
                 "--operator-key", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err
    assert not cfg.parent.exists() or list(cfg.parent.iterdir()) == []


def test_a_pinned_operator_key_is_not_swapped_silently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, state = tmp_path / "koto.toml", tmp_path / "state"
    first, second = operator_key(tmp_path / "a.pub.pem"), operator_key(tmp_path / "b.pub.pem")
    assert koto(["provision", "--config", str(cfg), "--state-dir", str(state), "--id", "gw-1",
                 "--broker", "mqtt://127.0.0.1:1883", "--operator-key", str(first)]) == 0
    pinned = tmp_path / "operator.pub.pem"
    capsys.readouterr()
    assert koto(["provision", "--config", str(cfg), "--operator-key", str(first)]) == 0
    assert "already pinned" in capsys.readouterr().err
    assert koto(["provision", "--config", str(cfg), "--operator-key", str(second)]) == 2
    assert "--replace-operator-key" in capsys.readouterr().err
    assert pinned.read_text() == first.read_text()
    assert koto(["provision", "--config", str(cfg), "--operator-key", str(second), "--replace-operator-key"]) == 0
    assert pinned.read_text() == second.read_text()


def test_pinning_needs_a_config_to_pin_beside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    op = operator_key(tmp_path / "op.pub.pem")
    assert koto(["provision", "--state-dir", str(tmp_path / "s"), "--operator-key", str(op)]) == 2
    assert "--config FILE" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root")
def test_run_as_root_the_files_go_to_the_owner_of_the_state_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # the install script made it for the service's user
    cfg = tmp_path / "etc" / "koto.toml"
    assert koto(["provision", "--config", str(cfg), "--state-dir", str(state), "--id", "gw-1",
                 "--operator-key", str(operator_key(tmp_path / "op.pub.pem"))]) == 0
    made = [state / "keys", *(state / "keys").iterdir(), cfg]
    assert {(p.name, p.stat().st_uid) for p in made} == {(p.name, 65534) for p in made}
    assert (cfg.parent / "operator.pub.pem").stat().st_uid == 0  # whom it trusts stays root's to change


def test_on_a_terminal_the_questions_write_the_config(tmp_path: Path) -> None:
    """A real pty: the installer's answers (one wrong, asked again) become the config."""
    cfg, state = tmp_path / "etc" / "koto.toml", tmp_path / "state"
    op = operator_key(tmp_path / "op.pub.pem")
    answers = ["gw 7", "gw-7", "Europe/Berlin", str(state), "", str(op)]
    controller, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "provision", "--config", str(cfg)],
                            stdin=child, stdout=subprocess.PIPE, stderr=child, cwd=REPO, env={
                                **os.environ, "PYTHONPATH": str(REPO), "KOTO_CONFIG": ""})
    os.close(child)
    seen = b""
    try:
        for answer in answers:
            while not seen.rstrip().endswith((b":", b"]:")):  # the next question
                chunk = os.read(controller, 4096)
                assert chunk, seen.decode(errors="replace")
                seen += chunk
            seen = b""
            os.write(controller, answer.encode() + b"\n")
        out = proc.communicate(timeout=scaled(30))[0]
    finally:
        proc.kill()
        os.close(controller)
    assert proc.returncode == 0
    loaded = load_config(cfg)
    assert (loaded.id, loaded.state_dir, loaded.timezone, loaded.cloud) == ("gw-7", state, "Europe/Berlin", None)
    assert out.decode() == StateDir(state).public_key_path.read_text()
    assert (cfg.parent / "operator.pub.pem").read_text() == op.read_text()
