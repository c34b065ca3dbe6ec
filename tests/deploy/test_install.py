"""deploy/install.sh in a throw-away root (an overlay of this machine's Debian, tests/support/rootfs.py): it
installs in an order that works, a second run changes nothing at all, and the installed koto, fed a config by the
first-boot import, runs `koto doctor --json` as the koto user from the installed layout."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from koto.clock import kernel_clock_synced
from tests.support.paths import REPO
from tests.support.rootfs import OverlayRoot, build_wheel, debootstrap_root, wheelhouse, why_not

pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not() is not None, reason=why_not() or "")]

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "koto-tests"

CONFIG = """
[gateway]
id = "gw-0007"
state_dir = "/var/lib/koto"
timezone = "Europe/Berlin"

[[appliance]]
id = "washer"
profile = "washing_machine"
energy = "meter"

[appliance.sources.meter]
driver = "modbus"
model = "sdm120"
port = "/run/koto-sim/ttyKOTO0"
address = 1
"""


@pytest.fixture(scope="module", params=["host-overlay", pytest.param("debootstrap", marks=pytest.mark.debootstrap)])
def root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OverlayRoot, str]]:
    """host-overlay: this machine's Debian as the lower layer (free, in `make test`); debootstrap: a fresh minimal
    Debian 12 made once and cached (`make test-install-debootstrap`)."""
    lower = debootstrap_root(CACHE) if request.param == "debootstrap" else Path("/")
    tmp = tmp_path_factory.mktemp("install")
    wheels = wheelhouse(CACHE)
    wheel = build_wheel(tmp / "dist")
    card = tmp / "card"
    card.mkdir()
    r = OverlayRoot(tmp / "root", {"/mnt/koto-src": REPO, "/mnt/wheels": wheels, "/mnt/dist": wheel.parent,
                                   "/mnt/card": card}, lower=lower)
    yield r, f"/mnt/dist/{wheel.name}"


def test_from_the_checkout_it_builds_its_wheel_without_writing_there_and_a_rerun_changes_nothing(
        tmp_path: Path) -> None:
    """The README's `sudo deploy/install.sh` in a clone: the wheel is built from a copy (the clone is mounted
    read-only here, so a build/ or *.egg-info written into it fails the run), and the rebuilt wheel of an unchanged
    clone is recognised (same RECORD), so the second run reinstalls nothing."""
    r = OverlayRoot(tmp_path / "root", {"/mnt/koto-src": REPO, "/mnt/wheels": wheelhouse(CACHE)},
                    read_only=frozenset({"/mnt/koto-src", "/mnt/wheels"}))
    first = r.run("sh /mnt/koto-src/deploy/install.sh --wheels /mnt/wheels").stdout
    assert "changed: installed koto_gateway-" in first
    before = r.snapshot()
    second = r.run("sh /mnt/koto-src/deploy/install.sh --wheels /mnt/wheels").stdout
    assert [ln for ln in second.splitlines() if ln.startswith("changed:")] == [] and "nothing changed" in second
    assert r.snapshot() == before


def install(r: OverlayRoot, wheel: str) -> str:
    return r.run(f"sh /mnt/koto-src/deploy/install.sh --wheel {wheel} --wheels /mnt/wheels").stdout


def test_install_twice_then_doctor_as_the_koto_user(root: tuple[OverlayRoot, str]) -> None:
    r, wheel = root
    # The old README's order: `sudo koto provision` before the koto user existed left root's files in the state
    # folder, and the service crash-looped. The installer gives them back.
    r.run("mkdir -p -m 0700 /var/lib/koto/keys && chmod 0755 /var/lib/koto")
    first = install(r, wheel)
    assert "changed: gave the files in /var/lib/koto back to koto" in first
    assert "changed: created system user koto" in first
    assert "changed: installed /etc/systemd/system/koto.service" in first
    assert "changed: enabled koto.service" in first and "changed: enabled koto-firstboot.service" in first
    before = r.snapshot()

    second = install(r, wheel)
    assert [ln for ln in second.splitlines() if ln.startswith("changed:")] == [], second
    assert "nothing changed" in second
    assert r.snapshot() == before  # not a byte, not a mode, not an mtime

    # What it made, as the service expects it (the ordering bug of the old README: nothing here belongs to root).
    assert r.run("find /var/lib/koto ! -user koto").stdout == ""
    facts = r.run("stat -c '%U:%G %a' /var/lib/koto /etc/koto; id -nG koto; getent passwd koto | cut -d: -f6,7;"
                  "cmp /mnt/koto-src/systemd/koto.service /etc/systemd/system/koto.service && echo unit-as-is;"
                  "cmp /mnt/koto-src/systemd/journald.conf.d/60-koto.conf "
                  "/etc/systemd/journald.conf.d/60-koto.conf && echo journald-drop-in;"
                  "readlink /etc/systemd/system/multi-user.target.wants/koto.service;"
                  "grep -x 'include-system-site-packages = true' /opt/koto/.venv/pyvenv.cfg").stdout.splitlines()
    assert facts[0] == "koto:koto 700" and facts[1] == "root:koto 750"
    assert set(facts[2].split()) >= {"koto", "gpio", "dialout", "spi"}
    assert facts[3] == "/var/lib/koto:/usr/sbin/nologin"
    assert facts[4:6] == ["unit-as-is", "journald-drop-in"]
    assert facts[6] == "/etc/systemd/system/koto.service"
    assert facts[7] == "include-system-site-packages = true"

    # First boot: the card's koto.toml is imported and the device key made by the koto user.
    (r.binds["/mnt/card"] / "koto.toml").write_text(CONFIG)
    out = r.run("/opt/koto/.venv/bin/koto firstboot --boot /mnt/card; stat -c '%U %a' /etc/koto/koto.toml "
                "/var/lib/koto/keys/device.pem")
    assert out.stdout.splitlines()[-2:] == ["koto 600", "koto 600"], out.stdout
    assert not (r.binds["/mnt/card"] / "koto.toml").exists()

    # A simulated SDM120 on a pty (the installed drivers.modbus_sim), the port as udev makes a USB adapter's
    # (root:dialout 0660), the gateway running as koto, and doctor asked as koto while it runs. The unit lets the
    # service open no pty: doctor fails the port until a drop-in allows it, as tests/image's does for its meter.
    out = r.run(GATEWAY_AND_DOCTOR, check=False)
    refused, *report, who = out.stdout.strip().splitlines()
    assert who == "koto", out.stderr
    assert refused == "1"  # the pty, before the drop-in
    checks = {c["check"]: c for c in json.loads("\n".join(report))["checks"]}
    # The clock is this machine's kernel's (a chroot shares it): synchronised or not, doctor must say the same.
    clock = "ok" if kernel_clock_synced() else "fail"
    assert checks.pop("clock")["status"] == clock
    assert {n: c["status"] for n, c in checks.items()} == {
        "config": "ok", "service user": "ok", "state folder": "ok", "GPIO": "skip", "serial meter": "ok", "SPI": "skip",
        "BLE": "skip", "broker": "skip", "certificates": "skip", "disk": "ok", "ledger": "ok", "backlog": "ok"}, checks
    assert "head seq" in checks["ledger"]["summary"]  # the gateway wrote its ledger as koto


GATEWAY_AND_DOCTOR = """
mkdir -p /run/koto-sim && install -d -o koto -g koto -m 0750 /run/koto
/opt/koto/.venv/bin/python -m drivers.modbus_sim --meter sdm120:1 --link /run/koto-sim/ttyKOTO0 >/dev/null 2>&1 &
sim=$!
for i in $(seq 150); do [ -e /run/koto-sim/ttyKOTO0 ] && break; sleep 0.2; done
pty=$(readlink -f /run/koto-sim/ttyKOTO0) && chgrp dialout "$pty" && chmod 0660 "$pty"
cd /var/lib/koto
RUNTIME_DIRECTORY=/run/koto runuser -u koto -- /opt/koto/.venv/bin/koto run --config /etc/koto/koto.toml 2>/dev/null &
gw=$!
for i in $(seq 300); do [ -e /run/koto/status.json ] && [ -e /var/lib/koto/ledger.db ] && break; sleep 0.2; done
runuser -u koto -- /opt/koto/.venv/bin/koto doctor --json --timeout 1 | grep -c "koto.service lets the service open"
mkdir -p /etc/systemd/system/koto.service.d
printf '[Service]\nDeviceAllow=char-pts rw\n' > /etc/systemd/system/koto.service.d/50-sim.conf
runuser -u koto -- /opt/koto/.venv/bin/koto doctor --json --timeout 1 || true
kill -TERM $gw; wait $gw || true
kill $sim; wait $sim || true
runuser -u koto -- id -un
"""
