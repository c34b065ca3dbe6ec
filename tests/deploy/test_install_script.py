"""deploy/install.sh as a shell script: shellcheck finds nothing, and it refuses plainly what it cannot do."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.paths import REPO

SCRIPT = REPO / "deploy" / "install.sh"


def test_shellcheck_finds_nothing() -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: make system-deps (apt-get install shellcheck)")
    out = subprocess.run(["shellcheck", "--shell=sh", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_unknown_options_and_missing_wheels_are_one_plain_line() -> None:
    out = subprocess.run(["sh", str(SCRIPT), "--colour"], capture_output=True, text=True)
    assert out.returncode == 1 and "install.sh: unknown option: --colour" in out.stderr
    if os.geteuid() == 0:
        out = subprocess.run(["sh", str(SCRIPT), "--wheel", "/nonexistent.whl"], capture_output=True, text=True)
        assert out.returncode == 1 and out.stderr.strip() == "install.sh: /nonexistent.whl: no such wheel"
    else:
        out = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True)
        assert out.returncode == 1 and "run it as root" in out.stderr
