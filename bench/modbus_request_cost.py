"""CPU per Modbus request on the daemon's side of the bus: `ModbusBus.read_registers` (drivers/serialbus.py, with
pymodbus' RTU client under it) against 8 simulated SDM120s served by a child process on a pty pair, so that only
the client's CPU is counted (time.process_time of this process).

    .venv/bin/python -m bench.modbus_request_cost [--requests 4000] [--rounds 3]

The requests alternate between the two an SDM120 poll makes (power at 0x000C, total energy at 0x0156, 2
registers each), across the 8 addresses, back to back. Prints microseconds of CPU per request for each round and
the best: the requests are most of `koto run`'s CPU per meter (docs/performance.md, "CPU"), and this isolates them
from the rest of the daemon and from the machine's noise better than bench/daemon_cost.py's one-minute window.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIM = """
import asyncio
from drivers.modbus_sim import ModbusSimulator, SimMeter
async def main():
    async with ModbusSimulator([SimMeter("sdm120", i, base_power_w=1500.0) for i in range(1, 9)], baud=9600) as s:
        print(s.port, flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


async def measure(port: str, requests: int, rounds: int) -> list[float]:
    from drivers.serialbus import FC_READ_INPUT, ModbusBus, SerialSettings

    bus = ModbusBus(SerialSettings(port))
    for i in range(50):  # open the port, warm up
        await bus.read_registers(1 + i % 8, FC_READ_INPUT, 0x000C, 2)
    out = []
    for _ in range(rounds):
        c0 = time.process_time()
        for i in range(requests):
            await bus.read_registers(1 + i % 8, FC_READ_INPUT, 0x000C if i % 2 else 0x0156, 2)
        out.append((time.process_time() - c0) / requests * 1e6)
    await bus.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    sim = subprocess.Popen([sys.executable, "-c", SIM], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert sim.stdout is not None
        res = asyncio.run(measure(sim.stdout.readline().strip(), a.requests, a.rounds))
    finally:
        sim.kill()
        sim.wait()
    print(f"ModbusBus.read_registers, {a.requests} requests x {a.rounds}: CPU per request "
          f"{' '.join(f'{r:.0f}' for r in res)} us, best {min(res):.0f} us (load average {load} at the start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
