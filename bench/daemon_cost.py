"""What the running daemon costs: CPU per appliance at 1 Hz, peak RSS with all three driver kinds, and the
cold start to READY with a 1,000,000-record ledger; each beside a baseline from the same run.

    .venv/bin/python -m bench.daemon_cost [--meters 8] [--seconds 120] [--demo-minutes 3] [--ledger STATE] [--json]
                                          [--python /opt/koto/.venv/bin/python]   # the installed layout's interpreter

1. **steady load**: `koto run` (a child process, the production daemon started as the unit starts it: the console
   script's module, gateway.entry) with `--meters` Eastron SDM120 meters on
   one simulated RS-485 bus (a pymodbus RTU server on a pty pair in *this* process, so its cost is not counted),
   each polled at 1 Hz, every meter an appliance. After READY and a 15 s settle, for `--seconds`: the daemon's CPU
   (utime + stime from /proc/PID/stat) as a share of one core per meter, its RSS (VmRSS, and VmHWM at the end)
   and what it wrote (/proc/PID/io write_bytes) scaled to a meter-day, printed but not a figure of the report: the
   window holds a commit or none, so it reads 0 or about 0.7 MB; bench/sd_writes measures a whole day. The child
   gets the environment the systemd unit sets that bears on memory (UNIT_ENV: MALLOC_ARENA_MAX=1); PSS is printed
   beside RSS (shared pages split).
   No [cloud]: sync is measured by bench/sync.
   Baseline: a bare Python interpreter that polls the same meters with pymodbus (one request per meter per second,
   nothing decoded or stored), the least any Python poller does.
2. **three driver kinds** (the issue's RSS target): `koto run` in a child with an SDM120 on a pty (its server in
   *this* process), a kettle on an S0 pulse meter and an air conditioner on a BTHome plug with its reversing-valve
   contact on a GPIO, real time, the household page on as in production, no [cloud] (as in section 1). The child
   is tests/support/sim_gateway.py: the console script's `koto run` with gpiozero's MockFactory and the BLE replay
   backend in place of lgpio and BlueZ; the pulse trains and adverts come from a few small tasks on the daemon's
   loop (a MockFactory pin lives in its process), the Modbus server does not. Peak RSS (VmHWM), RSS and PSS after
   a settle, and its CPU. On a Pi, bleak's BlueZ backend is imported too, but what it brings (dbus-fast) bthome-ble
   already imports here through habluetooth: BlueZ scanner then bthome-ble cost +2.6 and +5.4 MiB, the 8 MiB that
   bthome-ble alone costs here (docs/performance.md), so the figure stands for a Pi's daemon.
3. **koto demo** (`--speed 1`, the same three kinds with their simulators and the washer's pymodbus server in one
   process): peak RSS, an upper bound for section 2. Baseline: the interpreter with nothing imported.
4. **cold start**: `koto run` on a copy of the 1,000,000-record ledger made by bench/ledger_scale.py (`--ledger`,
   default /tmp/koto-ledger-1000000, generated there when missing), from exec to the READY=1 it sends to
   $NOTIFY_SOCKET (a real AF_UNIX datagram socket here), beside the same with an empty ledger. `[home_assistant]`
   is on (its broker absent: its energy totals are read from the ledger all the same), and the copy's pages are
   dropped from the page cache before each start (posix_fadvise DONTNEED), as after a reboot: what the start reads
   from the ledger is read from the disk. The big copy starts twice, each a figure against the target: the first
   start (no Home Assistant totals file yet: the daemon is READY first and sums the whole ledger's energy once in a
   worker thread; the bench waits for that count's log line, reports when it was done and only then stops the
   daemon) and a restart (what every later start costs).

Targets (issue 15): CPU <= 0.1 % of a core per appliance; RSS <= 45 MB with all three driver kinds; cold start with
a 1,000,000-record ledger <= 2 s, the first start and a restart. The machine's load is printed: a busy machine
inflates every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
MB = 1e6
MIB = 1024 * 1024


def _toml(state: Path, port: str, meters: int, gateway_id: str, interim_s: float | None = None) -> str:
    out = [f'[gateway]\nid = "{gateway_id}"\nstate_dir = "{state}"\n']
    interim = f"interim_s = {interim_s}\n" if interim_s is not None else ""
    for i in range(1, meters + 1):
        out.append(f'[[appliance]]\nid = "kettle{i}"\nprofile = "kettle"\n{interim}[appliance.sources.m{i}]\n'
                   f'driver = "modbus"\nmodel = "sdm120"\nport = "{port}"\naddress = {i}\nbaud = 9600\npoll_s = 1.0\n')
    return "\n".join(out)


# What systemd/koto.service sets that changes the footprint: the daemon is measured as it runs on the Pi.
UNIT_ENV = {"MALLOC_ARENA_MAX": "1"}
# The interpreter `koto run` runs on (--python): this one, or e.g. the installed layout's /opt/koto/.venv/bin/python
# (the distribution's Python, a venv that sees its packages); Koto itself always comes from this checkout.
DAEMON_PYTHON = sys.executable


def runtime_env() -> dict[str, str]:
    """$RUNTIME_DIRECTORY on a tmpfs, as systemd's `RuntimeDirectory=koto` gives the daemon on a Pi (/run is a
    tmpfs there): the status file it rewrites every few seconds and the power traces live there and never reach the
    SD card. Without it the daemon falls back to /run/koto, which on a build machine or a container may be on disk,
    and /proc/PID/io would count those rewrites as card writes. The folder is removed when the bench exits."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    folder = Path(tempfile.mkdtemp(prefix="koto-run-", dir=base))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return {"RUNTIME_DIRECTORY": str(folder)}


