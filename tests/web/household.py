"""A household gateway with the status page on, simulated hardware, as a child process for the browser tests and
bench/web_rss.py:

    python -m tests.web.household --folder DIR --port PORT [--speed 30] [--web/--no-web] [--history]

- a **washer** on an Eastron SDM120 (pymodbus RTU server on a pty, the real Modbus driver), running its programme;
- a **kettle** on a second SDM120 on the same line (address 3), boiling 100 s of every 190 s, behind an
  **enforcement relay** (a MockFactory pin) and without any entitlement: the page must say it is locked, why and how
  to unlock it; learn mode on the page records its boil;
- a spare **SDM120 at address 2 on a second pty**, configured nowhere: what pairing finds, reads and adds.

The config is written to DIR/koto.toml (pairing adds to DIR/state/household.toml), the installer PIN `PIN` is set,
`--history` seeds 29 days of usage so the chart has something to show. When the page listens, one JSON line goes to
stdout: {"url": ..., "spare_port": ..., "config": ..., "pid": ...}. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

PIN = "2468"
RELAY_PIN = 22


def config_text(folder: Path, washer_port: str, web_port: int) -> str:
    return f"""# A household's gateway (tests/web/household.py). Comments like this one must survive pairing.
[gateway]
id = "home-gw"
state_dir = "{folder / 'state'}"
timezone = "Europe/Berlin"
batch_ms = 200
checkpoint_s = 2
hold_s = 0  # every batch written at once: today's usage shows on the page within seconds
web_port = {web_port}
web_host = "127.0.0.1"

[tariff]  # the household's local tariff
id = "household"
version = 1
currency = "EUR"
exponent = 2
rates = [{{ match = "*/*", per_kwh = "0.32" }}, {{ match = "washer/*", per_use = "0.40" }}]
windows = []

[[appliance]]
id = "washer"
profile = "washing_machine"
energy = "washer-sdm120"

[appliance.sources.washer-sdm120]
driver = "modbus"
model = "sdm120"
port = "{washer_port}"
address = 1
poll_s = 0.2
timeout_s = 0.3

[[appliance]]
id = "kettle"
profile = "kettle"
energy = "kettle-sdm120"
relay = {{ pin = {RELAY_PIN} }}  # enforcement: without an unlock it may not start

[appliance.sources.kettle-sdm120]  # a second meter on the washer's RS-485 line
driver = "modbus"
model = "sdm120"
port = "{washer_port}"
address = 3
poll_s = 0.2
timeout_s = 0.3
"""


def seed_history(state: Path, gateway_id: str, now_wall: float, days: int = 29) -> None:
    """Usage on each of the last `days` days (not today), as the meter would have recorded it."""
    from koto.signing import load_private_key
    from metering.ledger import Ledger
    from metering.records import RecordKind, TimeStatus, UsageRecord, usage_draft

    key = load_private_key(state / "keys" / "device.pem")
    drafts = []
    k = 0
    for d in range(days, 0, -1):
        t0 = now_wall - d * 86_400
        for app, fn, wh in (("washer", "heat", 300 + 40 * (d % 5)), ("washer", "wash", 120 + 10 * (d % 3)),
                            ("washer", "spin", 40 + 5 * (d % 4)), ("kettle", "boil", 150 + 20 * (d % 6))):
            if app == "washer" and d % 3 == 1:
                continue  # no wash that day
            k += 1
            rec = UsageRecord(kind=RecordKind.FUNCTION, appliance=app, source=f"{app}-history", function=fn,
                              t_start_mono_ns=k * 10**9, t_end_mono_ns=(k + 600) * 10**9, t_start_wall=t0 + k,
                              t_end_wall=t0 + k + 600, boot_id="history", time_status=TimeStatus.SYNCED,
                              energy_mwh=wh * 1000, duration_ms=600_000, peak_power_mw=2_000_000,
                              currency="EUR", cost_minor=wh * 32 // 1000)
            drafts.append(usage_draft(rec, f"urn:koto:gw:{gateway_id}:{app}"))
    with Ledger.open(state / "ledger.db", gateway_id=gateway_id, key=key) as ledger:
        ledger.append(drafts)


def prepare(sd: Any, save_pin: Any) -> None:
    """The state folder and device key (as `koto provision`), and the installer's PIN."""
    sd.root.mkdir(parents=True, exist_ok=True)
    sd.provision()
    save_pin(sd.root, PIN)


async def run(folder: Path, port: int, *, speed: float, web: bool, history: bool, ready: Any = print) -> None:
    from drivers.gpio.sim import mock_factory
    from drivers.modbus_sim import ModbusSimulator, SimMeter
    from gateway.config import load_config
    from gateway.daemon import Gateway
    from gateway.simulate import Phase, Script, washer
    from gateway.state import StateDir
    from gateway.web.pin import save_pin
    from koto.clock import ScaledClock

    sd = StateDir(folder / "state")
    fresh = not sd.provisioned()
    prepare(sd, save_pin)
    clock = ScaledClock(speed, synced=True)
    t0 = clock.now().mono_ns

    def t() -> float:
        return (clock.now().mono_ns - t0) / 1e9

    wash = washer()
    wash.repeat = True
    boil = Script("kettle", [Phase("off", 90, 0), Phase("boil", 100, 2200, ripple=0.01)], repeat=True)
    pins = mock_factory()
    main = SimMeter("sdm120", 1, energy_kwh=1234.5, time_fn=t, power_fn=wash.power_w)
    kettle_meter = SimMeter("sdm120", 3, energy_kwh=310.0, time_fn=t, power_fn=boil.power_w)
    spare = SimMeter("sdm120", 2, energy_kwh=87.25, time_fn=t, power_fn=lambda s: 640.0 + 30 * ((s // 7) % 2))
    async with ModbusSimulator([main, kettle_meter]) as bus, ModbusSimulator([spare], ) as spare_bus:
        cfg_path = folder / "koto.toml"
        if not cfg_path.exists():
            cfg_path.write_text(config_text(folder, bus.port, port))
        else:  # a restart of the child: the ptys are new
            text = cfg_path.read_text()
            import re

            old = re.search(r'port = "([^"]*ttyKOTO0)"', text)
            cfg_path.write_text(text.replace(old.group(1), bus.port) if old else text)
        cfg = load_config(cfg_path)
        if history and fresh:
            seed_history(sd.root, cfg.id, clock.now().wall)
        gw = Gateway(cfg, clock=clock, backends={"pin_factory": pins}, sync_enabled=False, web=web,
                     runtime_dir=folder / "run")  # the status file and the power log, as under systemd
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        runner = asyncio.create_task(gw.run(stop))
        if web:
            await _wait_listening(port)
        ready(json.dumps({"url": f"http://127.0.0.1:{port}", "spare_port": spare_bus.port, "config": str(cfg_path),
                          "pid": __import__("os").getpid()}))
        sys.stdout.flush()
        await asyncio.wait([runner, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await runner


async def _wait_listening(port: int) -> None:
    for _ in range(400):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the status page did not listen on port {port}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--folder", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--speed", type=float, default=30.0)
    p.add_argument("--no-web", action="store_true")
    p.add_argument("--history", action="store_true")
    args = p.parse_args(argv)
    asyncio.run(run(Path(args.folder), args.port, speed=args.speed, web=not args.no_web, history=args.history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
