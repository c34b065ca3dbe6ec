"""The resident daemon's import footprint: `koto run` loads what the daemon needs and not the other commands'
modules (about 4.5 MiB of RSS together: bench/daemon_cost.py, docs/performance.md), nor multiprocessing (only
`koto verify`'s parallel check uses it) or html (its entity tables; the page escapes with gateway.web.markup)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]

NOT_FOR_THE_DAEMON = ("gateway.cli_learn", "gateway.cli_provision", "gateway.cli_doctor", "gateway.cli_support",
                      "gateway.learn", "gateway.provision_keys", "importlib.metadata", "email", "cryptography.x509",
                      "multiprocessing", "html")


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


def test_koto_run_takes_the_light_path_and_imports_no_click(tmp_path: Path) -> None:
    """The console script (gateway.entry) runs `koto run` without click: a real start, its imports as Python
    reports them (-X importtime), until the config fails to load after the daemon's modules are in."""
    bad = tmp_path / "koto.toml"
    bad.write_text('[gateway]\nid = "fp"\nstate_dir = "' + str(tmp_path / "s") + '"\nbogus = 1\n')
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "gateway.entry", "-v", "run", "--config",
                          str(bad)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "gateway.config" in imported and "gateway.logs" in imported
    assert "click" not in imported and "gateway.cli" not in imported
    said = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert len(said) == 1 and said[0].startswith(f"koto: {bad}: gateway.bogus: "), said  # as gateway.cli says it


def test_the_light_path_takes_only_what_it_knows():
    from gateway.entry import daemon_args

    env = {"KOTO_CONFIG": "/x/env.toml"}
    assert daemon_args(["run", "--config", "/x/k.toml"], env) == (0, "/x/k.toml")
    assert daemon_args(["-v", "-v", "run", "--config=/x/k.toml"], env) == (2, "/x/k.toml")
    assert daemon_args(["-vv", "run"], env) == (2, "/x/env.toml")
    for other in (["run", "--help"], ["run", "--config"], ["usage"], ["run", "--config", "a", "b"], ["--version"],
                  ["run", "-h"], []):
        assert daemon_args(other, env) is None, other