def _pss_kib(pid: int) -> int:
    """Proportional set size: RSS with each shared page (libpython, libcrypto...) divided among its users."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


class Notify:
    """A $NOTIFY_SOCKET to receive the daemon's READY=1 on, and then to go on reading it as systemd does: a listener
    that stops after READY fills its queue with STATUS lines (net.unix.max_dgram_qlen is often 10), and a daemon
    that sent blocking would hang there (gateway/sdnotify.py sends non-blocking since a run measured 0 bytes and
    0 % CPU that way)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="koto-n"))  # short: an AF_UNIX path has at most 107 bytes
        self.path = str(self.dir / "n.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self._drain: asyncio.Future[None] | None = None
        self.statuses = 0  # STATUS lines read after READY

    async def ready(self, proc: asyncio.subprocess.Process, limit_s: float) -> float:
        """Monotonic time READY=1 arrived; raises when the process ends or `limit_s` passes first."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(limit_s):
            while True:
                recv = asyncio.ensure_future(loop.sock_recv(self.sock, 4096))
                ended = asyncio.ensure_future(proc.wait())
                done, _ = await asyncio.wait({recv, ended}, return_when=asyncio.FIRST_COMPLETED)
                if recv in done:
                    ended.cancel()
                    if b"READY=1" in recv.result():
                        at = time.monotonic()
                        if self._drain is None:
                            self._drain = asyncio.ensure_future(self._read_on())
                        return at
                    continue
                recv.cancel()
                raise RuntimeError(f"koto run exited {proc.returncode} before READY")

    async def _read_on(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.statuses += 1 if b"STATUS=" in await loop.sock_recv(self.sock, 4096) else 0

    def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _start_koto(cfg: Path, notify: Notify, log: Path, *, module: str = "gateway.entry",
                      env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """`koto run` as the unit starts it: the console script's module (gateway.entry), the unit's environment."""
    with log.open("wb") as err:
        return await asyncio.create_subprocess_exec(
            DAEMON_PYTHON, "-m", module, "run", "--config", str(cfg), cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=err, env={**os.environ, **UNIT_ENV, **runtime_env(), "PYTHONPATH": str(REPO),
                             "NOTIFY_SOCKET": notify.path, **(env or {})})


def _alive(proc: asyncio.subprocess.Process, log: Path) -> None:
    """Raise unless the daemon ran through the window: a process that ended (a zombie keeps its last CPU and I/O
    counters) would pass for one that cost nothing."""
    state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    if proc.returncode is not None or state in ("Z", "X"):
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"koto run ended during the measurement (state {state}); its log ends: {tail}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def steady(meters: int, seconds: float, *, settle_s: float = 15.0,
                 interim_s: float | None = None) -> dict[str, float]:
    """Section 1: `koto run` polling `meters` SDM120s at 1 Hz (module docstring), measured for `seconds` from
    `settle_s` after READY; `interim_s` overrides each appliance's (bench/thingsboard.py: see its KOTO_* notes)."""
    from drivers.modbus_sim import ModbusSimulator, SimMeter
    from gateway.state import StateDir

    work = Path(tempfile.mkdtemp(prefix="koto-cost-", dir="/var/tmp"))
    notify = Notify()
    try:
        state = work / "state"
        StateDir(state).provision()
        sims = [SimMeter("sdm120", i, base_power_w=1500.0) for i in range(1, meters + 1)]
        async with ModbusSimulator(sims, baud=9600) as bus:
            cfg = work / "koto.toml"
            cfg.write_text(_toml(state, bus.port, meters, "gw-cost", interim_s))
            proc = await _start_koto(cfg, notify, work / "koto.log")
            try:
                await notify.ready(proc, 60)
                await asyncio.sleep(settle_s)
                cpu0, wb0, t0 = _cpu_s(proc.pid), _write_bytes(proc.pid), time.monotonic()
                statuses0 = notify.statuses
                rss_samples = []
                while time.monotonic() - t0 < seconds:
                    await asyncio.sleep(5)
                    rss_samples.append(_status_kib(proc.pid, "VmRSS"))
                cpu1, wb1, t1 = _cpu_s(proc.pid), _write_bytes(proc.pid), time.monotonic()
                _alive(proc, work / "koto.log")
                if t1 - t0 > 15 and notify.statuses == statuses0:  # STATUS= comes every 5 s from a live loop
                    raise RuntimeError("koto run sent no STATUS during the measurement: its event loop is stuck")
                hwm = _status_kib(proc.pid, "VmHWM")
                pss = _pss_kib(proc.pid)
            finally:
                await _stop(proc)
            base = await _bare_poller(bus.port, meters, seconds)
    finally:
        notify.close()
        shutil.rmtree(work, ignore_errors=True)
    wall = t1 - t0
    return {"cpu_pct_per_meter": (cpu1 - cpu0) / wall * 100 / meters, "rss_mib": max(rss_samples) / 1024,
            "hwm_mib": hwm / 1024, "pss_mib": pss / 1024,
            "write_mb_per_meter_day": (wb1 - wb0) / wall * 86400 / meters / MB,
            "base_cpu_pct_per_meter": base["cpu_pct"] / meters, "base_rss_mib": base["rss_mib"], "wall_s": wall}


KINDS_TOML = """
[[appliance]]
id = "kettle"
profile = "kettle"
energy = "kettle-s0"
[appliance.sources.kettle-s0]
driver = "s0"
pin = 17
imp_per_kwh = 1000

[[appliance]]
id = "aircon"
profile = "air_conditioner"
energy = "aircon-plug"
[appliance.sources.aircon-plug]
driver = "bthome"
address = "A4:C1:38:00:00:AC"
[appliance.sources.aircon-valve]
driver = "gpio_signal"
pin = 27
signal = "mode"
active = "high"
pull = "down"
active_value = "heat"
inactive_value = "cool"
bounce_ms = 5
"""


async def three_kinds(seconds: float, *, settle_s: float = 15.0, ready_s: float = 60.0,
                      rss_kib: Callable[[int], int] | None = None) -> dict[str, float]:
    """Section 2 (module docstring): `koto run` with all three driver kinds, measured for `seconds` after a settle.
    `rss_kib(pid)` reads the RSS samples (default VmRSS; bench/foreign_rss.py reads an emulated guest's own pages)."""
    from drivers.modbus_sim import ModbusSimulator, SimMeter
    from gateway.state import StateDir
    from tests.support.sim_gateway import PLAN_ENV, Plan

    work = Path(tempfile.mkdtemp(prefix="koto-kinds-", dir="/var/tmp"))
    notify = Notify()
    try:
        state = work / "state"
        StateDir(state).provision()
        (work / "control").mkdir()
        plan = Plan(speed=1.0, real0_ns=time.monotonic_ns(), wall0=time.time(), control=work / "control",
                    s0=[{"pin": 17, "script": "kettle", "imp_per_kwh": 1000}],
                    signals=[{"pin": 27, "script": "air_conditioner", "signal": "mode", "value": "heat"}],
                    ble=[{"address": "A4:C1:38:00:00:AC", "script": "air_conditioner", "start_mwh": 800_000_000,
                          "every_s": 10.0}])
        plan.dump(work / "plan.json")
        async with ModbusSimulator([SimMeter("sdm120", 1, base_power_w=1500.0)], baud=9600) as bus:
            cfg = work / "koto.toml"
            cfg.write_text(_toml(state, bus.port, 1, "gw-kinds") + KINDS_TOML)
            proc = await _start_koto(cfg, notify, work / "koto.log", module="tests.support.sim_gateway",
                                     env={PLAN_ENV: str(work / "plan.json"), "RUNTIME_DIRECTORY": str(work / "run")})
            try:
                await notify.ready(proc, ready_s)
                await asyncio.sleep(settle_s)
                cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
                rss_samples = []
                while time.monotonic() - t0 < seconds:
                    await asyncio.sleep(5)
                    _alive(proc, work / "koto.log")
                    rss_samples.append(rss_kib(proc.pid) if rss_kib else _status_kib(proc.pid, "VmRSS"))
                cpu1, t1 = _cpu_s(proc.pid), time.monotonic()
                hwm, pss = _status_kib(proc.pid, "VmHWM"), _pss_kib(proc.pid)
            finally:
                await _stop(proc)
    finally:
        notify.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"rss_mib": max(rss_samples) / 1024, "hwm_mib": hwm / 1024, "pss_mib": pss / 1024,
            "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100}


BARE_POLLER = """
import asyncio, sys, time
from pymodbus.client import AsyncModbusSerialClient
async def main(port, meters, seconds):
    client = AsyncModbusSerialClient(port, baudrate=9600, timeout=0.5)
    await client.connect()
    t0 = time.monotonic(); c0 = time.process_time(); n = 0
    while time.monotonic() - t0 < seconds:
        start = time.monotonic()
        for i in range(1, meters + 1):
            try:
                await client.read_input_registers(0x000C, count=2, device_id=i)
                n += 1
            except Exception:
                pass
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - start)))
    cpu = time.process_time() - c0
    hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(cpu / (time.monotonic() - t0) * 100, int(hwm) / 1024, n)
asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""


async def _bare_poller(port: str, meters: int, seconds: float) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", BARE_POLLER, port, str(meters),
                                                str(min(seconds, 60.0)), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    cpu, rss, _n = out.decode().split()
    return {"cpu_pct": float(cpu), "rss_mib": float(rss)}


def demo_rss(minutes: float) -> tuple[float, float]:
    """Section 3: peak RSS (MiB) of `koto demo --speed 1`, and of a bare interpreter: VmHWM read from /proc while
    each runs (wait4's ru_maxrss would count the forked copy of this process before exec)."""
    with tempfile.TemporaryDirectory(prefix="koto-demo-") as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--state-dir", f"{tmp}/s", "--speed",
                                 "1", "--minutes", str(minutes)], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, **UNIT_ENV, **runtime_env()})
        peak = 0
        while proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                peak = max(peak, _status_kib(proc.pid, "VmHWM"))
            time.sleep(0.5)
    bare = subprocess.run([sys.executable, "-c", "print(next(line.split()[1] for line in open('/proc/self/status') "
                           "if line.startswith('VmHWM')))"], capture_output=True, text=True, check=True)
    return peak / 1024, int(bare.stdout) / 1024


