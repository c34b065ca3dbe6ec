"""Switch on, in a Raspberry Pi's boot files, the interfaces the imported config's sources need.

Raspberry Pi OS ships with the UART on GPIO 14/15 off (and the kernel's console named on it in cmdline.txt, which
takes it once it is on) and SPI off. An installer who wires a PZEM-004T or an RS-485 HAT to the UART, or an MCP3008
to SPI, would have to log in and run raspi-config before the gateway reads anything. `koto firstboot` does what
raspi-config's `do_serial_hw 0`, `do_serial_cons 1` and `do_spi 0` do, once, when it imports a config that needs
them: `enable_uart=1` and `dtparam=spi=on` under `[all]` at the end of config.txt (the last setting wins, whatever
model sections came before), the console words for that UART out of cmdline.txt; and the Pi reboots once for the
firmware to read them. Nothing is touched on a partition without config.txt (not a Pi's), nor when the setting is
already there.
"""

from __future__ import annotations

import logging

from drivers.pi_uart import PI_UART

from .bootfs import BootPartition
from .config import GatewayConfig

log = logging.getLogger("koto.firstboot")

CONFIG_TXT = "config.txt"
CMDLINE_TXT = "cmdline.txt"
# The names the kernel's console takes for the GPIO UART: the firmware rewrites serial0 to one of the others.
UART_CONSOLES = ("serial0", "ttyS0", "ttyAMA0")


def needs(cfg: GatewayConfig) -> dict[str, str]:
    """Setting -> the source that needs it: `enable_uart=1` for a serial source on /dev/serial0 (or the mini UART it
    points to on a Pi 3 or 4, /dev/ttyS0), `dtparam=spi=on` for an MCP3008."""
    out: dict[str, str] = {}
    for app in cfg.appliances:
        for name, src in app.sources.items():
            if src.get("port") in (PI_UART, "/dev/ttyS0"):  # (ttyS0: the mini UART, off until enable_uart=1)
                out.setdefault("enable_uart=1", f"appliance {app.id}, source {name} on {src['port']}")
            if src.get("driver") == "mcp3008":
                out.setdefault("dtparam=spi=on", f"appliance {app.id}, source {name} (MCP3008)")
    return out


def _set(text: str) -> set[str]:
    """The settings config.txt makes for every model: outside comments, before any section or under `[all]` (one
    under `[pi4]` does not switch a Pi 3's UART on)."""
    out: set[str] = set()
    everyone = True
    for ln in text.splitlines():
        line = ln.split("#", 1)[0].strip().replace(" ", "")
        if line.startswith("["):
            everyone = line == "[all]"
        elif line and everyone:
            out.add(line)
    return out


def without_uart_console(cmdline: str) -> str:
    """cmdline.txt without the kernel console on the GPIO UART (`console=serial0,115200`); other words kept."""
    words = cmdline.split()
    kept = [w for w in words if not (w.startswith("console=") and w[8:].split(",", 1)[0] in UART_CONSOLES)]
    return " ".join(kept) + "\n"


def switch_on(boot: BootPartition, cfg: GatewayConfig) -> list[str]:
    """Make the boot files switch on what the config needs; what was changed, in words (empty: nothing to do, or
    not a Pi's boot partition). The changes take effect at the next boot."""
    wanted = needs(cfg)
    if not wanted:
        return []
    if not boot.exists(CONFIG_TXT):
        log.info("%s has no %s (not a Raspberry Pi's boot partition): %s left as they are", boot.where, CONFIG_TXT,
                 ", ".join(wanted))
        return []
    text = boot.read(CONFIG_TXT).decode("utf-8", "replace")
    have = _set(text)
    changed: list[str] = []
    add = [s for s in wanted if s not in have]
    if add:
        lines = [f"# {s}: added by koto firstboot for {wanted[s]}" for s in add]
        text = text.rstrip("\n") + "\n\n" + "\n".join([*lines, "[all]", *add]) + "\n"
        boot.write(CONFIG_TXT, text.encode())
        changed += [f"{s} in {CONFIG_TXT} ({wanted[s]})" for s in add]
    if "enable_uart=1" in wanted and boot.exists(CMDLINE_TXT):
        cmdline = boot.read(CMDLINE_TXT).decode("utf-8", "replace")
        if (new := without_uart_console(cmdline)).split() != cmdline.split():
            boot.write(CMDLINE_TXT, new.encode())
            changed.append(f"the kernel's console off the UART in {CMDLINE_TXT} (the meter's wires)")
    for c in changed:
        log.info("switched on for the config's sources: %s", c)
    return changed
