"""`make image-test`: an arm64 Debian gateway with deploy/install.sh applied, booted under qemu-system-aarch64.

The card's boot partition (a FAT image the guest mounts at /boot/firmware) carries koto.toml; at boot
koto-firstboot imports it on the real mounted vfat, a simulated SDM120 (the installed drivers.modbus_sim) sits on a
pty, koto.service must reach READY (Type=notify: systemd calls it active only after READY=1), and `koto doctor
--json` run as koto in the guest reports. After power-off the FAT image's raw bytes must not hold the config.
A card that also carries a Raspberry Pi's config.txt and cmdline.txt, with the meter on /dev/serial0, makes
koto-firstboot switch the UART on in them and reboot once: that image is booted twice on the same disks (qemu's
-no-reboot ends a run at the guest's reboot, so each run is one boot and a reboot loop cannot hang the test).
Deselected by default (marker `image`); the first run makes the arm64 root (minutes, cached), each boot takes
minutes of full-system emulation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.gateway.test_firstboot import PI_CMDLINE, PI_CONFIG_TXT
from tests.support.paths import REPO
from tests.support.rootfs import OverlayRoot, build_wheel, why_not
from tests.support.vm import arm64_root, arm64_wheelhouse, boot
from tests.support.vm import why_not as vm_why_not

MISSING = why_not() or vm_why_not()
# `make image-test` sets KOTO_IMAGE_TEST=1 after installing what the boot needs: there a missing piece is a failure,
# not a skip that would report a boot test that never ran as passed.
REQUIRED = os.environ.get("KOTO_IMAGE_TEST") == "1"
pytestmark = [pytest.mark.image, pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=MISSING or "")]


@pytest.fixture(autouse=True)
def _everything_the_boot_needs() -> None:
    if MISSING is not None:
        pytest.fail(f"make image-test cannot boot the image here: {MISSING}")

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "koto-tests"
MARK = "KOTO-CARD-SECRET-7f3e9a0c51d2"  # in koto.toml only: must be gone from the card after the import

CONFIG = f"""# {MARK}
[gateway]
id = "gw-0099"
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

SIM_UNIT_TEMPLATE = """[Unit]
Description=Image test: a simulated SDM120 on a pty at {link}
Before=koto.service
{unit}
[Service]
{service}ExecStart=/opt/koto/.venv/bin/python -m drivers.modbus_sim --meter sdm120:1 --link {link}
ExecStartPost=/bin/sh -c 'for i in $(seq 300); do [ -e {link} ] && break; sleep 1; done; \\
  p=$(readlink -f {link}); chgrp dialout "$p"; chmod 0660 "$p"'
TimeoutStartSec=10min

[Install]
WantedBy=multi-user.target
"""

SIM_UNIT = SIM_UNIT_TEMPLATE.format(link="/run/koto-sim/ttyKOTO0", unit="", service="RuntimeDirectory=koto-sim\n")
# A card with a Raspberry Pi's config.txt stands for a Pi: the Pi's own UART, /dev/serial0 (udev's link on Raspberry
# Pi OS), is a second simulated meter's pty. On the other cards the unit is skipped: no /dev/serial0 at all.
SIM_SERIAL0_UNIT = SIM_UNIT_TEMPLATE.format(
    link="/dev/serial0", service="",
    unit="RequiresMountsFor=/boot/firmware\nConditionPathExists=/boot/firmware/config.txt\n")
# The meter on the Pi's UART: koto firstboot switches the UART on in config.txt and takes the kernel's console off it
# in cmdline.txt (gateway/boot_hardware.py), then reboots once. (An MCP3008 source, for dtparam=spi=on, cannot run
# here: Debian 12 has no python3-lgpio, and without a pin factory `koto run` exits at start: a crash loop.)
CONFIG_ON_THE_PI_UART = CONFIG.replace('port = "/run/koto-sim/ttyKOTO0"', 'port = "/dev/serial0"')
# What boot_hardware.switch_on appends to config.txt for it (tests/gateway/test_firstboot.py checks the same text).
UART_LINES = ["[all]", "enable_uart=1", "[pi5]", "dtparam=uart0_console", "[all]"]

# The unit allows only real serial devices (ttyUSB, ttyACM, ttyAMA, ttyS0); the simulated meter is a pty.
SIM_DROP_IN = "[Service]\nDeviceAllow=char-pts rw\n"

