"""The cloud-init files an installer copies to the card (deploy/cloud-init/): Debian's cloud-init accepts the
user-data, and netplan renders the network-config to NetworkManager profiles, as Raspberry Pi OS does at boot."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO

CI = REPO / "deploy" / "cloud-init"


def schema(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("cloud-init") is None:
        pytest.fail("cloud-init is not installed: make system-deps (apt-get install cloud-init)")
    return subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)


def load_yaml(path: Path) -> Any:
    """YAML read by the system's Python (cloud-init brings python3-yaml; the venv has no YAML library)."""
    out = subprocess.run(["/usr/bin/python3", "-c", "import json, sys, yaml; "
                          "print(json.dumps(yaml.safe_load(open(sys.argv[1]))))", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def render(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """What cloud-init does with network-config on the Pi: write it for netplan, which renders it."""
    netplan = shutil.which("netplan") or "/usr/sbin/netplan"
    if not Path(netplan).exists():
        pytest.fail("netplan is not installed: make system-deps (apt-get install netplan.io)")
    conf = tmp_path / "etc" / "netplan" / "50-cloud-init.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text(text)
    conf.chmod(0o600)
    return subprocess.run([netplan, "generate", "--root-dir", str(tmp_path)], capture_output=True, text=True)


def test_cloud_init_accepts_the_user_data_without_errors_or_deprecations() -> None:
    out = schema(CI / "user-data")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Valid cloud-config" in out.stdout
    assert "DEPRECATED" not in out.stdout + out.stderr


def test_the_same_check_refuses_a_broken_user_data(tmp_path: Path) -> None:
    broken = tmp_path / "user-data"
    broken.write_text((CI / "user-data").read_text().replace("runcmd:\n", "runcmd: 5\nunused:\n"))
    assert schema(broken).returncode != 0


def test_the_user_data_installs_with_the_install_script_then_runs_the_first_boot_import() -> None:
    data = load_yaml(CI / "user-data")
    steps = [" ".join(map(str, s)) for s in data["runcmd"]]
    install = next(i for i, s in enumerate(steps) if "deploy/install.sh" in s)
    start = next(i for i, s in enumerate(steps) if s.startswith("systemctl start"))
    assert install < start and "koto-firstboot.service" in steps[start]
    assert {"python3-venv", "python3-lgpio"} <= set(data["packages"])
    assert load_yaml(CI / "meta-data")["instance-id"]


def test_netplan_renders_the_network_config_for_network_manager(tmp_path: Path) -> None:
    out = render(tmp_path, (CI / "network-config").read_text())
    assert out.returncode == 0, out.stderr
    profiles = tmp_path / "run" / "NetworkManager" / "system-connections"
    eth = (profiles / "netplan-eth0.nmconnection").read_text()
    wifi = (profiles / "netplan-wlan0-basement-wifi.nmconnection").read_text()
    assert "type=ethernet" in eth and "method=auto" in eth
    assert "ssid=basement-wifi" in wifi and "key-mgmt=wpa-psk" in wifi


def test_netplan_refuses_a_broken_network_config(tmp_path: Path) -> None:
    broken = (CI / "network-config").read_text().replace("dhcp4: true", "dhcp4: sometimes", 1)
    assert render(tmp_path, broken).returncode != 0
