"""The real `koto run` in a child process, with simulated hardware behind its driver seams (chaos suite, soak):

    KOTO_SIM_PLAN=plan.json python -m tests.support.sim_gateway -v run --config koto.toml

Everything from the command line down is production code: click, config loading, `run_gateway` with its signal
handling and stop deadline, the `Gateway`, the drivers, the ledger, the sync. Two things are swapped, in the two
places `gateway.runner` builds them, exactly as the demo swaps them in-process:

- the clock: an `AnchoredClock` (compressed time shared by every incarnation of the child and the parent, with a
  wall-clock offset the test can jump), instead of `SystemClock`;
- the backends: a gpiozero MockFactory (ScriptedPins) and a BLE `ReplayBackend`, instead of lgpio and BlueZ.

The simulated appliances that drive those backends run as tasks on the daemon's own event loop (they must: a
MockFactory pin lives in this process): S0 pulse trains, GPIO signal contacts and BTHome plugs advertising power and
their energy counter, each following a `gateway.simulate` script on simulated time. Modbus meters are not here: the
parent serves them on a pty (`drivers.modbus_sim`), so it can pull the adapter.

The plan (JSON, written by the parent) also asks for two test hooks, both off by default:
- `probe`: every `probe_every_s` real seconds this process writes `probe.json` in the control folder with its count
  of asyncio tasks (the soak's leak check; the daemon's status snapshot does not carry it);
- `power_cut_snapshots`: after every committed ledger transaction, and before the commit returns to its caller
  (so before anything is published), an online backup of the ledger as committed goes to that folder. A commit
  with `synchronous=FULL` returns only after its fsync, so the latest complete backup is the ledger as a power
  cut at that moment would leave it. The chaos suite's power cut is SIGKILL plus restoring that image;
- `housekeeping`: retention on a test's time scale, so that a run of minutes prunes several times. `retain_s`
  (simulated seconds) replaces `retain_days`, which the config keeps at a day or more, as production must;
  `every_s` and `retry_s` replace the housekeeper's cadence (`gateway.housekeeping.EVERY_S`, `RETRY_S`); with
  `any_use` set, a use running on an appliance does not hold the prune back. Eight staggered appliances are
  almost never all idle at once, so the daemon's "quiet moment" would let no prune run in a chaos run; the other
  half of the rule (no backlog being drained), and everything the ledger's `prune` refuses (an unacked record,
  the chain head), stay as in production: they are what the chaos suite checks.

A control folder (`control` in the plan) carries the runtime knobs: `wall_offset` (seconds added to the wall
clock) and `silent-<address>` (that BLE device stops advertising while the file exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.simulate import SCRIPTS, Script

from .anchored_clock import AnchoredClock

PLAN_ENV = "KOTO_SIM_PLAN"
TRACEMALLOC_ENV = "KOTO_SIM_TRACEMALLOC"  # seconds between tracemalloc reports (leak hunting; slows the child)
MALLOC_TRIM_ENV = "KOTO_SIM_MALLOC_TRIM"  # set: glibc malloc_trim(0) before each probe (free-but-kept vs live memory)
SNAPSHOT_NAME = "ledger.db"


def repeating(name: str) -> Script:
    script = SCRIPTS[name]()
    script.repeat = True  # an appliance used again and again, for as long as the run lasts
    return script


def silent_flag(control: Path, address: str) -> Path:
    return control / f"silent-{address.replace(':', '')}"


@dataclass
class Plan:
    speed: float
    real0_ns: int
    wall0: float
    control: Path
    ble: list[dict[str, Any]]
    s0: list[dict[str, Any]]
    signals: list[dict[str, Any]]
    probe_every_s: float = 0.0
    power_cut_snapshots: str = ""
    housekeeping: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Plan:
        raw = json.loads(path.read_text())
        raw["control"] = Path(raw["control"])
        return cls(**raw)

    def dump(self, path: Path) -> None:
        raw = {**self.__dict__, "control": str(self.control)}
        path.write_text(json.dumps(raw, indent=1))


class Sim:
    """The simulated appliances of one child, on the daemon's loop."""

    def __init__(self, plan: Plan, clock: AnchoredClock) -> None:
        from drivers.ble_backend import ReplayBackend
        from drivers.gpio.sim import mock_factory

        self.plan = plan
        self.clock = clock
        self.pin_factory = mock_factory()
        self.ble = ReplayBackend(clock=clock)

    def t(self) -> float:
        return (self.clock.now().mono_ns - self.plan.real0_ns) / 1e9

    def coroutines(self) -> Iterator[Coroutine[Any, Any, None]]:
        for s in self.plan.s0:
            yield self._pulses(s)
        for s in self.plan.signals:
            yield self._signal(s)
        for s in self.plan.ble:
            yield self._plug(s)
        if self.plan.s0 or self.plan.signals:
            yield self._trim_pin_histories([s["pin"] for s in (*self.plan.s0, *self.plan.signals)])
        if self.plan.probe_every_s > 0:
            yield self._probe()
        if os.environ.get(TRACEMALLOC_ENV):
            yield self._tracemalloc(float(os.environ[TRACEMALLOC_ENV]))

    def _power(self, spec: dict[str, Any]) -> Callable[[float], float]:
        script, phase = repeating(spec["script"]), float(spec.get("phase_s", 0.0))
        return lambda t: script.power_w(t + phase)

    async def _pulses(self, spec: dict[str, Any]) -> None:
        from drivers.gpio.sim import run_pulse_train

        power = self._power(spec)
        await run_pulse_train(self.pin_factory.pin(spec["pin"]), self.clock, lambda: int(power(self.t()) * 1000),
                              spec["imp_per_kwh"], step_s=float(spec.get("step_s", 0.5)))

    async def _signal(self, spec: dict[str, Any]) -> None:
        from drivers.gpio.sim import drive_edges

        script, phase = repeating(spec["script"]), float(spec.get("phase_s", 0.0))
        pin = self.pin_factory.pin(spec["pin"])
        level: bool | None = None
        while True:
            active = script.signals(self.t() + phase).get(spec["signal"]) == spec["value"]
            if active != level:
                drive_edges(pin, [(self.clock.now().mono_ns, active)])
                level = active
            await self.clock.sleep(1.0)

    async def _plug(self, spec: dict[str, Any]) -> None:
        """A BTHome plug: power and its energy counter (a register: a function of simulated time, so it carries on
        across restarts of the gateway as a real plug's would) every `every_s` simulated seconds."""
        from drivers.ble_backend import ReplayAdvert
        from drivers.bthome import build_service_data

        script, phase = repeating(spec["script"]), float(spec.get("phase_s", 0.0))
        flag = silent_flag(self.plan.control, spec["address"])
        packet = 0
        while True:
            if not flag.exists():
                t = self.t() + phase
                packet = (packet + 1) % 256
                data = build_service_data(packet_id=packet, power_mw=int(script.power_w(t) * 1000),
                                          energy_mwh=int(script.energy_wh(t) * 1000) + int(spec["start_mwh"]))
                self.ble.replay.push(ReplayAdvert(spec["address"], data, rssi=-60))
            await self.clock.sleep(float(spec.get("every_s", 10.0)))

    async def _tracemalloc(self, every_s: float) -> None:
        """Where the memory grew since the first report: the top allocation sites, to `tracemalloc.txt`."""
        import tracemalloc

        tracemalloc.start(4)
        await asyncio.sleep(every_s)
        first = tracemalloc.take_snapshot()
        while True:
            await asyncio.sleep(every_s)
            stats = tracemalloc.take_snapshot().compare_to(first, "traceback")[:12]
            lines = [f"sim {self.t() / 3600:.2f} h, traced {tracemalloc.get_traced_memory()[0] / 1e6:.1f} MB"]
            for st in stats:
                lines.append(f"{st.size_diff / 1024:+.0f} KiB {st.count_diff:+d} blocks")
                lines += [f"    {fr.filename}:{fr.lineno}" for fr in st.traceback]
            (self.plan.control / "tracemalloc.txt").write_text("\n".join(lines) + "\n")

    async def _trim_pin_histories(self, pins: list[int]) -> None:
        """gpiozero's MockPin keeps every state it was driven to (`states`, for a test's assertions); a day of S0
        pulses would make that the soak's one growing list. The simulated hardware's memory is not the daemon's."""
        while True:
            await asyncio.sleep(5.0)
            for n in pins:
                del self.pin_factory.pin(n).states[:-16]

    async def _probe(self) -> None:
        out = self.plan.control / "probe.json"
        trim = None
        if os.environ.get(MALLOC_TRIM_ENV):
            import ctypes

            trim = ctypes.CDLL("libc.so.6").malloc_trim
        while True:
            if trim is not None:
                trim(0)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "tasks": len(asyncio.all_tasks()), "sim_s": self.t(),
                                       **memory_split()}))
            os.replace(tmp, out)
            await asyncio.sleep(self.plan.probe_every_s)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]