REPORT_UNIT = """[Unit]
Description=Image test: report koto's state and doctor on the console, then power off
After=koto.service koto-firstboot.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/koto-image-report
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyAMA0
TimeoutStartSec=20min

[Install]
WantedBy=multi-user.target
"""

REPORT = """#!/bin/sh
for i in $(seq 900); do  # until READY, or a crash loop (Restart=always keeps it "activating")
    s=$(systemctl show -p ActiveState --value koto.service)
    [ "$s" = active ] || [ "$s" = failed ] || [ "$(systemctl show -p NRestarts --value koto.service)" -ge 2 ] && break
    # a refused card: koto.service's start was skipped (no /etc/koto/koto.toml), and stays so
    [ "$(systemctl show -p ConditionResult --value koto.service)" = no ] && break
    sleep 1
done
sleep 10
echo KOTO-IMAGE-REPORT-BEGIN
systemctl show -p Type -p ActiveState -p SubState -p StatusText -p NRestarts -p ConditionResult koto.service
systemctl show -p ActiveState -p Result -p ConditionResult -p ExecMainStatus koto-firstboot | sed 's/^/firstboot./'
ls /boot/firmware | sed 's/^/card: /'
stat -c 'file: %n %U %a' /etc/koto/koto.toml /var/lib/koto/keys/device.pem
echo KOTO-DOCTOR-BEGIN
runuser -u koto -- /opt/koto/.venv/bin/koto doctor --json --timeout 2
echo KOTO-DOCTOR-END
echo KOTO-STATUS-BEGIN
cat /run/koto/status.json
echo
echo KOTO-STATUS-END
journalctl -b -u koto-firstboot -u koto --no-pager -o cat | tail -n 40 | sed 's/^/journal: /'
journalctl --list-boots --no-pager | sed 's/^/boots: /'
journalctl -b -1 -u koto-firstboot --no-pager -o cat 2>/dev/null | sed 's/^/journal-1: /'
journalctl -b -k --no-pager -o cat | grep -i 'audit.*syscall' | tail -n 5 | sed 's/^/kernel: /'
echo KOTO-IMAGE-REPORT-END
systemctl poweroff
"""


MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, env=MTOOLS_ENV)


def card(img: Path, files: dict[str, str]) -> Path:
    """A FAT32 boot partition in `img` (labelled as the guest's fstab mounts it) holding `files` (name -> text)."""
    sh("/usr/sbin/mkfs.fat", "-F", "32", "-s", "1", "-n", "BOOTFS", "-C", str(img), "66000")
    src = img.with_suffix(".files")
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
        sh("mcopy", "-i", str(img), str(src / name), f"::/{name}")
    return img