def _drop_cache(state: Path) -> None:
    """Evict `state`'s files from the page cache (a reboot, for them only: other processes keep theirs)."""
    os.sync()
    for f in state.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


async def _counted_s(log: Path, proc: asyncio.subprocess.Process, t0: float, limit_s: float) -> float:
    """Seconds from `t0` until the daemon says Home Assistant's totals are counted (its log line), the daemon
    running meanwhile; a start that has no count to make says nothing, and -1.0 comes back at `limit_s`."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and proc.returncode is None:
        if COUNTED in await asyncio.to_thread(log.read_text, errors="replace"):
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return -1.0


COUNTED = "records counted in"  # gateway/ha_totals.py's line when the first count is done


async def cold_start(ledger_state: Path) -> tuple[float, float, float, int, float]:
    """Section 4: seconds from exec to READY with a copy of the big ledger (first start, restart), and with an empty
    one; its records; and seconds from exec until the first start's background count of Home Assistant's totals was
    done (the first start waits for it before its stop, so the restart has the totals file as every later start)."""
    from drivers.modbus_sim import ModbusSimulator, SimMeter
    from gateway.state import StateDir
    from metering.ledger import Ledger, read_gateway_id

    gid = read_gateway_id(ledger_state / "ledger.db")
    with Ledger.open(ledger_state / "ledger.db", gateway_id=gid, key=None) as ledger:
        records = ledger.head()[0]
    work = Path(tempfile.mkdtemp(prefix="koto-cold-", dir="/var/tmp"))
    notify = Notify()
    times: list[float] = []
    counted = -1.0
    try:
        big = work / "big"
        shutil.copytree(ledger_state, big, ignore=shutil.ignore_patterns("*.lock"))
        empty = work / "empty"
        shutil.copytree(ledger_state / "keys", empty / "keys")
        StateDir(empty)
        os.sync()
        async with ModbusSimulator([SimMeter("sdm120", 1)], baud=9600) as bus:
            for i, (name, state) in enumerate((("big", big), ("big", big), ("empty", empty))):
                cfg = work / f"{name}.toml"
                cfg.write_text(_toml(state, bus.port, 1, gid) + '\n[home_assistant]\nhost = "127.0.0.1"\nport = 9\n')
                _drop_cache(state)
                log = work / f"{name}{i}.log"
                t0 = time.monotonic()
                proc = await _start_koto(cfg, notify, log)
                try:
                    times.append(await notify.ready(proc, 120) - t0)
                    if i == 0:
                        counted = await _counted_s(log, proc, t0, 300)
                finally:
                    await _stop(proc)
    finally:
        notify.close()
        shutil.rmtree(work, ignore_errors=True)
    return times[0], times[1], times[2], records, counted


def _crypto(python: str) -> str:
    """Which cryptography that interpreter loads, and with which OpenSSL: the PyPI wheel carries its own, a
    distribution's package (Debian's python3-cryptography) shares the system's with `ssl`."""
    code = ("import cryptography; from cryptography.hazmat.backends.openssl.backend import backend as b; "
            "print(cryptography.__version__, b.openssl_version_text())")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/")
    return f"cryptography {out.stdout.strip()}" if out.returncode == 0 else "cryptography: not importable"


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120.0, help="steady-state window for CPU and writes")
    ap.add_argument("--demo-minutes", type=float, default=3.0)
    ap.add_argument("--ledger", type=Path, default=Path("/tmp/koto-ledger-1000000"),
                    help="state folder of bench/ledger_scale.py's 1M-record ledger (made there when missing)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: steady,kinds,demo,cold")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/report.py)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for `koto run` (sections steady, kinds, cold), e.g. /opt/koto/.venv/bin/python "
                         "for the installed layout; it needs Koto's dependencies, Koto comes from this checkout")
    a = ap.parse_args(argv)
    skip = set(a.skip.split(","))
    global DAEMON_PYTHON
    DAEMON_PYTHON = a.python
    figs: list[tuple[str, float, str, float | None, str, str, str]] = []
    print(f"daemon cost ({os.cpu_count()} cores, load average {_load()} at the start; koto run on {DAEMON_PYTHON}, "
          f"{_crypto(DAEMON_PYTHON)})")
    if "steady" not in skip:
        s = asyncio.run(steady(a.meters, a.seconds))
        print(f"koto run, {a.meters} SDM120 at 1 Hz, {s['wall_s']:.0f} s steady: CPU {s['cpu_pct_per_meter']:.3f} % "
              f"of a core per meter (target <= 0.1 %); bare pymodbus poller {s['base_cpu_pct_per_meter']:.3f} %; "
              f"RSS {s['rss_mib']:.1f} MiB (peak {s['hwm_mib']:.1f}, PSS {s['pss_mib']:.1f}); "
              f"bare poller {s['base_rss_mib']:.1f} MiB; "
              f"writes {s['write_mb_per_meter_day']:.3f} MB per meter-day (this window only; a day: bench/sd_writes)")
        # No SD-writes row: the window holds a commit (a use ending, the meters' checkpoint every 300 s) or none,
        # about 0.7 MB or 0 scaled to a day; bench/sd_writes measures a whole day.
        figs += [("daemon CPU per appliance at 1 Hz", s["cpu_pct_per_meter"], "% of a core",
                  s["base_cpu_pct_per_meter"], "bare pymodbus poller, same meters", "<= 0.1 %", ""),
                 (f"daemon RSS, {a.meters} Modbus meters", s["hwm_mib"], "MiB", s["base_rss_mib"],
                  "bare pymodbus poller", "", "")]
    if "kinds" not in skip:
        k = asyncio.run(three_kinds(a.seconds))
        print(f"koto run, all three driver kinds (SDM120 on a pty, S0 kettle on GPIO, BTHome plug + GPIO contact): "
              f"peak RSS {k['hwm_mib']:.1f} MiB (target <= 45 MB = {45e6 / MIB:.1f} MiB; RSS {k['rss_mib']:.1f}, "
              f"PSS {k['pss_mib']:.1f}); CPU {k['cpu_pct']:.3f} % of a core")
        figs.append(("peak RSS, koto run with all three driver kinds", k["hwm_mib"], "MiB", None, "", "<= 45 MB",
                     f"PSS {k['pss_mib']:.1f} MiB; GPIO and BLE simulators on the daemon's loop, Modbus outside"))
    if "demo" not in skip:
        peak, bare = demo_rss(a.demo_minutes)
        print(f"koto demo --speed 1 (Modbus + S0 + BTHome, simulators in-process): peak RSS {peak:.1f} MiB "
              f"(an upper bound for the line above); bare interpreter {bare:.1f} MiB")
        figs.append(("peak RSS, koto demo (three driver kinds and their simulators)", peak, "MiB", bare,
                     "bare Python interpreter", "", "koto demo: the simulators run in the same process"))
    if "cold" not in skip:
        if not (a.ledger / "ledger.db").exists():
            subprocess.run([sys.executable, "-m", "bench.ledger_scale", "--state", str(a.ledger)], cwd=REPO,
                           check=True, stdout=subprocess.DEVNULL)
        first, big, empty, n, counted = asyncio.run(cold_start(a.ledger))
        count = f"{counted:.2f} s after exec" if counted >= 0 else "not seen"
        print(f"cold start to READY (page cache dropped, [home_assistant] on), {n:,}-record ledger (target <= 2 s): "
              f"first start {first:.2f} s (Home Assistant's totals counted in the background, done {count}); "
              f"restart {big:.2f} s; {empty:.2f} s with an empty ledger")
        figs += [(f"cold start to READY, {n:,}-record ledger", big, "s", empty, "the same with an empty ledger",
                  "<= 2 s", "a restart (Home Assistant's totals file exists)"),
                 (f"first start to READY, {n:,}-record ledger", first, "s", empty, "the same with an empty ledger",
                  "<= 2 s", f"no Home Assistant totals file yet: counted after READY, done {count}")]
    print(f"load average {_load()} at the end")
    if a.json:
        from bench.figures import Figure, emit

        emit("daemon_cost", [Figure(n, v, u, baseline=b, baseline_name=bn, target=t, note=note)
                             for n, v, u, b, bn, t, note in figs], argv=["--json"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
