"""First boot from the boot partition, on a real FAT file system in an image file (mtools; nothing is mounted).

A valid koto.toml is imported with the key and certificates it names, and afterwards its secrets are nowhere in
the image's raw bytes; an invalid one is refused, kept on the card with the reasons beside it, and nothing is left
in /etc/koto for the service to start on.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.bootfs import ImageBoot, fat_offset
from gateway.cli import main
from tests.support.pki import TestPKI

MKFS = shutil.which("mkfs.fat") or "/usr/sbin/mkfs.fat"
pytestmark = pytest.mark.skipif(shutil.which("mcopy") is None or not Path(MKFS).exists(),
                                reason="needs mtools and dosfstools (make system-deps installs them)")

BINDKEY = "5ec2e75ecf3a4b1c9d8e7f6a5b4c3d2e"  # a secret that must not survive on the card

CONFIG = """
[gateway]
id = "gw-0042"
state_dir = "{state}"
timezone = "Europe/Berlin"

[cloud]
broker = "mqtts://broker.example.net:8883"
ca = "{etc}/ca.pem"
cert = "{etc}/gw-0042.crt"
key = "{etc}/gw-0042.key"

[[appliance]]
id = "aircon"
profile = "air_conditioner"
energy = "plug"

[appliance.sources.plug]
driver = "bthome"
address = "A4:C1:38:12:34:56"
bindkey = "{bindkey}"
"""

ME = pwd.getpwuid(os.geteuid()).pw_name


def mtools(*args: str) -> bytes:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}
    return subprocess.run(args, check=True, capture_output=True, env=env).stdout


CARD_OFFSET = 4 << 20  # where Raspberry Pi OS images start their boot partition


@pytest.fixture(params=["16", "32", "card"], ids=["fat16", "fat32", "whole-card"])
def card(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A boot partition as an installer's laptop leaves it: the firmware's files plus what the installer dropped.
    fat16/fat32: the file system alone; whole-card: an MBR with a FAT32 partition at 4 MiB, as flashed."""
    img = tmp_path / "boot.img"
    if request.param == "card":
        img.write_bytes(b"")
        os.truncate(img, CARD_OFFSET + (40000 << 10))
        subprocess.run(["sfdisk", "-q", str(img)], input=f"label: dos\nstart={CARD_OFFSET // 512}, type=c\n",
                       text=True, check=True, capture_output=True)
        subprocess.run([MKFS, "-F", "32", "-s", "1", "-n", "bootfs", "--offset", str(CARD_OFFSET // 512), str(img),
                        "40000"], check=True, capture_output=True)
    else:
        kib = "16384" if request.param == "16" else "40000"  # FAT32 needs >= 65525 clusters: 512-byte clusters
        subprocess.run([MKFS, "-F", request.param, "-s", "1", "-n", "bootfs", "-C", str(img), kib],
                       check=True, capture_output=True)
    firmware = tmp_path / "config.txt"
    firmware.write_text("arm_64bit=1\n# the firmware's own file, which the import must leave alone\n" * 40)
    mtools("mcopy", "-i", target(img), str(firmware), "::/config.txt")
    return img


def target(img: Path) -> str:
    """mtools' name for the FAT in `img` (a whole card's partition is addressed by its offset)."""
    offset = fat_offset(img)
    return f"{img}@@{offset}" if offset else str(img)


def drop(img: Path, tmp_path: Path, text: str) -> dict[str, bytes]:
    """Put koto.toml and the PKI files it names on the card; return the files as dropped."""
    pki = TestPKI(tmp_path / "laptop")
    pair = pki.client("gw-0042")
    files = {"koto.toml": text.encode(), "ca.pem": pki.ca.read_bytes(), "gw-0042.crt": pair.cert.read_bytes(),
             "gw-0042.key": pair.key.read_bytes()}
    for name, data in files.items():
        (tmp_path / "laptop" / name).write_bytes(data)
        mtools("mcopy", "-o", "-i", target(img), str(tmp_path / "laptop" / name), f"::/{name}")
    return files


def secrets(files: dict[str, bytes]) -> list[bytes]:
    """Byte strings that must be gone: the bindkey, and every base64 line of the private key."""
    key_lines = [ln for ln in files["gw-0042.key"].splitlines() if ln and not ln.startswith(b"-----")]
    return [BINDKEY.encode(), *key_lines]


def test_deleting_alone_leaves_a_secret_readable_in_the_raw_image(card: Path, tmp_path: Path) -> None:
    """Why the import overwrites before it deletes (and proof that the raw-bytes check below can fail)."""
    (tmp_path / "secret.toml").write_text(f'bindkey = "{BINDKEY}"\n')
    mtools("mcopy", "-i", target(card), str(tmp_path / "secret.toml"), "::/secret.toml")
    mtools("mdel", "-i", target(card), "::/secret.toml")
    assert BINDKEY.encode() in card.read_bytes()


def test_a_valid_config_is_imported_provisioned_and_its_secrets_are_gone_from_the_card(
        card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"
    files = drop(card, tmp_path, CONFIG.format(etc=etc, state=state, bindkey=BINDKEY))
    raw = card.read_bytes()
    assert all(s in raw for s in secrets(files))  # on the card before the import

    assert main(["firstboot", "--image", str(card), "--etc", str(etc), "--user", ME]) == 0

    for name, data in files.items():
        installed = etc / name
        assert installed.read_bytes() == data, name
        secret = name in ("koto.toml", "gw-0042.key")  # the config may hold a bindkey; the client's private key
        assert installed.stat().st_mode & 0o777 == (0o600 if secret else 0o644), name
    assert not list(etc.glob(".*")), "no staging file is left behind"
    raw = card.read_bytes()
    leaked = [s for s in secrets(files) if s in raw]
    assert leaked == [], f"still in the raw image: {leaked}"
    assert files["koto.toml"] not in raw and files["gw-0042.crt"] not in raw
    boot = ImageBoot(card, fat_offset(card))
    assert not any(boot.exists(n) for n in files)
    assert boot.read("config.txt").startswith(b"arm_64bit=1\n")  # the firmware's file is untouched
    pub = (state / "keys" / "device.pub.pem").read_text()
    assert boot.read("koto-gw-0042.pub.pem").decode() == pub  # left for registration (public)
    out = capsys.readouterr()
    assert out.out == pub and "scrubbed" in out.err
    # The next boot: nothing left to import, nothing changed.
    assert main(["firstboot", "--image", str(card), "--etc", str(etc), "--user", ME]) == 0
    assert "nothing to import" in capsys.readouterr().out
    assert (state / "keys" / "device.pub.pem").read_text() == pub


def test_an_invalid_config_is_refused_kept_with_the_reasons_and_nothing_is_installed(
        card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"
    bad = CONFIG.format(etc=etc, state=state, bindkey=BINDKEY).replace("Europe/Berlin", "Mars/Olympus")
    bad = bad.replace('profile = "air_conditioner"', 'profile = "air_conditioner"\ncolour = "red"')
    files = drop(card, tmp_path, bad)

    assert main(["firstboot", "--image", str(card), "--etc", str(etc), "--user", ME]) == 1

    out = capsys.readouterr()
    assert "gateway.timezone" in out.out and "appliance.aircon.colour" in out.out
    assert not (etc / "koto.toml").exists()  # koto.service's drop-in needs it: the service does not start
    assert sorted(p.name for p in etc.iterdir()) == []  # the key and certificates were taken back out
    assert not state.exists()  # not provisioned
    boot = ImageBoot(card, fat_offset(card))
    for name, data in files.items():
        assert boot.read(name) == data, f"{name} is kept on the card for support"
    reason = boot.read("koto.toml.rejected.txt").decode()
    assert f"{boot.where}/koto.toml: gateway.timezone" in reason and "appliance.aircon.colour" in reason
    assert "boot again" in reason

    # Fixed on the laptop and booted again: imported, and the reasons are gone with the secrets.
    fixed = CONFIG.format(etc=etc, state=state, bindkey=BINDKEY)
    (tmp_path / "laptop" / "koto.toml").write_text(fixed)
    mtools("mcopy", "-o", "-i", target(card), str(tmp_path / "laptop" / "koto.toml"), "::/koto.toml")
    assert main(["firstboot", "--image", str(card), "--etc", str(etc), "--user", ME]) == 0
    assert not boot.exists("koto.toml.rejected.txt") and not boot.exists("koto.toml")
    assert (etc / "koto.toml").read_text() == fixed
    assert [s for s in secrets(files) if s in card.read_bytes()] == []


def test_a_config_that_is_not_toml_is_refused_with_the_parse_error(card: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "koto.toml").write_text("[gateway\nid = 1\n")
    mtools("mcopy", "-i", target(card), str(tmp_path / "koto.toml"), "::/koto.toml")
    assert main(["firstboot", "--image", str(card), "--etc", str(tmp_path / "etc"), "--user", ME]) == 1
    assert "not valid TOML" in ImageBoot(card, fat_offset(card)).read("koto.toml.rejected.txt").decode()
    assert not (tmp_path / "etc" / "koto.toml").exists()


def test_a_mounted_partition_s_file_is_overwritten_in_place_before_it_is_deleted(tmp_path: Path) -> None:
    """The mounted path (Raspberry Pi OS mounts the card at /boot/firmware): the same inode is rewritten with
    zeros at the same length and synced before the unlink; free space is wiped only on FAT (never the root fs)."""
    from gateway.bootfs import MountedBoot, fs_type

    secret = tmp_path / "gw.key"
    secret.write_bytes(b"PRIVATE" * 100)
    keep = os.open(secret, os.O_RDONLY)  # an open descriptor sees the inode's bytes after the unlink
    try:
        boot = MountedBoot(tmp_path)
        boot.scrub("gw.key")
        assert not secret.exists()
        assert os.pread(keep, 1000, 0) == b"\0" * 700
    finally:
        os.close(keep)
    assert fs_type(tmp_path) not in ("vfat", "msdos") and boot.wipe_free() == 0


def test_a_refused_import_puts_back_the_files_it_had_replaced(card: Path, tmp_path: Path) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    (etc / "ca.pem").write_bytes(b"the CA in use\n")
    (etc / "ca.pem").chmod(0o640)
    drop(card, tmp_path, CONFIG.format(etc=etc, state=state, bindkey=BINDKEY).replace("Europe/Berlin", "Mars/Olympus"))
    assert main(["firstboot", "--image", str(card), "--etc", str(etc), "--user", ME]) == 1
    assert (etc / "ca.pem").read_bytes() == b"the CA in use\n"
    assert (etc / "ca.pem").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in etc.iterdir()) == ["ca.pem"]


def test_a_boot_folder_that_does_not_exist_is_a_usage_error_not_nothing_to_import(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped --boot said "nothing to import" and exit 0, as if the card had no koto.toml; the unit never passes
    --boot (it looks in /boot/firmware, then /boot), so a folder given by hand must exist."""
    assert main(["firstboot", "--boot", str(tmp_path / "bootfs-typo"), "--etc", str(tmp_path / "etc"),
                 "--user", ME]) == 2
    err = capsys.readouterr().err
    assert "bootfs-typo" in err and "does not exist" in err
    assert not (tmp_path / "etc").exists()


# Raspberry Pi OS Lite (bookworm, 64-bit) as flashed: the end of its config.txt and its whole cmdline.txt
PI_CONFIG_TXT = """# For more options and information see
# http://rptl.io/configtxt
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""
PI_CMDLINE = ("console=serial0,115200 console=tty1 root=PARTUUID=8a438930-02 rootfstype=ext4 fsck.repair=yes "
              "rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n")
UART_AND_SPI = """
[gateway]
id = "gw-0042"
state_dir = "{state}"

[[appliance]]
id = "washer"
profile = "washing_machine"
[appliance.sources.pzem]
driver = "modbus"
model = "pzem004t"
port = "/dev/serial0"
address = 1

[[appliance]]
id = "oven"
profile = "oven"
[appliance.sources.ct]
driver = "mcp3008"
channel = 0
points = [[3, 0], [700, 2000]]
"""


def test_a_config_on_the_pis_uart_and_spi_switches_them_on_in_the_boot_files_once(
        card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A PZEM-004T on GPIO 14/15 and an MCP3008 on SPI: the import does what raspi-config's do_serial_hw 0,
    do_serial_cons 1 and do_spi 0 would (an installer need not log in), and says that the Pi reboots for it."""
    etc, state = tmp_path / "etc", tmp_path / "state"
    boot = ImageBoot(card, fat_offset(card))
    boot.write("config.txt", PI_CONFIG_TXT.encode())
    boot.write("cmdline.txt", PI_CMDLINE.encode())
    drop(card, tmp_path, UART_AND_SPI.format(state=state))
    # --reboot is the default, but a card in a USB reader (--image) is never this machine's: no reboot is asked for
    # (a systemctl first on PATH that only writes down how it was called)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "systemctl.calls"}\n')
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert main(["firstboot", "--image", str(card), "--etc", str(etc), "--user", ME]) == 0
    assert not (tmp_path / "systemctl.calls").exists()
    config_txt = boot.read("config.txt").decode()
    assert config_txt == PI_CONFIG_TXT + (
        "\n# enable_uart=1: added by koto firstboot for appliance washer, source pzem on /dev/serial0\n"
        "# dtparam=uart0_console: added by koto firstboot for appliance washer, source pzem on /dev/serial0 "
        "(a Pi 5 alone)\n"
        "# dtparam=spi=on: added by koto firstboot for appliance oven, source ct (MCP3008)\n"
        "[all]\nenable_uart=1\ndtparam=spi=on\n[pi5]\ndtparam=uart0_console\n[all]\n")
    assert boot.read("cmdline.txt").decode() == PI_CMDLINE.replace("console=serial0,115200 ", "")
    err = capsys.readouterr().err
    assert "switched on in" in err and "enable_uart=1 in config.txt" in err
    assert "they take effect when the Pi next boots from this card" in err
    # A config imported later with the same needs changes nothing more.
    drop(card, tmp_path, UART_AND_SPI.format(state=state))
    assert main(["firstboot", "--image", str(card), "--etc", str(etc), "--user", ME, "--no-reboot"]) == 0
    assert boot.read("config.txt").decode() == config_txt
    assert "switched on" not in capsys.readouterr().err


def test_on_its_own_boot_partition_it_asks_for_one_reboot_and_survives_the_stop_that_follows(tmp_path: Path) -> None:
    """Without --image or --boot, the Pi's own partition: after the boot files are changed it asks systemd for one
    reboot. The reboot job stops koto-firstboot.service while `koto firstboot` is still its main process, with a
    SIGTERM (found by make image-test: the unit failed with result 'signal' after a good import); the command
    finishes and exits 0. A systemctl first on PATH writes down its arguments and sends that SIGTERM."""
    firmware, etc = tmp_path / "firmware", tmp_path / "etc"
    firmware.mkdir()
    (firmware / "config.txt").write_text(PI_CONFIG_TXT)
    (firmware / "cmdline.txt").write_text(PI_CMDLINE)
    (firmware / "koto.toml").write_text(UART_AND_SPI.format(state=tmp_path / "state"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "systemctl.calls"}\nkill -TERM $PPID\n')
    (bin_dir / "systemctl").chmod(0o755)
    code = ("import sys; from pathlib import Path; import gateway.cli_firstboot as c; from gateway.cli import main; "
            f"c.find_boot = lambda: c.MountedBoot(Path({str(firmware)!r})); "
            f"sys.exit(main(['firstboot', '--etc', {str(etc)!r}, '--user', {ME!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert (tmp_path / "systemctl.calls").read_text() == "--no-block reboot\n"
    assert "rebooting once for the firmware to read them" in out.stderr
    assert not (firmware / "koto.toml").exists() and (etc / "koto.toml").exists()
    assert "enable_uart=1" in (firmware / "config.txt").read_text()
