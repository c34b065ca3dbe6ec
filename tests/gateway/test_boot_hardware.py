"""What `koto firstboot` switches on in a Pi's boot files for the imported config's sources, on a boot folder
(gateway/boot_hardware.py; the whole import on a real FAT image: tests/gateway/test_firstboot.py)."""

from __future__ import annotations

from pathlib import Path

from gateway.boot_hardware import switch_on, without_uart_console
from gateway.bootfs import MountedBoot
from gateway.config import GatewayConfig, parse_config


def config(port: str) -> GatewayConfig:
    return parse_config({"gateway": {"id": "gw-1"}, "appliance": [
        {"id": "washer", "profile": "washing_machine",
         "sources": {"m": {"driver": "modbus", "model": "sdm120", "port": port, "address": 1}}}]})


def test_a_setting_already_made_is_not_made_again_and_a_commented_one_does_not_count(tmp_path: Path) -> None:
    boot = MountedBoot(tmp_path)
    (tmp_path / "config.txt").write_text("[pi4]\narm_boost=1\n[all]\nenable_uart = 1  # the installer's own\n"
                                         "[pi5]\ndtparam=uart0_console=on\n")
    assert switch_on(boot, config("/dev/serial0")) == []
    uart = "enable_uart=1 in config.txt (appliance washer, source m on /dev/serial0)"
    pi5 = "dtparam=uart0_console in config.txt for a Pi 5 (appliance washer, source m on /dev/serial0)"
    (tmp_path / "config.txt").write_text("#enable_uart=1\n")
    assert switch_on(boot, config("/dev/serial0")) == [uart, pi5]
    (tmp_path / "config.txt").write_text("[pi4]\nenable_uart=1\n")  # for a Pi 4 alone: not this Pi 3's
    assert switch_on(boot, config("/dev/serial0")) == [uart, pi5]
    (tmp_path / "config.txt").write_text("")
    assert switch_on(boot, config("/dev/ttyS0")) == [uart.replace("serial0", "ttyS0")]  # the mini UART by name
    assert not list(tmp_path.glob(".*")), "written through a temporary file renamed into place"


def test_a_pi_5_gets_its_gpio_uart_under_the_name_the_config_gives_it(tmp_path: Path) -> None:
    """On a Pi 5, /dev/serial0 is the debug connector's UART until dtparam=uart0_console makes GPIO 14/15's UART0
    the console alias that udev names serial0; a config naming /dev/ttyAMA0 gets raspi-config's dtparam=uart0=on.
    Both go under [pi5] (a Pi 4 booted from the card is unchanged), and the file ends back under [all]."""
    boot = MountedBoot(tmp_path)
    (tmp_path / "config.txt").write_text("dtparam=audio=on\n[all]\n")
    (tmp_path / "cmdline.txt").write_text("console=serial0,115200 console=tty1 root=/dev/mmcblk0p2\n")
    assert switch_on(boot, config("/dev/serial0"))
    assert (tmp_path / "config.txt").read_text() == (
        "dtparam=audio=on\n[all]\n\n"
        "# enable_uart=1: added by koto firstboot for appliance washer, source m on /dev/serial0\n"
        "# dtparam=uart0_console: added by koto firstboot for appliance washer, source m on /dev/serial0 "
        "(a Pi 5 alone)\n"
        "[all]\nenable_uart=1\n[pi5]\ndtparam=uart0_console\n[all]\n")
    assert (tmp_path / "cmdline.txt").read_text() == "console=tty1 root=/dev/mmcblk0p2\n"

    (tmp_path / "config.txt").write_text("[all]\n")
    (tmp_path / "cmdline.txt").write_text("console=serial0,115200 console=tty1 root=/dev/mmcblk0p2\n")
    assert switch_on(boot, config("/dev/ttyAMA0")) == [
        "dtparam=uart0=on in config.txt for a Pi 5 (appliance washer, source m on /dev/ttyAMA0)"]
    assert (tmp_path / "config.txt").read_text().endswith("[pi5]\ndtparam=uart0=on\n[all]\n")
    # a Pi 5's console=serial0 is its debug connector, not the meter's UART: it stays
    assert (tmp_path / "cmdline.txt").read_text() == "console=serial0,115200 console=tty1 root=/dev/mmcblk0p2\n"
    # raspi-config's own line, or one among several parameters, counts; one for a Pi 4 does not
    for made in ("[pi5]\ndtparam=uart0=on\n", "dtparam=i2c_arm=on,uart0\n"):
        (tmp_path / "config.txt").write_text(made)
        assert switch_on(boot, config("/dev/ttyAMA0")) == []
    (tmp_path / "config.txt").write_text("[pi4]\ndtparam=uart0=on\n")
    assert switch_on(boot, config("/dev/ttyAMA0"))


def test_nothing_is_touched_on_a_boot_partition_that_is_not_a_pis_or_for_a_usb_adapter(tmp_path: Path) -> None:
    boot = MountedBoot(tmp_path)
    (tmp_path / "cmdline.txt").write_text("console=serial0,115200 root=/dev/sda2\n")
    assert switch_on(boot, config("/dev/serial0")) == []  # no config.txt: not a Raspberry Pi's
    (tmp_path / "config.txt").write_text("arm_64bit=1\n")
    assert switch_on(boot, config("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0")) == []
    assert (tmp_path / "config.txt").read_text() == "arm_64bit=1\n"
    assert (tmp_path / "cmdline.txt").read_text() == "console=serial0,115200 root=/dev/sda2\n"


def test_only_the_consoles_on_the_gpio_uart_leave_the_command_line() -> None:
    assert without_uart_console("console=ttyAMA0,115200 console=tty1 console=ttyS0 root=/dev/mmcblk0p2 rootwait\n") \
        == "console=tty1 root=/dev/mmcblk0p2 rootwait\n"
    assert without_uart_console("console=ttyUSB0,9600 quiet") == "console=ttyUSB0,9600 quiet\n"
