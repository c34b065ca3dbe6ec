"""What BLE costs in RSS: a fresh interpreter importing what the gateway imports without BLE, against the same
plus bleak + bthome-ble imported, a scanner facade built and one advert parsed through our adapter.

    .venv/bin/python bench/ble_memory.py [--runs 5]

Prints the median VmRSS of each (fresh process per run) and the difference in MiB. The gateway's budget is 60 MiB
RSS for the whole daemon on a Pi Zero 2 W class device. The baseline imports only modules that exist in this
checkout (optional ones are skipped and named), so run it again as the gateway grows.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the daemon imports without BLE (those present in the checkout). Hardware/network libraries for other
# sources (gpiozero, pymodbus, aiomqtt) are left out on purpose: this measures BLE's share, not theirs.
BASELINE = """
import asyncio, sqlite3, json, logging, tomllib, importlib
mods = ["koto.reading", "koto.clock", "koto.canonical", "koto.signing", "drivers.base", "drivers.ble",
        "metering", "gateway", "click"]
skipped = []
for m in mods:
    try:
        importlib.import_module(m)
    except ImportError:
        skipped.append(m)
"""

WITH_BLE = BASELINE + """
import bleak, bthome_ble
from bleak.backends.bluezdbus import scanner as _bluez_scanner  # what BleakScanner loads on Linux
from drivers.ble_backend import BleakBackend
from drivers.bthome import BTHOME_UUID, BTHomeDecoder, build_service_data
d = BTHomeDecoder("A4:C1:38:8D:18:B2").decode(
    {BTHOME_UUID: build_service_data(packet_id=1, power_mw=69_140, energy_mwh=1_346_067_000)}, t_s=1.0)
assert d is not None and d.sensors["power"] == 69.14
BleakBackend()._make_scanner()  # the BlueZ scanner object (no D-Bus call until start)
"""

REPORT = """
import sys
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(rss, ",".join(skipped), len(sys.modules), " ".join(m for m in loaded if m in (
    "bleak", "bthome_ble", "habluetooth", "bluetooth_data_tools", "bluetooth_sensor_state_data",
    "sensor_state_data", "dbus_fast", "cryptography", "bluetooth_adapters", "btsocket")))
"""


def measure(code: str) -> tuple[int, str, int, str]:
    out = subprocess.run([sys.executable, "-c", code + REPORT], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split("\n")[0].split(" ", 3)
    return int(out[0]), out[1], int(out[2]), out[3] if len(out) > 3 else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    base = [measure(BASELINE) for _ in range(runs)]
    ble = [measure(WITH_BLE) for _ in range(runs)]
    b_kib = statistics.median(r[0] for r in base)
    w_kib = statistics.median(r[0] for r in ble)
    print(f"python {sys.version.split()[0]}, {runs} fresh processes each, median VmRSS")
    print(f"baseline (gateway without BLE): {b_kib / 1024:6.1f} MiB  modules={base[0][2]}"
          f"  not present yet: {base[0][1] or '-'}")
    print(f"with bleak + bthome-ble, 1 advert: {w_kib / 1024:6.1f} MiB  modules={ble[0][2]}")
    print(f"  BLE-related packages loaded: {ble[0][3]}")
    print(f"difference: {(w_kib - b_kib) / 1024:6.1f} MiB")


if __name__ == "__main__":
    main()
