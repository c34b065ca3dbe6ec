"""The whole system on one machine, for the chaos suite and the soak: a real gateway and its real peers.

- the gateway: `koto run` in a child process (tests/support/sim_gateway.py: production code from the command line
  down, with the simulated hardware behind the driver seams and a compressed clock all its incarnations share),
  its state folder optionally on a size-limited tmpfs of its own (the full-disk fault);
- Modbus meters: a pymodbus RTU server on a pty pair in this process (drivers/modbus_sim.py), behind a symlink the
  config names, like a USB adapter under /dev/serial/by-id (the vanishing-adapter fault pulls it);
- S0 pulse meters and GPIO contacts on a gpiozero MockFactory, BTHome plugs through the BLE driver's replay
  backend, all driven inside the child from the same appliance scripts;
- a real Mosquitto (tests/support/broker.py) and the reference receiver, `koto-cloud serve` in a child process
  with SQLite, or with PostgreSQL (`store="postgres"`: a private server started for the run,
  tests/support/postgres.py, as the receiver's own tests do).

`Rig` acts as systemd would: when the gateway exits on its own it is started again (`Restart=always`); those
restarts are counted, and the suite reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.modbus_sim import ModbusSimulator, PtyWire, SimMeter
from gateway.simulate import SCRIPTS
from gateway.state import StateDir
from tests.support.anchored_clock import sim_seconds
from tests.support.broker import Mosquitto
from tests.support.ledger_checks import borrowed
from tests.support.paths import REPO
from tests.support.postgres import PostgresServer
from tests.support.sim_gateway import PLAN_ENV, SNAPSHOT_NAME, Plan, repeating
from tests.support.slow import scaled

from .cloud_db import CloudView

GATEWAY = "gw-chaos"
KOTO_CLOUD = [sys.executable, "-c", "import sys; from cloud.cli import main; sys.exit(main())"]
WALL0 = 1_764_460_800.0  # 2025-11-30 00:00 UTC: the simulated day starts at midnight
PROFILES = {"washer": "washing_machine", "kettle": "kettle", "air_conditioner": "air_conditioner"}


@dataclass(frozen=True)
class Appliance:
    """One simulated appliance: `kind` is its meter (modbus, s0, ble), `script` a gateway.simulate script."""

    id: str
    kind: str
    script: str
    phase_s: float = 0.0


def mixed(n: int) -> list[Appliance]:
    """`n` appliances over the three driver kinds: half on Modbus, a quarter on S0, a quarter on BTHome plugs
    (every BTHome air conditioner also has its reversing-valve contact on a GPIO)."""
    plugged = ["air_conditioner", "washer", "kettle"]
    scripts = list(SCRIPTS)
    out: list[Appliance] = []
    kinds = ["modbus", "s0", "modbus", "ble"]
    for i in range(n):
        kind = kinds[i % 4]
        script = {"s0": "kettle", "ble": plugged[(i // 4) % 3]}.get(kind, scripts[i % len(scripts)])
        out.append(Appliance(f"{kind}-{i}", kind, script, phase_s=137.0 * i))
    return out


@dataclass
class RigConfig:
    appliances: list[Appliance]
    speed: float = 10.0
    interim_s: int = 60
    poll_s: float = 1.0
    tmpfs_size: str = ""  # e.g. "16m": the state folder on a tmpfs of that size (needs root); "" = a plain folder
    power_cut_snapshots: bool = False
    probe_every_s: float = 0.0
    ack_timeout_s: float = 2.0
    stale_after_s: float = 60.0
    gateway: dict[str, float] = field(default_factory=dict)  # extra [gateway] keys (hold_s, checkpoint_s...)
    housekeeping: dict[str, float] = field(default_factory=dict)  # retention on the test's scale (sim_gateway.py)
    store: str = "sqlite"  # the receiver's database: "sqlite" or "postgres"


@dataclass
class Rig:
    folder: Path
    cfg: RigConfig
    real0_ns: int = field(default_factory=time.monotonic_ns)
    gateway_exits: list[int] = field(default_factory=list)  # exit codes of exits nobody asked for
    starts: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = self.folder / "state"
        self.control = self.folder / "control"
        self.snapshots = self.folder / "power-cut"
        self.db = str(self.folder / "cloud.db")  # or the DSN of the run's PostgreSQL server (`_start_all`)
        self.cloud = CloudView(self.db)
        self.broker = Mosquitto(self.folder / "broker")
        self.gw: subprocess.Popen[bytes] | None = None
        self.rx: subprocess.Popen[bytes] | None = None
        self.mounted = False
        self.modbus: ModbusSimulator | None = None
        self._exits: contextlib.AsyncExitStack | None = None
        self._watch: asyncio.Task[None] | None = None
        self._held = False  # the gateway is down on purpose (a fault is in progress)

    # -- simulated time ------------------------------------------------------------------------------------------
    def sim_t(self) -> float:
        return sim_seconds(self.real0_ns, self.cfg.speed)

    def note(self, text: str) -> None:
        line = f"[{time.monotonic_ns() / 1e9 - self.real0_ns / 1e9:7.1f} s] {text}"
        self.log.append(line)
        print(line, flush=True)

    # -- set-up --------------------------------------------------------------------------------------------------
    async def __aenter__(self) -> Rig:
        self._exits = contextlib.AsyncExitStack()
        await self._exits.__aenter__()
        try:
            await self._start_all()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start_all(self) -> None:
        assert self._exits is not None
        for d in (self.state, self.control, self.snapshots):
            d.mkdir(parents=True, exist_ok=True)
        if self.cfg.tmpfs_size:
            subprocess.run(  # noqa: ASYNC221 - once, at set-up, and quick
                ["mount", "-t", "tmpfs", "-o", f"size={self.cfg.tmpfs_size}", "tmpfs", str(self.state)],
                check=True, capture_output=True)
            self.mounted = True
        pem = StateDir(self.state).provision().public_pem
        if self.cfg.store == "postgres":
            self.db = self._exits.enter_context(PostgresServer()).dsn
            self.cloud = CloudView(self.db)
        with self.cloud.store() as store:
            store.register(GATEWAY, pem)
        self.broker.start()
        self.start_receiver()
        meters = [a for a in self.cfg.appliances if a.kind == "modbus"]
        self.modbus = ModbusSimulator([self._sim_meter(i, a) for i, a in enumerate(meters, start=1)])
        self.modbus.wire = PtyWire(self.folder, "ttyUSB-chaos")
        await self._exits.enter_async_context(self.modbus)
        self._write_plan()
        (self.folder / "koto.toml").write_text(self._config_toml())
        self.start_gateway()
        self._watch = asyncio.create_task(self._supervise())

    def _sim_meter(self, address: int, a: Appliance) -> SimMeter:
        script = repeating(a.script)
        return SimMeter("sdm120", address, energy_kwh=1000.0 + address, time_fn=self.sim_t,
                        power_fn=lambda t: script.power_w(t + a.phase_s))

    def _write_plan(self) -> None:
        s0, signals, ble = [], [], []
        pins = iter([17, 22, 23, 24, 25, 5, 6, 12, 13, 16, 19, 20, 21, 26, 4, 18])
        self.pins: dict[str, int] = {}
        for i, a in enumerate(self.cfg.appliances):
            if a.kind == "s0":
                self.pins[a.id] = next(pins)
                s0.append({"pin": self.pins[a.id], "script": a.script, "imp_per_kwh": 1000, "phase_s": a.phase_s})
            elif a.kind == "ble":
                ble.append({"address": self.ble_address(a), "script": a.script, "phase_s": a.phase_s,
                            "start_mwh": 800_000_000 + i * 1_000_000, "every_s": 10.0})
                if a.script == "air_conditioner":
                    self.pins[a.id] = next(pins)
                    signals.append({"pin": self.pins[a.id], "script": a.script, "signal": "mode", "value": "heat",
                                    "phase_s": a.phase_s})
        plan = Plan(speed=self.cfg.speed, real0_ns=self.real0_ns, wall0=WALL0, control=self.control, ble=ble, s0=s0,
                    signals=signals, probe_every_s=self.cfg.probe_every_s,
                    power_cut_snapshots=str(self.snapshots) if self.cfg.power_cut_snapshots else "",
                    housekeeping=dict(self.cfg.housekeeping))
        plan.dump(self.folder / "plan.json")

    @staticmethod
    def ble_address(a: Appliance) -> str:
        n = zlib.crc32(a.id.encode()) & 0xFFFF
        return f"A4:C1:38:00:{n >> 8:02X}:{n & 0xFF:02X}"

    def _config_toml(self) -> str:
        assert self.modbus is not None
        lines = [
            "[gateway]", f'id = "{GATEWAY}"', f'state_dir = "{self.state}"', 'timezone = "UTC"',
            *(f"{k} = {v}" for k, v in self.cfg.gateway.items()),
            "", "[cloud]", f'broker = "{self.broker.url}"', f"ack_timeout_s = {self.cfg.ack_timeout_s}", "",
        ]
        address = 0
        for a in self.cfg.appliances:
            lines += ["[[appliance]]", f'id = "{a.id}"', f'profile = "{PROFILES[a.script]}"',
                      f'energy = "{a.id}-meter"', f"interim_s = {self.cfg.interim_s}",
                      f"[appliance.sources.{a.id}-meter]"]
            if a.kind == "modbus":
                address += 1
                lines += ['driver = "modbus"', 'model = "sdm120"', f'port = "{self.modbus.port}"',
                          f"address = {address}", f"poll_s = {self.cfg.poll_s}", f"timeout_s = {scaled(0.3)}"]
            elif a.kind == "s0":
                lines += ['driver = "s0"', f"pin = {self.pins[a.id]}", "imp_per_kwh = 1000"]
            else:
                lines += ['driver = "bthome"', f'address = "{self.ble_address(a)}"',
                          f"stale_after_s = {self.cfg.stale_after_s}"]
                if a.id in self.pins:
                    lines += [f"[appliance.sources.{a.id}-valve]", 'driver = "gpio_signal"',
                              f"pin = {self.pins[a.id]}", 'signal = "mode"', 'active = "high"', 'pull = "down"',
                              'active_value = "heat"', 'inactive_value = "cool"', "bounce_ms = 5"]
            lines.append("")
        return "\n".join(lines)

    # -- the receiver ----------------------------------------------------------------------------------------------
    def start_receiver(self) -> None:
        self.rx = subprocess.Popen([*KOTO_CLOUD, "serve", "--broker", self.broker.url, "--db", self.db],
                                   stdout=subprocess.PIPE, stderr=(self.folder / "receiver.log").open("ab"),
                                   cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.rx.stdout is not None
        line = self.rx.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"koto-cloud serve did not start: {line!r}; see {self.folder / 'receiver.log'}")

    def kill_receiver(self) -> None:
        if self.rx is not None:
            self.rx.kill()
            self.rx.wait()
            if self.rx.stdout:
                self.rx.stdout.close()
            self.rx = None

    # -- the gateway -----------------------------------------------------------------------------------------------
    def start_gateway(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), PLAN_ENV: str(self.folder / "plan.json"),
               "RUNTIME_DIRECTORY": str(self.folder / "run")}
        with (self.folder / "gateway.log").open("ab") as err:
            self.gw = subprocess.Popen([sys.executable, "-m", "tests.support.sim_gateway", "-v", "run", "--config",
                                        str(self.folder / "koto.toml")],
                                       stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, env=env)
        self.starts += 1
        self._held = False

    def kill_gateway(self, sig: signal.Signals = signal.SIGKILL) -> int:
        """Stop the gateway (SIGKILL unless told) and keep it down until `start_gateway`; returns its exit code."""
        self._held = True
        assert self.gw is not None
        if self.gw.poll() is None:
            self.gw.send_signal(sig)
        return self.gw.wait()

    async def _supervise(self) -> None:
        """systemd's Restart=always (RestartSec=1, compressed to a fifth): an exit nobody asked for restarts it."""
        while True:
            await asyncio.sleep(0.1)
            if self.gw is not None and not self._held and self.gw.poll() is not None:
                self.gateway_exits.append(self.gw.returncode)
                self.note(f"gateway exited by itself with {self.gw.returncode}; restarting it (Restart=always)")
                await asyncio.sleep(0.2)
                if not self._held:
                    self.start_gateway()

    def power_cut(self) -> bool:
        """SIGKILL, then the state folder's ledger as of its last fsync (the newest committed image)."""
        image = self.snapshots / SNAPSHOT_NAME
        if not image.exists():
            return False
        self.kill_gateway()
        ledger = StateDir(self.state).ledger
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(ledger) + suffix).unlink()
        tmp = ledger.with_suffix(".restore")
        tmp.write_bytes(image.read_bytes())
        os.replace(tmp, ledger)
        return True

    def gateway_pid(self) -> int | None:
        return self.gw.pid if self.gw is not None and self.gw.poll() is None else None

    # -- what the gateway and the cloud hold -------------------------------------------------------------------
    def gateway_head(self) -> tuple[int, int]:
        """(epoch, last seq) of the gateway's ledger, read as `koto status` would (a reader beside the writer)."""
        with borrowed(StateDir(self.state).ledger, read_only=True) as conn:
            kv = dict(conn.execute("SELECT key, value FROM kv").fetchall())
        return int(kv.get("epoch", 0)), int(kv.get("head_seq", 0))

    def ledger_marks(self) -> tuple[int, int, int]:
        """(anchor seq, acked_through, head seq) of the gateway's ledger, in one read transaction: the first seq it
        still holds (retention moves it), how far the cloud acked, its last seq."""
        with borrowed(StateDir(self.state).ledger, read_only=True) as conn:
            kv = dict(conn.execute("SELECT key, value FROM kv WHERE key IN "
                                   "('anchor_seq', 'acked_through', 'head_seq')").fetchall())
        return int(kv.get("anchor_seq", 1)), int(kv.get("acked_through", 0)), int(kv.get("head_seq", 0))

    def cloud_records_after(self, seq: int, source: str | None = None) -> int:
        """How many records above `seq` the receiver holds (of `source` only, when given)."""
        return self.cloud.records_after(GATEWAY, seq, source)

    def cloud_max_seq(self) -> int:
        return self.cloud.max_seq(GATEWAY)

    # -- tear-down ---------------------------------------------------------------------------------------------
    async def __aexit__(self, *exc: Any) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self.gw is not None and self.gw.poll() is None:
            self.gw.kill()
            self.gw.wait()
        self.kill_receiver()
        self.cloud.close()
        self.broker.stop()
        if self._exits is not None:
            await self._exits.__aexit__(None, None, None)
            self._exits = None
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.state)], check=False, capture_output=True)  # noqa: ASYNC221
            self.mounted = False
