"""`koto discover`: what an installer sees before writing koto.toml — meters on the serial ports, BTHome devices in
range, the levels of the GPIO inputs — and a config block ready to paste.

The probing is the drivers' (drivers.discover_serial, drivers.discover_ble, drivers.pins); this module only turns
what they found into the gateway's own config layout (`[[appliance]]` with `[appliance.sources.NAME]`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drivers.errors import BackendUnavailable
from metering.profile import builtin_profiles

PROFILE_HINT = {"sdm120": "washing_machine", "sdm630": "oven", "pzem004t": "washing_machine"}


def _appliance(n: int, source: str, profile: str) -> list[str]:
    names = ", ".join(sorted(builtin_profiles()))
    return [
        "[[appliance]]",
        f'id = "appliance-{n}"          # name it after the appliance: washer, dryer, kettle ...',
        f'profile = "{profile}"  # built-in: {names}; or a path to your own profile TOML',
        f'energy = "{source}"',
        "",
        f"[appliance.sources.{source}]",
    ]


def serial_block(found: Sequence[Any], start: int = 1) -> list[str]:
    out: list[str] = []
    for i, f in enumerate(found, start=start):
        if f.model is None:
            out.append(f"# a device answers on {f.port} at address {f.address}, {f.baud} baud, but its model is not "
                       "known: write a register map (docs/serial.md) and use `map = ...`")
            out.append("")
            continue
        source = f"meter-{f.address}"
        out += [f"# {f.model} on {f.port} at address {f.address}, {f.baud} baud ({f.evidence})"]
        out += _appliance(i, source, PROFILE_HINT.get(f.model, "washing_machine"))
        out += ['driver = "modbus"', f'model = "{f.model}"', f'port = "{f.port}"', f"address = {f.address}",
                f"baud = {f.baud}", ""]
    return out


def ble_block(devices: Sequence[Any], start: int = 1) -> list[str]:
    out: list[str] = []
    for i, d in enumerate(devices, start=start):
        base = re.sub(r"[^a-z0-9]+", "-", (d.name or "plug").lower()).strip("-") or "plug"
        source = f"{base}-{d.address.replace(':', '')[-4:].lower()}"
        out += [f"# BTHome device {d.address} ({d.name or 'no name'}, {d.rssi} dBm)"]
        out += _appliance(i, source, "washing_machine")
        out += ['driver = "bthome"', f'address = "{d.address}"']
        if d.encrypted:
            out.append('bindkey = ""  # FILL IN: the 32 hex digits from the device; its adverts are encrypted')
        out.append("")
    return out


def gpio_lines(states: Sequence[Any]) -> list[str]:
    out = []
    for s in states:
        level = "unreadable: " + s.problem if s.high is None else ("high" if s.high else "low")
        out.append(f"  GPIO{s.pin}: {level}")
    if states:
        out += ["", "  An S0 meter or a contact to ground reads low while active (pull-up). Source templates:",
                '    driver = "s0", pin = N, imp_per_kwh = 1000     (the figure on the meter\'s label)',
                '    driver = "gpio_signal", pin = N, signal = "door"']
    return out


NO_ANSWER = ("  No answer usually means: A and B swapped, a long line without its 120 ohm terminator, another "
             "address or baud rate (the meter's display menu shows both), or the meter not powered.")


@dataclass(frozen=True, slots=True)
class Report:
    text: str
    found: int  # meters and devices found, for the exit code
    probed: bool  # something was looked for (serial or BLE), not only GPIO levels shown
    next_step: str = ""  # the command to run next; said apart, so what `koto discover > blocks.toml` saves is TOML
    gpio_failed: bool = False  # GPIO levels were asked for and could not be read


def _tried_lines(survey: Any, timeout_s: float) -> list[str]:
    from drivers.discover_serial import ranges

    out = []
    for t in survey.tried:
        where = f"  tried {t.port}"
        if t.bauds:
            where += (f" at {', '.join(map(str, t.bauds))} baud, addresses {ranges(t.addresses)} "
                      f"({timeout_s:g} s for each that is silent)")
        out.append(f"{where}: {t.problem or 'no answer'}")
    return out


def _next_step(found: int, survey: Any, config: str, ble_seconds: float, ble_failed: bool = False) -> str:
    if found:
        return f"Next: paste the blocks above into {config} (sudoedit {config}), then run: koto check --config {config}"
    if survey is not None and survey.tried:
        port = survey.tried[0].port
        return (f"Next: check the wiring, then look wider: koto discover --port {port} --address 1-247 "
                "--baud 9600,2400,4800,19200")
    if survey is not None:
        return ("Next: plug in the USB RS-485 adapter (ls /dev/serial/by-id should list it), then run koto "
                "discover again")
    if ble_failed:
        return ("Next: BLE needs a Bluetooth adapter and bluetoothd (systemctl status bluetooth; bluetoothctl list "
                "should show the adapter), then run: koto discover --no-serial")
    return ("Next: move the device closer or wake it, then listen longer: koto discover --no-serial --ble-seconds "
            f"{max(30, int(ble_seconds * 3))}")


async def discover_report(*, ports: list[str] | None, addresses: list[int], bauds: list[int], timeout_s: float,
                          ble_seconds: float, gpio_pins: list[int], pin_factory: str | None,
                          ble_backend: Any = None, on_step: Any = None, on_ble: Any = None,
                          config: str = "/etc/koto/koto.toml") -> Report:
    """Probe what was asked, telling `on_step` (serial) and `on_ble` (before listening) as it goes."""
    lines: list[str] = []
    found: list[Any] = []
    devices: list[Any] = []
    survey = None
    ble_failed = gpio_failed = False
    if ports != []:
        from drivers.discover_serial import list_ports
        from drivers.discover_serial import survey as run_survey

        if ports is None:
            from drivers.pi_uart import PI_UART, not_the_pins

            listed = list_ports()
            lines.append(f"Serial ports: {', '.join(p.stable_path for p in listed) or 'none found'}")
            if (elsewhere := not_the_pins(PI_UART)) is not None:  # (a Pi 5 before dtparam=uart0_console)
                lines.append(f"  not probed: {elsewhere[0]}; to read a meter on the pins, {elsewhere[1]}")
        survey = await run_survey(ports, addresses=addresses, bauds=bauds, timeout_s=timeout_s, on_step=on_step)
        found = survey.found
        lines.append(f"Modbus meters found: {len(found)}")
        for f in found:
            lines.append(f"  {f.port} address {f.address} at {f.baud} baud: {f.model or 'unknown model'}")
        if not found:
            lines += _tried_lines(survey, timeout_s)
            lines.append(NO_ANSWER if any(t.bauds and not t.problem for t in survey.tried) else
                         "  No serial port to probe: is the USB RS-485 adapter plugged in?")
    if ble_seconds > 0:
        from drivers.discover_ble import discover_ble

        if on_ble is not None:
            on_ble(ble_seconds)
        try:
            devices = await discover_ble(ble_seconds, backend=ble_backend)
            lines.append(f"BTHome devices heard in {ble_seconds:g} s: {len(devices)}")
            for d in devices:
                vals = ", ".join(f"{k}={v}" for k, v in sorted(d.values.items()))
                lines.append(f"  {d.address} {d.name or '-'} {d.rssi} dBm {vals}")
        except BackendUnavailable as e:  # no adapter, no D-Bus, BlueZ down: say so, keep the rest of the report
            ble_failed = True
            lines.append(f"BLE scan not possible here: {e}")
        except Exception as e:
            ble_failed = True
            lines.append(f"BLE scan not possible here: {type(e).__name__}: {e}")
    if gpio_pins:
        from drivers.pins import read_input_states, select_pin_factory

        try:
            factory = select_pin_factory(pin_factory)
            lines.append("GPIO inputs:")
            lines += gpio_lines(read_input_states(gpio_pins, factory))
        except Exception as e:
            gpio_failed = True
            lines.append(f"GPIO not readable here: {e}")
    block = serial_block(found) + ble_block(devices, start=len(found) + 1)
    if block:
        lines += ["", "Paste into koto.toml (then name each appliance and check its profile):", "", *block]
    probed = ports != [] or ble_seconds > 0
    n = len(found) + len(devices)
    return Report("\n".join(lines).rstrip() + "\n", n, probed,
                  _next_step(n, survey, config, ble_seconds, ble_failed) if probed else "", gpio_failed)


async def run_discover(**kwargs: Any) -> str:
    """The report's text (what `koto discover` prints); see `discover_report`."""
    return (await discover_report(**kwargs)).text
