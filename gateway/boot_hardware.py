"""Switch on, in a Raspberry Pi's boot files, the interfaces the imported config's sources need.

Raspberry Pi OS ships with the UART on GPIO 14/15 off (and the kernel's console named on it in cmdline.txt, which
takes it once it is on) and SPI off. An installer who wires a PZEM-004T or an RS-485 HAT to the UART, or an MCP3008
to SPI, would have to log in and run raspi-config before the gateway reads anything. `koto firstboot` does what
raspi-config's `do_serial_hw 0`, `do_serial_cons 1` and `do_spi 0` do, once, when it imports a config that needs
them, and the Pi reboots once for the firmware to read them. The lines go at the end of config.txt (the last
setting wins, whatever model sections came before), under `[all]`, or under `[pi5]` for what only a Pi 5 reads:

- a source on `/dev/serial0` (or the mini UART `/dev/ttyS0` it points to on a Pi 3 or 4): `enable_uart=1`, and for
  a Pi 5, whose `serial0` is otherwise the debug connector's UART, `dtparam=uart0_console`: it switches UART0 on
  GPIO 14/15 on and makes it the firmware's console alias, which is what udev names `/dev/serial0` on a Pi 5
  (raspberrypi-sys-mods' 99-com.rules; the kernel's own console stays off it, below). So one koto.toml reads the
  same pins on a Pi 3, 4 or 5;
- a source on `/dev/ttyAMA0` by name (raspi-config's way on a Pi 5): `dtparam=uart0=on` for a Pi 5 (on a Pi 3 or 4
  ttyAMA0 is Bluetooth's unless an overlay the installer chose moved it: nothing is written for them);
- an MCP3008: `dtparam=spi=on`;
- and the kernel's console words for the meter's UART out of cmdline.txt.

Nothing is touched on a partition without config.txt (not a Pi's), nor when the setting is already in effect for
the models it is for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from drivers.pi_uart import MINI_UART, PI_UART, PL011_UART0

from .bootfs import BootPartition, MountedBoot
from .config import GatewayConfig

log = logging.getLogger("koto.firstboot")

CONFIG_TXT = "config.txt"
CMDLINE_TXT = "cmdline.txt"
# The names the kernel's console takes for the GPIO UART: the firmware rewrites serial0 to one of the others.
UART_CONSOLES = ("serial0", "ttyS0", "ttyAMA0")


@dataclass(frozen=True)
class Setting:
    """One config.txt line, the model section it goes under (`all` or `pi5`), and the source that needs it."""

    line: str
    section: str
    why: str


def needs(cfg: GatewayConfig) -> list[Setting]:
    """The config.txt lines the config's sources need, each once, in the order the sources name them."""
    out: dict[str, Setting] = {}

    def want(line: str, section: str, why: str) -> None:
        out.setdefault(line, Setting(line, section, why))

    for app in cfg.appliances:
        for name, src in app.sources.items():
            port, why = src.get("port"), f"appliance {app.id}, source {name} on {src.get('port')}"
            if port in (PI_UART, MINI_UART):  # (ttyS0: the mini UART, off until enable_uart=1)
                want("enable_uart=1", "all", why)
            if port == PI_UART:
                want("dtparam=uart0_console", "pi5", why)
            if port == PL011_UART0:
                want("dtparam=uart0=on", "pi5", why)
            if src.get("driver") == "mcp3008":
                want("dtparam=spi=on", "all", f"appliance {app.id}, source {name} (MCP3008)")
    return list(out.values())


def _norm(line: str) -> set[str]:
    """A config.txt line as the settings it makes: spaces out, and each of `dtparam=a=on,b`'s parameters on its own
    with a bare parameter meaning on (`dtparam=spi` is `dtparam=spi=on`)."""
    line = line.replace(" ", "").replace("\t", "")
    if not line.startswith("dtparam="):
        return {line}
    return {"dtparam=" + p.removesuffix("=on") for p in line[len("dtparam="):].split(",") if p}


def in_effect(text: str, section: str) -> set[str]:
    """The settings config.txt makes for the models of `section` (`all`: every model; `pi5`: a Pi 5), comments
    left out: those before any section, under `[all]`, and under `[pi5]` for a Pi 5 (one under `[pi4]` does not
    switch a Pi 3's UART on)."""
    out: set[str] = set()
    applies = True
    for ln in text.splitlines():
        line = ln.split("#", 1)[0].strip()
        if line.startswith("["):
            applies = line in ("[all]", f"[{section}]")
        elif line and applies:
            out |= _norm(line)
    return out


