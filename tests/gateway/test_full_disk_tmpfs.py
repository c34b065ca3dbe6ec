"""A real full disk: `koto run` with its state folder on a 512 KiB tmpfs, mounted in a mount namespace of its own
(`unshare -rm`, no root needed where user namespaces are allowed). The test fills that file system while the daemon
meters a Modbus meter. Meanwhile the STATUS line sent to systemd says the ledger is not writable; the stop names the
records and energy it could not store; the next start, with space again, takes the register up where the last
stored record ended (issue 10, item 5). The SQLITE_FULL variant that runs everywhere is test_full_disk_stop.py."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from drivers.modbus_sim import ModbusSimulator, SimMeter
from gateway.cli import main as koto
from tests.support.ledger_checks import assert_contiguous, conservation, ledger_events
from tests.support.paths import REPO
from tests.support.slow import scaled

FIRST_MWH = 1_234_500_000  # SimMeter's first register value, 1234.5 kWh (exact in float32)
WRAPPER = """
mount -t tmpfs -o size=512k tmpfs "$1" || exit 97
cp -a "$2"/. "$1"/
"$3" -m gateway.cli -v run --config "$4" &
echo $! > "$5"
wait $!
rc=$?
cp -a "$1"/. "$6"/
exit $rc
"""


def can_mount_tmpfs(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp / "probe"
    probe.mkdir()
    out = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                         capture_output=True)
    return out.returncode == 0


def config(path: Path, state: Path, port: str) -> Path:
    path.write_text(f"""
[gateway]
id = "gw-tmpfs"
state_dir = "{state}"
batch_ms = 50
hold_s = 0  # commit every batch, so the disk fills while the test watches

[[appliance]]
id = "kettle"
profile = "kettle"
interim_s = 1
max_gap_s = 2
[appliance.sources.m]
driver = "modbus"
model = "sdm120"
port = "{port}"
address = 1
baud = 9600
poll_s = 0.05
timeout_s = 0.3
""")
    return path


def read(log: Path) -> str:
    return log.read_text() if log.exists() else ""


async def wait_for(log: Path, needle: str, limit_s: float = 30.0) -> str:
    for _ in range(int(scaled(limit_s) / 0.05)):
        if needle in (text := read(log)):
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} never came:\n{read(log)[-3000:]}")


async def next_status(sock: socket.socket, needle: str, limit_s: float = 20.0) -> str:
    """The first STATUS= sent to `sock` that contains `needle`."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(scaled(limit_s)):
        while True:
            data = (await loop.sock_recv(sock, 4096)).decode()
            for line in data.split("\n"):
                if line.startswith("STATUS=") and needle in line:
                    return line.removeprefix("STATUS=")


def fill(root: Path) -> None:
    """Write a file until the file system is full (unbuffered: nothing left to fail at close)."""
    fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


@pytest.mark.slow
async def test_a_stop_on_a_really_full_disk_names_what_it_could_not_store_and_the_register_reconciles_it(
        tmp_path: Path) -> None:
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs in a user and mount namespace here (unshare -rm)")
    seed, state, out = tmp_path / "seed", tmp_path / "state", tmp_path / "out"
    out.mkdir()
    state.mkdir()
    assert koto(["provision", "--state-dir", str(seed)]) == 0
    log, pidfile = tmp_path / "koto.log", tmp_path / "koto.pid"
    notify_dir = Path(tempfile.mkdtemp(prefix="koto-n"))  # short: an AF_UNIX path has at most 107 bytes
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_dir / "notify.sock"))
    notify.setblocking(False)
    meter = SimMeter("sdm120", 1, power_fn=lambda t: 2000.0)  # a kettle boiling at 2 kW
    async with ModbusSimulator([meter], baud=9600) as bus:
        cfg = config(tmp_path / "koto.toml", state, bus.port)
        with log.open("wb") as err:
            wrapper = await asyncio.create_subprocess_exec(
                "unshare", "-rm", "sh", "-c", WRAPPER, "sh", str(state), str(seed), sys.executable, str(cfg),
                str(pidfile), str(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(notify_dir / "notify.sock")})
        try:
            await wait_for(log, "kettle: use started")
            await asyncio.sleep(2.5)  # a few interim records stored
            pid = int(read(pidfile))
            fill(Path(f"/proc/{pid}/root{state}"))  # the daemon's own view of its state folder: the tmpfs
            await wait_for(log, "could not store")
            # `systemctl status koto` would say so: the STATUS line, over the real notify socket.
            status = await next_status(notify, "ledger not writable")
            assert re.fullmatch(r"1 appliance metering, ledger not writable: \d+ records held in memory", status)
            os.kill(pid, signal.SIGTERM)
            assert await asyncio.wait_for(wrapper.wait(), scaled(30)) == 0
        finally:
            notify.close()
            shutil.rmtree(notify_dir)
            if wrapper.returncode is None:
                if pidfile.exists():
                    os.kill(int(read(pidfile)), signal.SIGKILL)
                wrapper.kill()
                await wrapper.wait()
        text = read(log)
        m = re.search(r"ledger: stopping with (\d+) records .*: kettle (\d+) mWh \(reconciled from its register at "
                      r"the next start\)", text)
        assert m is not None, text[-3000:]
        held_mwh = int(m[2])
        assert int(m[1]) >= 2 and held_mwh > 0
        assert "Traceback" not in text

        (out / "filler").unlink()
        head_before = ledger_events(out / "ledger.db", "gw-tmpfs")[-1]["data"]["seq"]
        cfg2 = config(tmp_path / "koto2.toml", out, bus.port)  # the next start, with space again
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg2), cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
        await asyncio.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(30)) == 0

    events = ledger_events(out / "ledger.db", "gw-tmpfs")
    assert_contiguous(events)
    total, first_reg, last_reg = conservation(events)["m"]
    # From the first register value the meter served to the last one read, every mWh is in the ledger, in records
    # that chain (conservation checks that), the held ones included: the next start took the register up where the
    # last stored record (or the baseline checkpoint) left it.
    assert first_reg == FIRST_MWH
    assert total == last_reg - first_reg
    after = [e["data"] for e in events if e["type"] == "io.koto.usage.v1" and e["data"]["kind"] != "cycle"
             and e["data"]["seq"] > head_before]
    assert sum(u["energy_mwh"] for u in after) >= held_mwh
    assert koto(["verify", "--state-dir", str(out)]) == 0
