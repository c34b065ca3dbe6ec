"""Koto beside what users would pick instead: ThingsBoard IoT Gateway 3.8.5, same meters, same broker, same machine.

    .venv/bin/python -m bench.thingsboard [--meters 8] [--seconds 120] [--outage 30] [--json]

ThingsBoard's gateway is installed from PyPI into its own venv, `bench/.tb-venv` (gitignored; made on the first run:
`thingsboard-gateway==3.8.5`, and the pymodbus 3.9.2 + pyserial-asyncio its Modbus connector would otherwise pip
install at start). It runs as a child process against:

- the same simulated meters Koto's benches use: `--meters` Eastron SDM120 on one RS-485 bus, a pymodbus RTU server
  on a pty pair in this process (drivers/modbus_sim.py), each polled every second for power (0x000C) and total
  energy (0x0156), float32 on input registers, as Koto's SDM120 map reads them (since 2026-12-07 Koto reads the
  energy register every 5th poll by default, `energy_every`, its power every poll: one request per poll four times
  in five where ThingsBoard, as configured here, makes two; rows measured before that day read it every poll);
- a real Mosquitto (tests/support/broker.py) standing in for the ThingsBoard server: the gateway publishes
  `v1/gateway/telemetry` with its access token as the MQTT username, and publishes nothing until its server has
  answered `getSessionLimits` on `v1/devices/me/rpc/request/N`, so this bench answers that (no limits), and counts
  every point at the broker by subscribing (QoS 1, a persistent session);
- storage `sqlite` (its SQLiteEventStorage, the durable choice), in a disk-backed folder.

Measured, for ThingsBoard and then for `koto run` (bench/daemon_cost.py's steady section, the same meters):
1. steady state over `--seconds` after a 15 s settle: RSS, CPU as a share of one core per meter (utime + stime
   from /proc/PID/stat), bytes written per meter-day (/proc/PID/io write_bytes); Koto's window starts 90 s after
   READY, lasts at least 300 s and runs with interim_s 120 s, so it holds its steady commits (KOTO_* below);
2. ThingsBoard only, a kill -9 while the broker is down: broker stopped for `--outage` s, the gateway killed with
   SIGKILL at the end of it, restarted, broker started: points lost (read by the gateway while the broker was down,
   by the simulator's count of requests answered, but never delivered) and duplicated (the same device, key and ts
   delivered twice), and the delay from broker return to the first point delivered and to the first backlog point
   (one read while the broker was down), counting only points read since the broker stopped: a QoS 1 message in
   flight to this bench's subscriber when the broker stopped comes again from the broker's own persistence as soon as
   the subscriber is back, which says nothing about the gateway (until 2026-12-07 such a point counted too; the runs
   gave 0.05-1.44 s, since then 1.3 s). The window's edges make "lost" uncertain by about one poll per meter and
   register (a read just before the broker stopped may be delivered later or not). Koto's counterparts come from its
   own benches in the same report: no record lost or duplicated across SIGKILLs and broker restarts (bench/chaos.py),
   broker return to first cloud ack (bench/sync.py --outage).
3. Writes per meter-day over a day of use. ThingsBoard stores every point it reads (its steady points/s is
   meters x registers x 1 Hz whatever the load does), so its bytes per meter-day do not depend on how the appliance
   is used and its window here is its day. Koto's follow billable events (records, checkpoints), so a few minutes of
   one constant load is not a day: the window above runs at interim_s 120 s (7.5x the default's commits) and is
   kept as the pessimistic row. The row that carries the target puts ThingsBoard's figure beside Koto's over a
   realistic day at 1 Hz on the same SDM120 map and default settings, bench/sd_writes.py's run kept in
   bench/results (`make bench` runs it just before this one; the row names when it ran). Without that run the row
   is left out and says so.
If ThingsBoard cannot be installed or started here, the command and its error are printed and nothing is made up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "bench" / ".tb-venv"
TB_VERSION = "3.8.5"
TB_PACKAGES = (f"thingsboard-gateway=={TB_VERSION}", "pymodbus==3.9.2", "pyserial", "pyserial-asyncio")
TOKEN = "koto-bench-token"
MB = 1e6
# Koto's side of the writes figure is its steady state, not its start: a gateway writes at start (the first
# baselines, the lifecycle record, the first use's records after `hold_s` 60 s) and then, with the meters' constant
# 1500 W, one interim record per meter every `interim_s` (900 s by default) and nothing in between. A 30 s window
# after a 15 s settle caught the start's writes and scaled them to a day (41 MB per meter-day); a short window after
# the start would catch no commit at all (0 bytes). So Koto settles KOTO_SETTLE_S after READY (past the first held
# batch) and runs with interim_s KOTO_INTERIM_S (7.5x the default's commits: pessimistic for Koto) over a window
# that holds at least two interims of every meter and their hold.
KOTO_SETTLE_S = 90.0
KOTO_INTERIM_S = 120.0
KOTO_MIN_WINDOW_S = 2 * KOTO_INTERIM_S + 60.0


def ensure_venv() -> Path:
    """The venv's python, with ThingsBoard installed; SystemExit naming the failing command otherwise."""
    py = VENV / "bin" / "python"
    probe = [str(py), "-c", f"import thingsboard_gateway.version as v; assert v.VERSION == '{TB_VERSION}', v.VERSION"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    cmds = [["python3", "-m", "venv", str(VENV)]] if not py.exists() else []
    cmds.append([str(py), "-m", "pip", "install", "-q", *TB_PACKAGES])
    for cmd in cmds:
        print(f"  installing: {' '.join(cmd)}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"thingsboard: `{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    check = subprocess.run(probe, capture_output=True, text=True)
    if check.returncode:
        raise SystemExit(f"thingsboard: installed, but `{' '.join(probe)}` failed:\n{check.stderr[-2000:]}")
    return py


def tb_config(folder: Path, port: int, meters: int, serial: str) -> Path:
    """tb_gateway.json, logs.json and the Modbus connector's file in `folder` (TB_GW_CONFIG_DIR)."""
    folder.mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "logs").mkdir()
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1", "port": port, "remoteShell": False, "remoteConfiguration": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 8196, "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60, "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": TOKEN}, "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "sqlite", "data_file_path": f"{folder}/data/", "messages_ttl_check_in_hours": 1,
                    "messages_ttl_in_days": 7, "max_read_records_count": 1000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    (folder / "tb_gateway.json").write_text(json.dumps(gateway, indent=2))
    points = [{"tag": tag, "type": "32float", "functionCode": 4, "objectsCount": 2, "address": addr}
              for tag, addr in (("power", 0x000C), ("energy", 0x0156))]
    slaves = [{"type": "serial", "method": "rtu", "port": serial, "baudrate": 9600, "timeout": 1, "stopbits": 1,
               "bytesize": 8, "parity": "N", "byteOrder": "BIG", "wordOrder": "BIG", "retries": True,
               "pollPeriod": 1000, "unitId": i, "deviceName": f"meter{i}", "deviceType": "sdm120",
               "sendDataOnlyOnChange": False, "connectAttemptTimeMs": 500, "connectAttemptCount": 5,
               "waitAfterFailedAttemptsMs": 1000, "attributes": [], "timeseries": points, "attributeUpdates": [],
               "rpc": []} for i in range(1, meters + 1)]
    (folder / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))
    logs = {"version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain", "level": "INFO",
                                  "filename": f"{folder}/logs/tb.log"}},
            "root": {"level": "INFO", "handlers": ["file"]}}
    (folder / "logs.json").write_text(json.dumps(logs, indent=2))
    return folder


class Server:
    """The stand-in for the ThingsBoard server on the broker: answers getSessionLimits, counts points."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.points: Counter[tuple[str, str, int]] = Counter()
        self.first_after: dict[str, float] = {}  # mark -> monotonic time of the first point received after it
        # mark -> the read times (ts, ms) a point must have to count for it: the broker redelivers a QoS 1 message
        # that was in flight to this subscriber when it stopped (its persistence keeps the session), and such a
        # point, read before the outage, says nothing about when the gateway itself delivered again.
        self.marks: dict[str, tuple[float, float]] = {}
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        import aiomqtt

        host, port = self.url.removeprefix("mqtt://").split(":")
        while True:
            try:
                async with aiomqtt.Client(host, int(port), identifier="tb-stand-in", clean_session=False) as c:
                    await c.subscribe("v1/devices/me/rpc/request/+", qos=1)
                    await c.subscribe("v1/gateway/telemetry", qos=1)
                    async for m in c.messages:
                        await self._on(c, str(m.topic), bytes(m.payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    async def _on(self, client: Any, topic: str, payload: bytes) -> None:
        if topic.startswith("v1/devices/me/rpc/request/"):
            body = json.loads(payload)
            if body.get("method") == "getSessionLimits":
                limits = {"rateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
                          "gatewayRateLimits": {"messages": "", "telemetryMessages": "",
                                                "telemetryDataPoints": ""},
                          "maxInflightMessages": 100, "maxPayloadSize": 65536}
                await client.publish(topic.replace("/request/", "/response/"), json.dumps(limits), qos=1)
            return
        now = time.monotonic()
        for device, entries in json.loads(payload).items():
            for entry in entries if isinstance(entries, list) else [entries]:
                ts = int(entry.get("ts", time.time() * 1000))
                for key in entry.get("values", entry):
                    if key != "ts":
                        self.points[(device, key, ts)] += 1
                for name, (lo, hi) in self.marks.items():
                    if name not in self.first_after and lo <= ts <= hi:
                        self.first_after[name] = now

    def received(self, lo_ms: float, hi_ms: float) -> tuple[int, int]:
        """(unique points, duplicate deliveries) with ts in lo..hi."""
        inside = [n for (_, _, ts), n in self.points.items() if lo_ms <= ts <= hi_ms]
        return len(inside), sum(n - 1 for n in inside)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc(pid: int, file: str, key: str) -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


async def _start_tb(py: Path, conf: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            str(py), "-c", "from thingsboard_gateway.tb_gateway import daemon; daemon()", cwd=conf,
            stdout=out, stderr=out, env={**os.environ, "TB_GW_CONFIG_DIR": str(conf), "PYTHONPATH": ""})


async def _first_point(server: Server, proc: asyncio.subprocess.Process, conf: Path, limit_s: float) -> None:
    t0 = time.monotonic()
    while not server.points:
        if proc.returncode is not None or time.monotonic() - t0 > limit_s:
            tail = (conf / "run.log").read_text()[-3000:] if (conf / "run.log").exists() else ""
            raise SystemExit(f"thingsboard: no telemetry at the broker within {limit_s:.0f} s "
                             f"(exit {proc.returncode}); its output ends:\n{tail}")
        await asyncio.sleep(0.2)


async def thingsboard(meters: int, seconds: float, outage: float) -> dict[str, float]:
    from drivers.modbus_sim import ModbusSimulator, SimMeter
    from tests.support.broker import Mosquitto

    py = ensure_venv()
    work = Path(tempfile.mkdtemp(prefix="koto-tb-", dir="/var/tmp"))
    fig: dict[str, float] = {}
    try:
        broker = Mosquitto(work / "broker")
        broker.start()
        server = Server(broker.url)
        server.task = asyncio.create_task(server.run())
        sims = [SimMeter("sdm120", i, base_power_w=1500.0) for i in range(1, meters + 1)]
        async with ModbusSimulator(sims, baud=9600) as bus:
            conf = tb_config(work / "tb", broker.port, meters, bus.port)
            proc = await _start_tb(py, conf, conf / "run.log")
            try:
                await _first_point(server, proc, conf, 120)
                await asyncio.sleep(15)
                pid = proc.pid
                cpu0, wb0, t0 = _cpu_s(pid), _proc(pid, "io", "write_bytes:"), time.monotonic()
                n0 = sum(server.points.values())
                rss = 0
                while time.monotonic() - t0 < seconds:
                    await asyncio.sleep(5)
                    rss = max(rss, _proc(pid, "status", "VmRSS:"))
                wall = time.monotonic() - t0
                fig["cpu_pct_per_meter"] = (_cpu_s(pid) - cpu0) / wall * 100 / meters
                fig["write_mb_per_meter_day"] = (_proc(pid, "io", "write_bytes:") - wb0) / wall * 86400 / meters / MB
                fig["rss_mib"] = rss / 1024
                fig["hwm_mib"] = _proc(pid, "status", "VmHWM:") / 1024
                fig["points_per_s"] = (sum(server.points.values()) - n0) / wall
                if outage > 0:
                    served0 = sum(m.served for m in sims)
                    lo = time.time() * 1000
                    broker.stop()
                    await asyncio.sleep(outage)
                    proc.kill()  # kill -9 while the broker is down
                    await proc.wait()
                    hi = time.time() * 1000
                    fig["read_during_outage"] = sum(m.served for m in sims) - served0
                    proc = await _start_tb(py, conf, conf / "run.log")
                    await asyncio.sleep(5)  # it is up (and reading) before the broker returns
                    broker.start()
                    back = time.monotonic()
                    server.marks["any"] = (lo, math.inf)  # a point read since the broker stopped
                    server.marks["backlog"] = (lo, hi)  # a point read while it was down, before the kill
                    deadline = back + 300
                    while "backlog" not in server.first_after and time.monotonic() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(0.2)  # the subscriber task notes it; a poll is plain enough here
                    await asyncio.sleep(20)  # let the backlog drain
                    unique, dups = server.received(lo, hi)
                    fig["outage_delivered"] = unique
                    fig["outage_duplicates"] = dups
                    fig["outage_lost"] = max(0, fig["read_during_outage"] - unique)
                    fig["return_to_first_point_s"] = server.first_after.get("any", float("nan")) - back
                    fig["return_to_first_backlog_s"] = server.first_after.get("backlog", float("nan")) - back
            finally:
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 20)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        server.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server.task
        broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return fig


def realistic_day(path: Path) -> tuple[float, str] | None:
    """Koto's SD bytes per appliance-day (MB) over bench/sd_writes.py's day, and when it ran; None without a run."""
    try:
        run = json.loads(path.read_text())
        fig = next(f for f in run["figures"] if f["name"] == "SD bytes per appliance-day")
        return float(fig["value"]), f"{run.get('when', '?')}, load {' / '.join(run.get('loads', []))}"
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120.0, help="steady-state window")
    ap.add_argument("--outage", type=float, default=30.0, help="broker down (s) before the kill -9; 0 skips it")
    ap.add_argument("--day-from", type=Path, default=REPO / "bench" / "results" / "sd_writes.json",
                    help="bench/sd_writes.py's kept run: Koto's writes over a realistic day (bench/report.py)")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/report.py)")
    a = ap.parse_args(argv)
    print(f"ThingsBoard IoT Gateway {TB_VERSION} vs koto run: {a.meters} SDM120 at 1 Hz on one simulated bus, "
          f"Mosquitto, SQLite storage; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    tb = asyncio.run(thingsboard(a.meters, a.seconds, a.outage))
    from bench.daemon_cost import steady

    koto_s = max(a.seconds, KOTO_MIN_WINDOW_S)
    print(f"Koto's window: {koto_s:.0f} s from {KOTO_SETTLE_S:.0f} s after READY, interim_s {KOTO_INTERIM_S:.0f}")
    koto = asyncio.run(steady(a.meters, koto_s, settle_s=KOTO_SETTLE_S, interim_s=KOTO_INTERIM_S))
    rows = (("RSS (peak)", "hwm_mib", "MiB"), ("CPU per meter", "cpu_pct_per_meter", "% of a core"),
            ("written per meter-day", "write_mb_per_meter_day", "MB"))
    print(f"{'':24}{'ThingsBoard':>14}{'Koto':>14}{'TB / Koto':>12}")
    for label, key, unit in rows:
        ratio = tb[key] / koto[key] if koto[key] else float("inf")
        print(f"{label + ' (' + unit + ')':24}{tb[key]:>14.3f}{koto[key]:>14.3f}{ratio:>11.1f}x")
    print(f"ThingsBoard delivered {tb['points_per_s']:.1f} points/s in steady state (every register read: its "
          "writes follow its points, not the appliance's use)")
    day = realistic_day(a.day_from)
    if day is None:
        print(f"written per meter-day over a realistic day: no bench/sd_writes.py run at {a.day_from}; "
              "run `python -m bench.report --only sd_writes,thingsboard`")
    else:
        ratio = tb["write_mb_per_meter_day"] / day[0] if day[0] else float("inf")
        print(f"{'written per meter-day, a day of use (MB)':42}{tb['write_mb_per_meter_day']:>10.3f}{day[0]:>10.3f}"
              f"{ratio:>11.1f}x  (Koto: bench/sd_writes.py, {day[1]})")
    if "read_during_outage" in tb:
        print(f"kill -9 with the broker down {a.outage:.0f} s: ThingsBoard read {tb['read_during_outage']:.0f} "
              f"registers, delivered {tb['outage_delivered']:.0f} points of that time, lost "
              f"{tb['outage_lost']:.0f}, duplicated {tb['outage_duplicates']:.0f}; broker return to first point "
              f"{tb['return_to_first_point_s']:.1f} s, to first backlog point {tb['return_to_first_backlog_s']:.1f} s"
              " (Koto: bench/chaos.py and bench/sync.py --outage)")
    if a.json:
        from bench.figures import Figure, emit

        figs = [Figure(f"Koto {label}", koto[key], unit, baseline=tb[key], baseline_name="ThingsBoard, same run",
                       target={"cpu_pct_per_meter": ">= 5x below TB"}.get(key, ""),
                       note={"write_mb_per_meter_day": f"one constant load, interim_s {KOTO_INTERIM_S:.0f} s: "
                             "7.5x the default's commits"}.get(key, ""))
                for label, key, unit in rows]
        if day is not None:
            figs.append(Figure("Koto written per meter-day over a day of use", day[0], "MB",
                               baseline=tb["write_mb_per_meter_day"], baseline_name="ThingsBoard, same meters",
                               target=">= 100x below TB", note=f"Koto: bench/sd_writes.py, {day[1]}"))
        if "read_during_outage" in tb:
            figs += [Figure("ThingsBoard points lost across kill -9, broker down", tb["outage_lost"], "points"),
                     Figure("ThingsBoard points duplicated across kill -9", tb["outage_duplicates"], "points"),
                     Figure("ThingsBoard broker return to first backlog point", tb["return_to_first_backlog_s"],
                            "s")]
        emit("thingsboard", figs, argv=["--json"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