def without_uart_console(cmdline: str, names: tuple[str, ...] = UART_CONSOLES) -> str:
    """cmdline.txt without the kernel console on the GPIO UART (`console=serial0,115200`); other words kept."""
    words = cmdline.split()
    kept = [w for w in words if not (w.startswith("console=") and w[8:].split(",", 1)[0] in names)]
    return " ".join(kept) + "\n"


def _consoles_to_drop(cfg: GatewayConfig) -> tuple[str, ...]:
    """The console names that would be on a configured UART: all three for serial0 or ttyS0 (the firmware rewrites
    serial0 to the UART it is), only ttyAMA0 itself for a source naming it (a Pi 5's `console=serial0` is its debug
    connector's UART, which stays the console)."""
    ports = {src.get("port") for app in cfg.appliances for src in app.sources.values()}
    if ports & {PI_UART, MINI_UART}:
        return UART_CONSOLES
    return ("ttyAMA0",) if PL011_UART0 in ports else ()


@dataclass(frozen=True)
class Plan:
    """What first boot would change: config.txt's and cmdline.txt's new text (None: left as it is), in words."""

    config_txt: str | None
    cmdline_txt: str | None
    changed: tuple[str, ...]


def plan(boot: BootPartition, cfg: GatewayConfig) -> Plan:
    """What `switch_on` would write, without writing (`koto check --bootfs` shows it before the card boots)."""
    wanted = needs(cfg)
    if not wanted or not boot.exists(CONFIG_TXT):
        return Plan(None, None, ())
    text = boot.read(CONFIG_TXT).decode("utf-8", "replace")
    add = [s for s in wanted if not _norm(s.line) <= in_effect(text, s.section)]
    config_txt: str | None = None
    changed: list[str] = []
    if add:
        lines = [f"# {s.line}: added by koto firstboot for {s.why}" + (" (a Pi 5 alone)" if s.section != "all" else "")
                 for s in add]
        for section in ("all", "pi5"):
            if here := [s.line for s in add if s.section == section]:
                lines += [f"[{section}]", *here]
        if any(s.section != "all" for s in add):
            lines.append("[all]")  # what anyone appends after us applies to every model again
        config_txt = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
        changed += [f"{s.line} in {CONFIG_TXT}" + (" for a Pi 5" if s.section == "pi5" else "") + f" ({s.why})"
                    for s in add]
    cmdline_txt: str | None = None
    drop = _consoles_to_drop(cfg)
    if drop and boot.exists(CMDLINE_TXT):
        cmdline = boot.read(CMDLINE_TXT).decode("utf-8", "replace")
        if (new := without_uart_console(cmdline, drop)).split() != cmdline.split():
            cmdline_txt = new
            changed.append(f"the kernel's console off the UART in {CMDLINE_TXT} (the meter's wires)")
    return Plan(config_txt, cmdline_txt, tuple(changed))


def switch_on(boot: BootPartition, cfg: GatewayConfig) -> list[str]:
    """Make the boot files switch on what the config needs; what was changed, in words (empty: nothing to do, or
    not a Pi's boot partition). The changes take effect at the next boot."""
    if (wanted := needs(cfg)) and not boot.exists(CONFIG_TXT):
        log.info("%s has no %s (not a Raspberry Pi's boot partition): %s left as they are", boot.where, CONFIG_TXT,
                 ", ".join(s.line for s in wanted))
        return []
    p = plan(boot, cfg)
    if p.config_txt is not None:
        boot.write(CONFIG_TXT, p.config_txt.encode())
    if p.cmdline_txt is not None:
        boot.write(CMDLINE_TXT, p.cmdline_txt.encode())
    for c in p.changed:
        log.info("switched on for the config's sources: %s", c)
    return list(p.changed)


def preview(folder: Path, cfg: GatewayConfig) -> list[str]:
    """`koto check --bootfs`'s notes: what first boot will change in the card's boot files for this config, and
    the reboot it takes (nothing when the files beside it already have it, or the folder is not a Pi's boot
    partition: then first boot leaves them too)."""
    changed = plan(MountedBoot(folder), cfg).changed
    if not changed:
        return []
    return [f"first boot will change the card's boot files: {c}" for c in changed] + [
        "first boot then reboots the Pi once, for the firmware to read them"]
