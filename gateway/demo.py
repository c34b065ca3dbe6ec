"""`koto demo`: three simulated appliances metered through the real driver stacks into a local signed ledger.

- a **washer** on an Eastron SDM120 Modbus RTU meter: a pymodbus RTU server on a pseudo-terminal pair, polled by
  the real Modbus driver (power for attribution, the energy register for totals);
- a **kettle** on an S0 pulse meter (1000 imp/kWh): pulses driven into a gpiozero MockFactory pin with exact edge
  times, counted by the real S0 driver;
- an **air conditioner** on a BTHome v2 smart plug (power and energy adverts replayed through the real bleak front
  end and the bthome-ble parser) whose heating/cooling comes from the reversing-valve relay contact on a GPIO
  (`mode` = heat when energised, cool otherwise).

Time is compressed (`--speed`, default 60x: a 37-minute wash takes about 37 seconds). The gateway itself is the
production `Gateway` from gateway/daemon.py; only the clock and the hardware backends are simulated. At the end the
usage table is read back from the ledger and the chain is verified, exactly as `koto usage` and `koto verify` do.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from koto.clock import ScaledClock
from koto.files import write_atomic
from metering.meter import MeterEvent

from .config import parse_config
from .daemon import Gateway
from .errors import StateError
from .simulate import Script, air_conditioner, kettle, washer
from .state import StateDir

DEMO_GATEWAY_ID = "demo-gw"
# Written into the state folder the demo makes: only a folder holding it (or a pre-marker demo's, see
# `is_demo_folder`) is wiped at the next run.
DEMO_MARK = ".koto-demo"
MARK_TEXT = ("This folder was made by `koto demo`, which deletes everything in it at the start of each run.\n"
             "Do not keep anything else here.\n")
# Everything a demo run wrote before the marker existed: the ledger with SQLite's WAL files, its lock and reader
# lease files, and keys/ with the device key pair.
OLD_DEMO_FILES = frozenset({"ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.db-journal", "ledger.db.lock",
                            "ledger.db.readers", "keys"})
OLD_DEMO_KEYS = frozenset({"device.pem", "device.pub.pem"})
AC_ADDRESS = "A4:C1:38:00:00:AC"
KETTLE_PIN = 17
AC_MODE_PIN = 27
IMP_PER_KWH = 1000

DEMO_TARIFF: dict[str, Any] = {
    "id": "demo-household",
    "version": 1,
    "currency": "EUR",
    "exponent": 2,
    "rates": [
        {"match": "*/*", "per_kwh": "0.32"},
        {"match": "washer/*", "per_use": "0.40"},
        {"match": "kettle/*", "per_use": "0.02"},
    ],
    "windows": [],
}


def demo_config(state_dir: Path, modbus_port: str, *, interim_s: int = 900) -> dict[str, Any]:
    """The config an installer would write for these three appliances (as a TOML document's dict)."""
    return {
        "gateway": {"id": DEMO_GATEWAY_ID, "state_dir": str(state_dir), "timezone": "Europe/Berlin", "batch_ms": 200,
                    "checkpoint_s": 2},
        "tariff": DEMO_TARIFF,
        "appliance": [
            {"id": "washer", "profile": "washing_machine", "subject": "demo-household/washer",
             "energy": "washer-sdm120", "interim_s": interim_s,
             "sources": {"washer-sdm120": {"driver": "modbus", "model": "sdm120", "port": modbus_port,
                                           "address": 1, "poll_s": 0.1, "timeout_s": 0.3}}},
            {"id": "kettle", "profile": "kettle", "subject": "demo-household/kettle", "energy": "kettle-s0",
             "interim_s": interim_s,
             "sources": {"kettle-s0": {"driver": "s0", "pin": KETTLE_PIN, "imp_per_kwh": IMP_PER_KWH,
                                       "report_s": 0.5, "poll_s": 0.05}}},
            {"id": "aircon", "profile": "air_conditioner", "subject": "demo-household/aircon",
             "energy": "aircon-plug", "interim_s": interim_s,
             "sources": {"aircon-plug": {"driver": "bthome", "address": AC_ADDRESS},
                         "aircon-valve": {"driver": "gpio_signal", "pin": AC_MODE_PIN, "signal": "mode",
                                          "active": "high", "pull": "down", "active_value": "heat",
                                          "inactive_value": "cool", "bounce_ms": 5}}},
        ],
    }


class _Sim:
    """Drives the simulated hardware from the appliance scripts on the scaled clock."""

    def __init__(self, clock: ScaledClock, pin_factory: Any, ble: Any) -> None:
        self.clock = clock
        self.t0 = clock.now().mono_ns
        self.pin_factory = pin_factory
        self.ble = ble
        self.washer, self.kettle, self.aircon = washer(), kettle(), air_conditioner()

    def t(self) -> float:
        """Seconds of simulated time since the demo started."""
        return (self.clock.now().mono_ns - self.t0) / 1e9

    @property
    def length_s(self) -> float:
        return max(s.length_s for s in (self.washer, self.kettle, self.aircon))

    async def kettle_pulses(self) -> None:
        from drivers.gpio.sim import run_pulse_train

        pin = self.pin_factory.pin(KETTLE_PIN)
        await run_pulse_train(pin, self.clock, lambda: int(self.kettle.power_w(self.t()) * 1000), IMP_PER_KWH,
                              step_s=0.5)

    async def aircon_valve(self) -> None:
        from drivers.gpio.sim import drive_edges

        pin = self.pin_factory.pin(AC_MODE_PIN)
        level: bool | None = None
        while True:
            heat = self.aircon.signals(self.t()).get("mode") == "heat"
            if heat != level:
                drive_edges(pin, [(self.clock.now().mono_ns, heat)])
                level = heat
            await self.clock.sleep(1.0)

    async def aircon_plug(self) -> None:
        """A BTHome plug advertises power and its energy counter every 10 s (simulated time)."""
        from drivers.ble_backend import ReplayAdvert
        from drivers.bthome import build_service_data

        packet = 0
        while True:
            t = self.t()
            packet = (packet + 1) % 256
            data = build_service_data(packet_id=packet, power_mw=int(self.aircon.power_w(t) * 1000),
                                      energy_mwh=int(self.aircon.energy_wh(t) * 1000) + 812_345_000)
            self.ble.replay.push(ReplayAdvert(AC_ADDRESS, data, rssi=-58))
            await self.clock.sleep(10.0)


def _fresh_state(sd: StateDir) -> None:
    """The demo starts from an empty ledger each run, with its own device key, in a folder only it uses.

    It wipes the folder only when that is missing, empty, or a demo's (`is_demo_folder`); anything else (a live
    gateway's state, someone's files) is refused with a `StateError` before a file is touched."""
    root = sd.root
    if root.exists() and any(root.iterdir()):
        if not is_demo_folder(root):
            raise StateError(str(root), "not a folder `koto demo` made, and the demo wipes its folder at each run; "
                             "nothing was deleted: give --state-dir a new or empty folder")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / DEMO_MARK, MARK_TEXT.encode())
    sd.provision()


