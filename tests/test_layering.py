"""The flow has one direction: drivers -> gateway <- metering, with koto/ as shared vocabulary below all three.

Hardware and network libraries are imported only by the backend that needs them, so importing a layer must not
pull them in (a laptop without BlueZ or lgpio still runs everything else).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO as ROOT

FORBIDDEN = {
    "koto": {"metering", "drivers", "gateway", "cloud"},
    "metering": {"drivers", "gateway", "cloud"},
    "drivers": {"metering", "gateway", "cloud"},
    "gateway": {"cloud"},
}
HEAVY = ["lgpio", "gpiozero", "bleak", "bthome_ble", "pymodbus", "serial", "aiomqtt", "paho", "psycopg"]


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


def test_metering_core_never_imports_hardware_or_network_libraries() -> None:
    offenders = []
    for path in sorted((ROOT / "metering").rglob("*.py")):
        bad = imported_packages(path) & set(HEAVY)
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


def test_importing_the_layers_and_the_cli_loads_no_hardware_library() -> None:
    code = (
        "import sys, metering, drivers, drivers.base, gateway, gateway.cli, gateway.config, koto.reading\n"
        f"heavy = {HEAVY!r}\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_reading_every_drivers_traits_and_loading_a_config_loads_no_hardware_library() -> None:
    """Traits live on the driver classes (drivers/base.py), so learning them imports each driver's module: those
    modules import their hardware library only inside the functions that open a device."""
    code = (
        "import sys\n"
        "from drivers.base import REGISTRY, driver_class\n"
        "from gateway.config import load_config\n"
        "traits = [(c.energy_kind, c.needs, c.takes_start_count) for c in map(driver_class, REGISTRY)]\n"
        "load_config('deploy/koto.example.toml')\n"
        f"heavy = {HEAVY!r}\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