def mtype(img: Path, name: str) -> str:
    """A file on the FAT image, read with mtools ("" when it is not there)."""
    return subprocess.run(["mtype", "-i", str(img), f"::/{name}"], capture_output=True, text=True,
                          env=MTOOLS_ENV).stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("image")
    lower = arm64_root(CACHE)
    wheel = build_wheel(tmp / "dist")
    wheels = arm64_wheelhouse(CACHE)
    extra = tmp / "extra"
    extra.mkdir()
    (extra / "koto-sim.service").write_text(SIM_UNIT)
    (extra / "koto-sim-serial0.service").write_text(SIM_SERIAL0_UNIT)
    (extra / "90-image-test-sim.conf").write_text(SIM_DROP_IN)
    (extra / "koto-image-report.service").write_text(REPORT_UNIT)
    (extra / "koto-image-report").write_text(REPORT)
    r = OverlayRoot(tmp / "root", {"/mnt/koto-src": REPO, "/mnt/wheels": wheels, "/mnt/dist": wheel.parent,
                                   "/mnt/extra": extra}, lower=lower,
                    read_only=frozenset({"/mnt/koto-src", "/mnt/wheels"}))
    r.run(f"sh /mnt/koto-src/deploy/install.sh --wheel /mnt/dist/{wheel.name} --wheels /mnt/wheels", timeout=3600)
    r.run("""
        echo gw-0099 > /etc/hostname
        printf 'LABEL=kotoroot / ext4 defaults 0 1\\nLABEL=BOOTFS /boot/firmware vfat defaults,umask=0077 0 2\\n' \
            > /etc/fstab
        mkdir -p /boot/firmware /etc/systemd/system/koto.service.d
        install -m 0644 /mnt/extra/koto-sim.service /mnt/extra/koto-sim-serial0.service \
            /mnt/extra/koto-image-report.service /etc/systemd/system/
        install -m 0644 /mnt/extra/90-image-test-sim.conf /etc/systemd/system/koto.service.d/
        install -m 0755 /mnt/extra/koto-image-report /usr/local/sbin/
        systemctl enable koto-sim.service koto-sim-serial0.service koto-image-report.service
        systemctl mask serial-getty@ttyAMA0.service getty@tty1.service
    """)
    root_img = tmp / "root.img"
    r.run_host(f"mkfs.ext4 -q -F -L kotoroot -d $ROOT {root_img} 3G", timeout=1800)
    boot_img = card(tmp / "boot.img", {"koto.toml": CONFIG})
    # The same image before any boot, with a card whose config `koto check` refuses (no Modbus address 300).
    sh("cp", "--sparse=always", str(root_img), str(tmp / "root-refused.img"))
    card(tmp / "boot-refused.img", {"koto.toml": CONFIG.replace("address = 1", "address = 300")})
    # And with a Raspberry Pi OS card whose config puts the meter on the Pi's own UART.
    sh("cp", "--sparse=always", str(root_img), str(tmp / "root-pi.img"))
    card(tmp / "boot-pi.img", {"config.txt": PI_CONFIG_TXT, "cmdline.txt": PI_CMDLINE,
                               "koto.toml": CONFIG_ON_THE_PI_UART})
    kernel = max((lower / "boot").glob("vmlinuz-*"))
    initrd = max((lower / "boot").glob("initrd.img-*"))
    return {"root": root_img, "boot": boot_img, "kernel": kernel, "initrd": initrd, "tmp": tmp}


def section(text: str, begin: str, end: str) -> str:
    m = re.search(rf"{begin}\r?\n(.*?){end}", text, re.S)
    assert m, f"no {begin}..{end} on the console:\n{text[-4000:]}"
    return m.group(1).replace("\r", "")


def report_of(console: str) -> tuple[str, dict[str, str]]:
    """The guest's report and its `systemctl show` lines as a dict (koto-firstboot's prefixed `firstboot.`)."""
    report = section(console, "KOTO-IMAGE-REPORT-BEGIN", "KOTO-IMAGE-REPORT-END")
    head = report.split("KOTO-DOCTOR-BEGIN")[0]
    return report, dict(ln.split("=", 1) for ln in head.splitlines() if "=" in ln)


def assert_ready_and_reading(report: str, facts: dict[str, str]) -> None:
    """koto.service sent READY=1, `koto doctor` as koto finds the config, the state and the meter's port good, and
    the daemon's status.json counts readings from the meter."""
    assert facts["Type"] == "notify" and facts["ActiveState"] == "active", report  # READY=1 was sent
    doctor = json.loads(section(report, "KOTO-DOCTOR-BEGIN", "KOTO-DOCTOR-END"))
    status = {c["check"]: c["status"] for c in doctor["checks"]}
    for name in ("config", "service user", "state folder", "serial meter", "ledger", "disk"):
        assert status[name] == "ok", (name, doctor)
    meter = json.loads(section(report, "KOTO-STATUS-BEGIN", "KOTO-STATUS-END"))["sources"]["meter"]
    assert meter["readings"] > 0, (meter, report)


def test_the_installed_image_boots_imports_the_card_and_koto_reaches_ready(images: dict[str, Path]) -> None:
    console = boot(images["root"], images["boot"], images["kernel"], images["initrd"])
    (images["tmp"] / "console.log").write_text(console)
    report, facts = report_of(console)
    assert_ready_and_reading(report, facts)
    assert facts["firstboot.Result"] == "success", report
    assert "card: koto.toml" not in report and "card: koto-gw-0099.pub.pem" in report
    assert "file: /etc/koto/koto.toml koto 600" in report
    assert MARK.encode() not in images["boot"].read_bytes()  # scrubbed on the mounted vfat, free space too