def is_demo_folder(root: Path) -> bool:
    """Whether `koto demo` made this folder: it holds the demo's marker, or (a demo before the marker) nothing but
    what a demo writes, with a ledger of the demo's gateway id. A live gateway's folder can hold the same names
    (a ledger and keys/), so the gateway id is what tells them apart."""
    if (root / DEMO_MARK).is_file():
        return True
    if root.is_symlink() or not root.is_dir():
        return False
    if not set(os.listdir(root)) <= OLD_DEMO_FILES or "ledger.db" not in os.listdir(root):
        return False
    keys = root / "keys"
    if keys.exists() and (keys.is_symlink() or not keys.is_dir() or not set(os.listdir(keys)) <= OLD_DEMO_KEYS):
        return False
    return _ledger_gateway_id(root / "ledger.db") == DEMO_GATEWAY_ID


def _ledger_gateway_id(path: Path) -> str | None:
    """The gateway id in a ledger file; None when it is not a readable Koto ledger. Opened immutable: SQLite then
    makes no -wal/-shm files beside a folder's ledger that may not be the demo's (the id is written when a ledger is
    made, and a demo's closed ledger has its WAL folded in)."""
    import sqlite3

    from metering.ledger.store import K_GATEWAY

    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            row = conn.execute("SELECT value FROM kv WHERE key=?", (K_GATEWAY,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _printer(out: Callable[[str], None], clock: ScaledClock, t0: int) -> Callable[[MeterEvent], None]:
    interesting = {"function_started", "cycle_started", "cycle_ended", "rejected", "gap", "register_reset",
                   "register_wrap", "meter_swap", "implausible_jump", "register_dip"}

    def on_event(ev: MeterEvent) -> None:
        if ev.kind in interesting:
            t = (clock.now().mono_ns - t0) / 1e9
            out(f"  [{int(t // 60):3d}:{int(t % 60):02d}] {ev.message}")

    return on_event


async def run_demo(state_dir: Path, *, speed: float = 60.0, out: Callable[[str], None] = print,
                   duration_s: float | None = None) -> int:
    """Run the demo; return 0 when the ledger verifies at the end. `duration_s` is simulated seconds."""
    from drivers.ble_backend import ReplayBackend
    from drivers.gpio.sim import mock_factory
    from drivers.modbus_sim import ModbusSimulator, SimMeter

    sd = StateDir(state_dir)
    _fresh_state(sd)
    clock = ScaledClock(speed, synced=True)
    pin_factory = mock_factory()
    ble = ReplayBackend(clock=clock)
    sim = _Sim(clock, pin_factory, ble)
    meter = SimMeter("sdm120", 1, energy_kwh=1234.5, time_fn=sim.t, power_fn=sim.washer.power_w)
    length = duration_s if duration_s is not None else sim.length_s
    async with ModbusSimulator([meter]) as bus:
        out(f"Koto demo: washer (Modbus SDM120 on the pty {bus.port}), kettle (S0 on GPIO{KETTLE_PIN}), "
            f"air conditioner (BTHome plug + reversing-valve contact on GPIO{AC_MODE_PIN}); {length / 60:.0f} "
            f"simulated minutes at {speed:g}x, ledger in {state_dir}/")
        cfg = parse_config(demo_config(state_dir, bus.port), file="<koto demo>")
        gw = Gateway(cfg, clock=clock, backends={"pin_factory": pin_factory, "ble": ble},
                     on_event=_printer(out, clock, sim.t0), sync_enabled=False)
        stop = asyncio.Event()
        drivers = [asyncio.create_task(c) for c in (sim.kettle_pulses(), sim.aircon_valve(), sim.aircon_plug())]
        runner = asyncio.create_task(gw.run(stop))
        try:
            # Stop when the programmes are over (simulated time), or earlier if the gateway itself ended.
            await asyncio.wait([runner], timeout=max(0.0, (length - sim.t()) / speed))
        finally:
            stop.set()
            await runner
            for d in drivers:
                d.cancel()
            await asyncio.gather(*drivers, return_exceptions=True)
    return _summary(sd, cfg, out)


def _summary(sd: StateDir, cfg: Any, out: Callable[[str], None]) -> int:
    from metering.ledger import Ledger

    from .usage_report import usage_table

    with Ledger.open(sd.ledger, gateway_id=cfg.id, key=None) as ledger:
        rows = ledger.usage_summary(by="function", tz=cfg.tz)
        report = ledger.verify(sd.public_key())
        head, _ = ledger.head()
    out("")
    out("Usage by function, read back from the ledger:")
    out(usage_table(rows, "function"))
    out("")
    if report.ok:
        koto = _koto_command()
        out(f"Ledger: {head} signed, hash-chained records; verify ok. Try: {koto} usage --state-dir {sd.root} "
            f"--by cycle, and {koto} verify --state-dir {sd.root}")
        return 0
    out(f"Ledger verify FAILED at seq {report.first_bad_seq}: {report.reason}")
    return 1


def _koto_command() -> str:
    """How the person who ran the demo can run `koto` (from `make demo` it is not on their PATH)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "koto" and shutil.which("koto") != str(argv0.resolve()):
        return os.path.relpath(argv0) if not argv0.is_absolute() else str(argv0)
    return "koto"


def demo_scripts() -> dict[str, Script]:
    return {"washer": washer(), "kettle": kettle(), "aircon": air_conditioner()}
