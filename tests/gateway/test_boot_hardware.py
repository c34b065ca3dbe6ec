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
    (tmp_path / "config.txt").write_text("[pi4]\narm_boost=1\n[all]\nenable_uart = 1  # the installer's own\n")
    assert switch_on(boot, config("/dev/serial0")) == []
    made = ["enable_uart=1 in config.txt (appliance washer, source m on /dev/serial0)"]
    (tmp_path / "config.txt").write_text("#enable_uart=1\n")
    assert switch_on(boot, config("/dev/serial0")) == made
    (tmp_path / "config.txt").write_text("[pi4]\nenable_uart=1\n")  # for a Pi 4 alone: not this Pi 3's
    assert switch_on(boot, config("/dev/serial0")) == made
    (tmp_path / "config.txt").write_text("")
    assert switch_on(boot, config("/dev/ttyS0")) == [made[0].replace("serial0", "ttyS0")]  # the mini UART by name
    assert not list(tmp_path.glob(".*")), "written through a temporary file renamed into place"


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
