"""The pi-gen stage runs deploy/install.sh inside the image's root, with the source copied in and removed after.

pi-gen itself is not run (an hour under emulation, and its stage0 needs archive.raspberrypi.com); its interface to
a stage is stood in: the exported `ROOTFS_DIR` and `STAGE_DIR`, and `on_chroot`, the function that runs its stdin in
the root. The stand-in mounts what pi-gen's own `on_chroot` mounts before it chroots (scripts/common on the arm64
and bookworm branches: a fresh tmpfs on the root's /tmp and /run, so nothing put there beforehand is seen inside),
in a mount namespace of its own, then records the script and what the root holds at that moment."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO

STAGE = REPO / "deploy" / "pi-gen" / "stage-koto"


def run_stage(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    root, seen = tmp_path / "rootfs", tmp_path / "seen"
    for d in ("tmp", "run", "var/tmp"):
        (root / d).mkdir(parents=True)
    script = f"""
on_chroot() {{
    # pi-gen (scripts/common): "mount -t tmpfs tmpfs ${{ROOTFS_DIR}}/run" and ".../tmp" unless already mounted
    mountpoint -q "$ROOTFS_DIR/run" || mount -t tmpfs tmpfs "$ROOTFS_DIR/run"
    mountpoint -q "$ROOTFS_DIR/tmp" || mount -t tmpfs tmpfs "$ROOTFS_DIR/tmp"
    script=$(cat); echo "$script" > {seen}/script
    src=$(echo "$script" | grep -o '^sh /[^ ]*/deploy/install.sh' | cut -d' ' -f2)
    ls -R "$ROOTFS_DIR${{src%/deploy/install.sh}}" > {seen}/files
}}
export -f on_chroot
mkdir -p {seen}
cd {STAGE / "00-koto"} && ./00-run.sh
"""
    # A mount namespace of its own (as root, or as a user through a user namespace): the tmpfs mounts end with it.
    out = subprocess.run(["unshare", "--mount", "--map-root-user", "bash", "-c", script], capture_output=True,
                         text=True, env={**os.environ, "ROOTFS_DIR": str(root), "STAGE_DIR": str(STAGE), **env})
    return out, root, seen


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A Koto source tree that is not a git checkout (a release tarball): copied as it is, without .venv."""
    src = tmp_path / "koto"
    (src / "deploy").mkdir(parents=True)
    (src / "deploy" / "install.sh").write_text("#!/bin/sh\n")
    (src / "pyproject.toml").write_text("[project]\nname = 'koto-gateway'\n")
    (src / ".venv").mkdir()
    (src / ".venv" / "big").write_text("not for the image")
    return src


@pytest.mark.skipif(shutil.which("bash") is None, reason="pi-gen stages are bash")
def test_the_stage_runs_the_install_script_in_the_root_and_leaves_no_copy(tmp_path: Path, checkout: Path) -> None:
    out, root, seen = run_stage(tmp_path, KOTO_SRC=str(checkout))
    assert out.returncode == 0, out.stderr
    script = (seen / "script").read_text()
    assert "sh /var/tmp/koto-src/deploy/install.sh \n" in script and "/opt/koto/.venv/bin/koto --version" in script
    files = (seen / "files").read_text()
    assert "install.sh" in files and "pyproject.toml" in files and "big" not in files
    assert not (root / "var" / "tmp" / "koto-src").exists() and not list((root / "tmp").iterdir())


def test_a_given_wheel_is_installed_instead_of_building_one(tmp_path: Path, checkout: Path) -> None:
    wheel = tmp_path / "koto_gateway-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    out, _root, seen = run_stage(tmp_path, KOTO_SRC=str(checkout), KOTO_WHEEL=str(wheel))
    assert out.returncode == 0, out.stderr
    assert f"install.sh --wheel /var/tmp/koto-src/{wheel.name}" in (seen / "script").read_text()
    assert wheel.name in (seen / "files").read_text()


def test_without_the_install_script_the_stage_stops_and_says_why(tmp_path: Path) -> None:
    out, _root, seen = run_stage(tmp_path, KOTO_SRC=str(tmp_path))
    assert out.returncode == 1
    assert "deploy/install.sh not found; set KOTO_SRC" in out.stderr
    assert not (seen / "script").exists()
