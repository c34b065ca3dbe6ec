"""`koto discover`: probe for meters with the installer watching, refuse what cannot exist, say what comes next.

Exit codes: 0 something was found, 1 the probes found nothing (the report says what was tried and why that usually
happens) or GPIO levels asked for could not be read, 2 an impossible request (a port that is not there, an address
outside 1..248, a baud rate no meter uses), refused before any probing. Progress goes to stderr: on a terminal one
line that follows the addresses, elsewhere (a script, `ssh host koto discover | tee`) a line per port and baud rate
and one every few seconds. The next command to run is said last, on stderr too, so stdout stays a report whose
blocks paste as TOML.
"""

from __future__ import annotations

import logging
import sys
import time

import click

from .cli_common import DEFAULT_CONFIG


def int_list(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo, 0), int(hi, 0) + 1) if hi else [int(lo, 0)])
        except ValueError as e:
            raise click.BadParameter(f"{text!r}: use numbers and ranges such as 1-10,248") from e
    return out


class Progress:
    """Tells the installer what is being probed now, so a minute of silent timeouts does not look like a hang."""

    EVERY_S = 5.0

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._partial = False
        self._last = time.monotonic()

    def _line(self, text: str) -> None:
        if self._partial:
            click.echo("\r\x1b[K", nl=False, err=True)
            self._partial = False
        click.echo(text, err=True)
        self._last = time.monotonic()

    def __call__(self, step: object) -> None:
        from drivers.discover_serial import MODEL_NAMES, Step

        assert isinstance(step, Step)
        if step.problem is not None:
            self._line(f"  {step.problem}")
        elif step.found is not None:
            name = MODEL_NAMES.get(step.found.model or "", "a device of unknown model")
            self._line(f"  address {step.address}: {name} ({step.found.evidence})")
        elif step.address is None:
            self._line(f"probing {step.port} at {step.baud} baud ...")
        elif self._tty:
            click.echo(f"\r\x1b[K  address {step.address} ...", nl=False, err=True)
            self._partial = True
        elif time.monotonic() - self._last >= self.EVERY_S:
            self._line(f"  still probing: address {step.address}")

    def ble(self, seconds: float) -> None:
        self._line(f"listening for BTHome adverts for {seconds:g} s (--ble-seconds 0 skips this) ...")

    def close(self) -> None:
        if self._partial:
            click.echo("\r\x1b[K", nl=False, err=True)
            self._partial = False


@click.command()
@click.option("--port", "ports", multiple=True, help="Serial port to probe (repeatable). Default: every port found.")
@click.option("--no-serial", is_flag=True, help="Do not probe serial ports.")
@click.option("--address", default="1-10", show_default=True,
              help="Modbus addresses to try, 1..247 (248: a PZEM-004T's general address), e.g. 1-10,248.")
@click.option("--baud", default="9600,2400", show_default=True, help="Baud rates to try, in order.")
@click.option("--timeout", type=click.FloatRange(0.05, 10), default=0.3, show_default=True,
              help="Seconds to wait for each reply.")
@click.option("--ble-seconds", type=click.FloatRange(0, 600), default=10.0, show_default=True,
              help="Listen for BTHome adverts this long (0: skip BLE).")
@click.option("--gpio", default="", help="GPIO inputs to show, e.g. 17,27 (default: none).")
@click.option("--pin-factory", default=None, help="lgpio (a Pi) or mock; default $GPIOZERO_PIN_FACTORY or lgpio.")
def discover(ports: tuple[str, ...], no_serial: bool, address: str, baud: str, timeout: float, ble_seconds: float,
             gpio: str, pin_factory: str | None) -> None:
    """Find meters on serial ports, BTHome devices in range and GPIO input levels; print a config to paste."""
    import asyncio

    from drivers.discover_serial import check_request

    from .discover import discover_report

    addresses, bauds = int_list(address), int_list(baud)
    port_list = [] if no_serial else (list(ports) or None)
    if port_list != []:
        check_request(port_list, addresses, bauds)  # exit 2 with every impossible argument named, before probing
    progress = Progress()
    ble_log = logging.getLogger("koto.drivers.ble")
    level = ble_log.level
    if not ble_log.isEnabledFor(logging.INFO):  # without -v: the scanner's "retrying" warnings are the daemon's;
        ble_log.setLevel(logging.ERROR)  # here the report says once why BLE could not be scanned
    try:
        report = asyncio.run(discover_report(
            ports=port_list, addresses=addresses, bauds=bauds, timeout_s=timeout, ble_seconds=ble_seconds,
            gpio_pins=int_list(gpio), pin_factory=pin_factory, on_step=progress, on_ble=progress.ble,
            config=DEFAULT_CONFIG))
    finally:
        progress.close()
        ble_log.setLevel(level)
    click.echo(report.text, nl=False)
    if report.next_step:
        click.echo(report.next_step, err=True)
    if (report.probed and not report.found) or report.gpio_failed:
        raise SystemExit(1)
