"""The resident daemon's import footprint: `koto run` loads what the daemon needs and not the other commands'
modules (about 4.5 MiB of RSS together: bench/daemon_cost.py, docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]

NOT_FOR_THE_DAEMON = ("gateway.cli_learn", "gateway.cli_provision", "gateway.cli_doctor", "gateway.cli_support",
                      "gateway.learn", "gateway.provision_keys", "importlib.metadata", "email", "cryptography.x509")


def test_the_daemon_imports_no_other_command():
    code = ("import json, sys; import gateway.cli, gateway.runner, gateway.daemon; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "gateway.daemon" in loaded
    assert sorted(loaded & set(NOT_FOR_THE_DAEMON)) == []


def test_every_lazy_command_loads_and_is_listed():
    from gateway.cli import LAZY_COMMANDS, cli

    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in LAZY_COMMANDS:
        assert f"  {name} " in res.output
        assert CliRunner().invoke(cli, [name, "--help"]).exit_code == 0, name


def test_version_is_the_installed_one():
    import koto

    assert koto.__version__ == version("koto-gateway")