@functools.cache
def _libs() -> tuple[Any, Any]:
    sqlite = ctypes.CDLL("libsqlite3.so.0")  # the copy _sqlite3 linked: its counters are the ledger's
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return sqlite, libc


def memory_split() -> dict[str, int]:
    """Where the process's heap is (the soak's attribution of RSS growth): SQLite's own allocations (page caches,
    statements), and glibc malloc's bytes in use and free-but-kept (main arena plus mmapped chunks). Empty when the
    libraries are not the shared ones this expects."""
    try:
        sqlite, libc = _libs()
        mi = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"sqlite_kib": int(sqlite.sqlite3_memory_used()) // 1024,
            "malloc_used_kib": (mi.uordblks + mi.hblkhd) // 1024, "malloc_free_kib": mi.fordblks // 1024}


def snapshot(conn: sqlite3.Connection, folder: Path) -> None:
    """The ledger as committed, into `folder/ledger.db`, replaced atomically (a kill mid-copy leaves the last one)."""
    tmp = folder / (SNAPSHOT_NAME + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    dest = sqlite3.connect(str(tmp))
    try:
        conn.backup(dest)
    finally:
        dest.close()
    os.replace(tmp, folder / SNAPSHOT_NAME)


def install_power_cut_snapshots(folder: Path) -> None:
    """After each committed transaction (and each autocommit write) of the ledger, before it returns: `snapshot`.
    Retention's prune is one of those transactions (`retention` imports `transaction` by name, so it is swapped
    there too): without it a power cut would put back records a committed prune had deleted."""
    from metering.ledger import facade, retention, store

    folder.mkdir(parents=True, exist_ok=True)
    transaction = store.transaction

    @contextlib.contextmanager
    def snapshotting(conn: sqlite3.Connection, path: Path, failure: str) -> Iterator[None]:
        with transaction(conn, path, failure):
            yield
        snapshot(conn, folder)

    store.transaction = snapshotting
    retention.transaction = snapshotting  # type: ignore[attr-defined]
    write = facade.Ledger._write

    def snapshotting_write(self: facade.Ledger, sql: str, params: tuple[Any, ...]) -> None:
        with self._mutex:
            write(self, sql, params)
            snapshot(self._conn, folder)

    facade.Ledger._write = snapshotting_write  # type: ignore[method-assign]


def install(plan: Plan) -> None:
    """Swap the clock and the backends in `gateway.runner` (see the module docstring)."""
    from gateway import runner

    clock = AnchoredClock(plan.speed, real0_ns=plan.real0_ns, wall0=plan.wall0,
                          offset_file=plan.control / "wall_offset")
    tasks: list[asyncio.Task[None]] = []

    def backends(cfg: Any) -> dict[str, Any]:
        sim = Sim(plan, clock)
        loop = asyncio.get_running_loop()  # run_gateway calls this on the daemon's loop
        tasks.extend(loop.create_task(c, name=f"sim:{i}") for i, c in enumerate(sim.coroutines()))
        return {"pin_factory": sim.pin_factory, "ble": sim.ble}

    runner.SystemClock = lambda: clock  # type: ignore[attr-defined,assignment,misc]
    runner.production_backends = backends
    if plan.power_cut_snapshots:
        install_power_cut_snapshots(Path(plan.power_cut_snapshots))
    if plan.housekeeping:
        install_housekeeping(plan.housekeeping)


def install_housekeeping(knobs: dict[str, float]) -> None:
    """Retention on the test's time scale (see the module docstring): the housekeeper's cadence, `retain_s` for
    `retain_days`, and with `any_use` a quiet moment that ignores uses in progress."""
    from gateway import daemon, housekeeping

    housekeeping.EVERY_S = float(knobs.get("every_s", housekeeping.EVERY_S))
    housekeeping.RETRY_S = float(knobs.get("retry_s", housekeeping.RETRY_S))

    def _housekeeper(self: Any) -> housekeeping.Housekeeper:
        retain = float(knobs["retain_s"]) / 86400 if "retain_s" in knobs else self.cfg.retain_days
        quiet = ((lambda: not self._pending) if knobs.get("any_use")
                 else (lambda: not self._pending and not any(m.cycle.running for m in self.meters.values())))
        return housekeeping.Housekeeper(self.ledger, self.clock, retain_days=retain,
                                        local_only=self.cfg.cloud is None, quiet=quiet)

    daemon.Gateway._housekeeper = _housekeeper  # type: ignore[method-assign]


def main() -> int:
    from gateway.entry import main as koto

    install(Plan.load(Path(os.environ[PLAN_ENV])))
    return koto(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
