"""`koto bthome forget-counter SOURCE`: forget the encryption counter Koto keeps for an encrypted BTHome device.

Koto refuses an encrypted advert whose counter is below the last one it read from the device, across restarts
(gateway/bthome_counters.py). A device that was reset (a new battery, re-flashed) counts again from 0; Koto reads
it when its counter is below 100, or no higher than it can have counted since Koto last read it (a power cut that
restarted the device and the Pi together). Otherwise its adverts are refused until its counter passes the kept one
(or that limit, growing meanwhile, reaches it), and the journal says so and names this command. The gateway must be
stopped: it holds the ledger, and writes its counters when it stops.
"""

from __future__ import annotations

import re

import click

from metering.errors import LedgerError

from .bthome_counters import forget_counter
from .cli_common import config_option, resolve, state_option
from .config import GatewayConfig
from .errors import StateError, UnknownName

_MAC = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")


def device_address(cfg: GatewayConfig, source: str) -> str:
    """The address of the bthome source named `source`, or `source` itself when it is an address."""
    bthome = {n: str(s.get("address", "")).upper() for a in cfg.appliances for n, s in a.sources.items()
              if s.get("driver") == "bthome"}
    if source in bthome:
        return bthome[source]
    if _MAC.match(source.upper()):
        return source.upper()
    raise UnknownName("bthome source", source, sorted(bthome))


@click.group()
def bthome() -> None:
    """BTHome devices over BLE."""


@bthome.command("forget-counter")
@click.argument("source")
@config_option
@state_option
def forget_counter_cmd(source: str, config_path: str | None, state_dir: str | None) -> None:
    """Forget the encryption counter kept for SOURCE (a bthome source's name, or the device's address): its next
    advert is then read whatever its counter. For a device that was reset (new battery, re-flashed) and whose adverts
    the journal says are refused. Stop the gateway first; it writes the counters it has when it stops."""
    from metering.ledger import Ledger

    cfg, sd, _gid = resolve(config_path, state_dir, need_config=True)
    assert cfg is not None  # need_config
    address = device_address(cfg, source)
    if not sd.ledger.exists():
        click.echo(f"{sd.ledger}: no ledger yet, so no counter is kept for {address}; nothing to forget")
        return
    try:
        ledger = Ledger.open(sd.ledger, gateway_id=cfg.id, key=sd.private_key())
    except LedgerError as e:
        if isinstance(e.__cause__, BlockingIOError):  # the writer's lock is held: the gateway runs
            raise StateError(str(sd.ledger), "the gateway is running (it holds the ledger, and writes the counters it "
                             "has when it stops): stop it first (sudo systemctl stop koto), run this again, then "
                             "start it (sudo systemctl start koto)") from e
        raise
    with ledger:
        forgotten = forget_counter(ledger, address)
    if forgotten is None:
        click.echo(f"no encryption counter is kept for {address}; nothing to forget")
        return
    click.echo(f"forgot encryption counter {forgotten} of {address}: the next advert it sends is read whatever its "
               "counter, and the counter kept again from there. Start the gateway: sudo systemctl start koto")
