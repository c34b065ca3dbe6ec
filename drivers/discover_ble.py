"""Scan for BTHome devices for N seconds, list what each reports, print a config block ready to paste.

    python -m drivers.discover_ble --seconds 15 [--adapter hci0] [--scanning active]

`koto discover` calls `discover_ble()` and prints `format_report()`. Adverts come through the same shared scanner
and callback path as the `bthome` source; devices that send encrypted adverts are listed with a bindkey line to
fill in (the key comes from the device's app or firmware, never from the air).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .ble_backend import BleakBackend, Scanning
from .bthome import BTHOME_UUID, BTHomeDecoder
from .errors import BackendUnavailable, FrameError


@dataclass
class FoundDevice:
    address: str
    name: str | None = None
    rssi: int | None = None
    adverts: int = 0
    encrypted: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    problems: Counter[str] = field(default_factory=Counter)


async def discover_ble(seconds: float, *, backend: BleakBackend | None = None) -> list[FoundDevice]:
    """Listen for `seconds` and return the BTHome devices heard, strongest signal first."""
    backend = backend if backend is not None else BleakBackend(scanning="auto")
    found: dict[str, FoundDevice] = {}
    decoders: dict[str, BTHomeDecoder] = {}

    def on_advert(device: Any, adv: Any) -> None:
        if BTHOME_UUID not in adv.service_data:
            return  # phones, beacons, other vendors' sensors
        address = str(device.address).upper()
        dev = found.setdefault(address, FoundDevice(address))
        dev.adverts += 1
        dev.rssi = adv.rssi
        dev.name = adv.local_name or dev.name
        dec = decoders.setdefault(address, BTHomeDecoder(address))
        try:
            decoded = dec.decode(adv.service_data, name=adv.local_name, rssi=adv.rssi)
        except FrameError as e:
            dev.encrypted = dev.encrypted or e.kind == "no_bindkey"
            if e.kind != "no_bindkey":
                dev.problems[e.kind] += 1
            return
        if decoded is not None:
            dev.values.update(decoded.sensors)
            dev.values.update({f"{k} (on/off)": v for k, v in decoded.binary.items()})

    sub = backend.subscribe(on_advert)
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:  # listen, unless the scanner cannot start for a reason that lasts
            await asyncio.sleep(min(left, 0.1))
            if getattr(backend, "failure_lasts", False) and not getattr(backend, "started", True):
                break  # no D-Bus system bus: waiting out --ble-seconds would only delay the same answer
        if not getattr(backend, "started", True):  # it never listened: hearing nothing says nothing of the devices
            why = getattr(backend, "last_failure", "") or "the scanner did not start"
            raise BackendUnavailable(f"could not scan on {backend.where}: {why}")
    finally:
        await sub.close()
    return sorted(found.values(), key=lambda d: -(d.rssi if d.rssi is not None else -999))


def _source_name(dev: FoundDevice) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", (dev.name or "bthome").lower()).strip("-") or "bthome"
    return f"{base}-{dev.address.replace(':', '')[-4:].lower()}"


def config_block(devices: Sequence[FoundDevice]) -> str:
    """TOML for `koto.toml`, one `[appliance.sources.*]` table per device."""
    out: list[str] = []
    for dev in devices:
        out.append(f"[appliance.sources.{_source_name(dev)}]")
        out.append('driver = "bthome"')
        out.append(f'address = "{dev.address}"')
        if dev.encrypted:
            out.append('bindkey = ""  # FILL IN: 32 hex digits from the device\'s app; its adverts are encrypted')
        out.append("stale_after_s = 300")
        out.append("")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def format_report(devices: Sequence[FoundDevice], seconds: float) -> str:
    if not devices:
        return (f"No BTHome device heard in {seconds:g} s. Is the device powered, set to BTHome v2, and within "
                "a few metres? Is bluetoothd running (systemctl status bluetooth)?\n")
    lines = [f"{len(devices)} BTHome device(s) heard in {seconds:g} s:"]
    for dev in devices:
        what = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(dev.values.items()))
        if dev.encrypted:
            what = (what + ", " if what else "") + "encrypted (needs its bindkey)"
        if dev.problems:
            what += "; bad adverts: " + ", ".join(f"{k} x{n}" for k, n in sorted(dev.problems.items()))
        lines.append(f"  {dev.address}  {dev.name or '-':<20} {dev.rssi} dBm  {dev.adverts} adverts  {what}")
    lines += ["", "Paste into koto.toml:", "", config_block(devices)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drivers.discover_ble", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--adapter", default=None, help="e.g. hci0 (default: the system's default adapter)")
    ap.add_argument("--scanning", choices=["auto", "passive", "active"], default="auto")
    args = ap.parse_args(argv)
    scanning: Scanning = args.scanning

    async def run() -> list[FoundDevice]:
        return await discover_ble(args.seconds, backend=BleakBackend(adapter=args.adapter, scanning=scanning))

    print(format_report(asyncio.run(run()), args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
