"""What pip installs is what the gateway needs: every data file of the packages is in the wheel's package-data,
and the license is the SPDX form that setuptools keeps building (the table form stops after 2027-02-18)."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch

from tests.support.paths import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES = ["koto", "metering", "drivers", "gateway", "cloud"]


def test_every_data_file_of_the_packages_is_declared_package_data() -> None:
    declared = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*"):
            if not f.is_file() or f.suffix in (".py", ".pyc") or "__pycache__" in f.parts:
                continue
            rel = f.relative_to(REPO / pkg).as_posix()
            if not any(fnmatch(rel, pattern) for pattern in declared.get(pkg, [])):
                missing.append(f"{pkg}/{rel}")
    assert missing == [], "not in [tool.setuptools.package-data], so not in the wheel /opt/koto installs"


def test_the_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    floor = next(r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    version = tuple(int(x) for x in floor.split(">=")[1].split("."))
    assert version >= (77, 0, 3), floor  # PEP 639 license expressions: setuptools 77
