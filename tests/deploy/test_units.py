"""The units deploy/install.sh installs beside koto.service: systemd accepts them, and they order and guard the
gateway so that it starts after the first-boot import and never without a config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

SYSTEMD = REPO / "systemd"


def installed(tmp_path: Path) -> Path:
    """The unit folder as installed, with ExecStart pointing at this checkout's koto (verify checks it exists)."""
    koto = str(Path(sys.executable).with_name("koto"))
    (tmp_path / "koto.service.d").mkdir()
    for name in ("koto.service", "koto-firstboot.service", "koto.service.d/10-firstboot.conf"):
        (tmp_path / name).write_text((SYSTEMD / name).read_text().replace("/opt/koto/.venv/bin/koto", koto))
    return tmp_path


def verify(folder: Path, unit: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{folder}:"}  # the trailing colon keeps the default paths too
    return subprocess.run(["systemd-analyze", "verify", "--recursive-errors=no", str(folder / unit)],
                          capture_output=True, text=True, env=env)


def test_systemd_accepts_the_firstboot_unit_and_the_gateway_with_its_drop_in(tmp_path: Path) -> None:
    folder = installed(tmp_path)
    for unit in ("koto-firstboot.service", "koto.service"):
        out = verify(folder, unit)
        assert out.returncode == 0 and out.stderr.strip() == "", (unit, out.stderr)


def test_a_broken_drop_in_is_noticed_by_the_same_check(tmp_path: Path) -> None:
    folder = installed(tmp_path)
    with (folder / "koto.service.d" / "10-firstboot.conf").open("a") as f:
        f.write("ConditionPathExist=/etc/koto/koto.toml\n")  # a typo
    assert "Unknown key" in verify(folder, "koto.service").stderr


def test_the_gateway_waits_for_the_import_and_does_not_start_without_a_config() -> None:
    drop_in = (SYSTEMD / "koto.service.d" / "10-firstboot.conf").read_text().splitlines()
    assert "After=koto-firstboot.service" in drop_in
    assert "ConditionPathExists=/etc/koto/koto.toml" in drop_in
    firstboot = (SYSTEMD / "koto-firstboot.service").read_text().splitlines()
    assert "Before=koto.service" in firstboot and "Type=oneshot" in firstboot
    assert "ExecStart=/opt/koto/.venv/bin/koto -v firstboot" in firstboot
    assert {"ConditionPathExists=|/boot/firmware/koto.toml", "ConditionPathExists=|/boot/koto.toml"} <= set(firstboot)