def test_a_refused_card_is_kept_with_its_reasons_and_koto_does_not_start(images: dict[str, Path]) -> None:
    tmp = images["tmp"]
    console = boot(tmp / "root-refused.img", tmp / "boot-refused.img", images["kernel"], images["initrd"])
    (tmp / "console-refused.log").write_text(console)
    report, facts = report_of(console)
    # not started half-configured: its start was skipped by the condition, no crash loop
    assert facts["ActiveState"] == "inactive" and facts["ConditionResult"] == "no", report
    assert facts["NRestarts"] == "0", report
    assert facts["firstboot.Result"] != "success", report  # koto firstboot exits 1 on a refused card
    assert "card: koto.toml" in report and "card: koto.toml.rejected.txt" in report, report
    assert "was NOT imported" in report, report  # the journal says so in words
    reasons = mtype(tmp / "boot-refused.img", "koto.toml.rejected.txt")
    assert "address" in reasons, reasons  # the reason, for support, beside the config it refused


BANNER = "Booting Linux on physical CPU"  # the kernel's first line, once per boot
REBOOTED, POWERED_OFF = "reboot: Restarting system", "reboot: Power down"  # the kernel's last


def test_a_pi_card_with_the_meter_on_the_uart_switches_it_on_and_reboots_exactly_once(
        images: dict[str, Path]) -> None:
    tmp = images["tmp"]
    root, pi_card = tmp / "root-pi.img", tmp / "boot-pi.img"
    # First boot: the import, the boot files changed, `systemctl --no-block reboot`. qemu runs with -no-reboot, so
    # the guest's reboot ends this run; the next run boots the same disks, as the Pi's firmware would.
    first = boot(root, pi_card, images["kernel"], images["initrd"])
    (tmp / "console-pi-1.log").write_text(first)
    assert first.count(BANNER) == 1, first[-4000:]
    assert REBOOTED in first and POWERED_OFF not in first, first[-4000:]  # rebooted, before the report's power-off
    assert "KOTO-IMAGE-REPORT-BEGIN" not in first, first[-4000:]  # the reboot came before koto.service started
    config_txt, cmdline = mtype(pi_card, "config.txt"), mtype(pi_card, "cmdline.txt")
    assert config_txt.startswith(PI_CONFIG_TXT), config_txt
    added = config_txt.removeprefix(PI_CONFIG_TXT)
    assert [ln for ln in added.splitlines() if ln and not ln.startswith("#")] == UART_LINES, added
    assert "added by koto firstboot for appliance washer, source meter on /dev/serial0" in added, added
    assert cmdline == PI_CMDLINE.replace("console=serial0,115200 ", ""), cmdline
    assert mtype(pi_card, "koto.toml") == "" and MARK.encode() not in pi_card.read_bytes()

    # Second boot: nothing on the card to import, so no second reboot; the gateway reads the meter on serial0.
    second = boot(root, pi_card, images["kernel"], images["initrd"])
    (tmp / "console-pi-2.log").write_text(second)
    assert second.count(BANNER) == 1 and POWERED_OFF in second and REBOOTED not in second, second[-4000:]
    report, facts = report_of(second)
    assert_ready_and_reading(report, facts)
    assert facts["firstboot.ConditionResult"] == "no", report  # skipped: no koto.toml on the card
    boots = [ln for ln in report.splitlines() if re.match(r"boots: +-?\d+ [0-9a-f]{32} ", ln)]
    assert len(boots) == 2, report  # the journal (persistent: 60-koto.conf) knows this boot and the first only
    first_journal = "\n".join(ln for ln in report.splitlines() if ln.startswith("journal-1: "))
    assert "imported koto.toml from /boot/firmware" in first_journal, report
    assert "switched on for the config's sources: enable_uart=1 in config.txt" in first_journal, report
    assert "dtparam=uart0_console in config.txt for a Pi 5" in first_journal, report
    assert "the kernel's console off the UART in cmdline.txt" in first_journal, report
    assert first_journal.count("rebooting once for the firmware to read them") == 1, report
    # the reboot job stopped the unit while `koto firstboot` was finishing: it exits 0 all the same, not killed
    assert "code=killed" not in first_journal and "Failed with result" not in first_journal, report
    # the card as the second boot left it: the same boot files, nothing more added
    assert (mtype(pi_card, "config.txt"), mtype(pi_card, "cmdline.txt")) == (config_txt, cmdline)
    assert "card: koto-gw-0099.pub.pem" in report and "card: koto.toml" not in report, report
