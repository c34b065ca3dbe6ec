"""A Modbus RTU bus you can run without hardware: real pymodbus server, real serial ports (ptys), real faults.

    async with ModbusSimulator([SimMeter("sdm120", 1), SimMeter("pzem004t", 3)]) as sim:
        cfg = {"driver": "modbus", "port": sim.port, "address": 1, "model": "sdm120"}

Used by the tests, the demo (`koto demo`), `discover` and bench/modbus_soak.py; also runnable on its own:

    python -m drivers.modbus_sim --meter sdm120:1 --meter sdm630:2 --corrupt 0.05     # prints the port path

The wire (`PtyWire`) is two pseudo-terminal pairs joined by a relay. The driver opens `port`, a symlink like the
ones udev makes under /dev/serial/by-id; pymodbus' `ModbusSerialServer` opens the other pair. The wire can be
unplugged (the symlink vanishes and the driver's open port fails, as when a USB adapter is pulled) and plugged back,
and can carry extra bytes (garbage on the line). The server's `trace_packet` hook is the fault knob: a fraction of
replies is corrupted (a flipped bit, cut short, replaced by noise, or dropped), and devices that do not exist stay
silent as they would on RS485 (pymodbus' simulator would otherwise answer them with exception 4).

Each `SimMeter` serves changing values through a SimDevice `action` run on every request, and remembers the exact
physical value behind each register it last served (`truth`), so the soak can prove no wrong value was accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import tempfile
import time
import tty
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .modbus import MODELS, RegisterMap, model_map

log = logging.getLogger("koto.drivers.modbus_sim")

FAULTS = ("flip", "truncate", "garbage", "drop")  # the soak's mix
ALL_FAULTS = (*FAULTS, "late")  # late: the whole reply, but `late_s` after it was due


# -- the wire -----------------------------------------------------------------------------------------------------
def raw_pty() -> tuple[int, int, str]:
    """A pty pair in raw mode with a non-blocking master: (master, slave, the slave's path, what a device opens)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class PtyWire:
    """Two pty pairs and a relay between their masters: a serial cable with a plug and a tap."""

    def __init__(self, directory: str | Path | None = None, name: str = "ttyKOTO0") -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="koto-wire-")
            directory = self._tmp.name
        self.port = str(Path(directory) / name)  # what the driver opens
        self.server_path = ""
        self._c: tuple[int, int] | None = None  # (master, slave) of the client side
        self._s: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.plugged = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        m, s, path = raw_pty()
        self._s = (m, s)
        self.server_path = path
        self._loop.add_reader(m, self._relay, m, True)
        self.plug()

    def plug(self) -> None:
        """Connect the client side (again): a new tty appears under the same symlink."""
        assert self._loop is not None
        if self.plugged:
            return
        m, s, path = raw_pty()
        self._c = (m, s)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.port)
        os.symlink(path, self.port)
        self._loop.add_reader(m, self._relay, m, False)
        self.plugged = True

    def unplug(self) -> None:
        """Pull the adapter: the client's open port hangs up and its path disappears."""
        assert self._loop is not None
        if not self.plugged or self._c is None:
            return
        m, s = self._c
        self._loop.remove_reader(m)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.port)
        os.close(m)
        os.close(s)
        self._c = None
        self.plugged = False

    def _relay(self, fd: int, from_server: bool) -> None:
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return
        dest = self._c if from_server else self._s
        if dest is None:
            return  # unplugged: the bytes fall on the floor
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(dest[0], data)

    def inject(self, data: bytes) -> None:
        """Put bytes on the line towards the driver (noise, a stray frame)."""
        if self._c is not None:
            os.write(self._c[0], data)

    def close(self) -> None:
        if self._loop is not None:
            self.unplug()
            if self._s is not None:
                self._loop.remove_reader(self._s[0])
                os.close(self._s[0])
                os.close(self._s[1])
                self._s = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# -- meters -------------------------------------------------------------------------------------------------------
@dataclass
class SimMeter:
    """One simulated meter. Power follows a slow wave plus steps; energy integrates it; truth is kept per key."""

    model: str
    device_id: int
    base_power_w: float = 800.0
    energy_kwh: float = 1234.5
    voltage_v: float = 230.0
    seed: int = 0
    time_fn: Callable[[], float] = time.monotonic
    power_fn: Callable[[float], float] | None = None  # watts at simulated time t: the demo's appliance program
    fixed: dict[str, float] = field(default_factory=dict)  # pin values by register key (tests)
    energy_lag_s: float = 0.0  # the energy registers show the energy of this long ago (meters update them late)
    truth: dict[str, float] = field(default_factory=dict)
    served: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; allowed: {', '.join(MODELS)}")
        self.map: RegisterMap = model_map(self.model)
        self._rng = random.Random(self.seed or self.device_id)
        self._t_last: float | None = None
        self._history: list[tuple[float, float]] = []  # (t, energy) for energy_lag_s
        if self.model == "pzem004t":
            self.energy_kwh = min(self.energy_kwh, 9000.0)

    # physical values at time t (seconds), phases share the load
    def _physics(self, t: float) -> dict[str, float]:
        if self.power_fn is not None:
            p = self.power_fn(t)
        else:
            p = self.base_power_w * (1.0 + 0.5 * math.sin(2 * math.pi * t / 97.0)) + self._rng.uniform(-5, 5)
            if int(t / 41.0) % 3 == 2:
                p = 3.0 + self._rng.uniform(0, 1)  # standby stretch
        p = max(0.0, p)
        if self._t_last is not None and t > self._t_last:
            self.energy_kwh += p * (t - self._t_last) / 3_600_000.0
        self._t_last = t
        shown_kwh = self.energy_kwh
        if self.energy_lag_s > 0:
            self._history.append((t, self.energy_kwh))
            while len(self._history) > 1 and self._history[1][0] <= t - self.energy_lag_s:
                self._history.pop(0)
            shown_kwh = self._history[0][1]  # the last energy at or before t - lag (or the first one there is)
        v = self.voltage_v + self._rng.uniform(-2, 2)
        f = 50.0 + self._rng.uniform(-0.05, 0.05)
        vals = {"voltage": v, "current": p / v, "power": p, "frequency": f,
                "import_energy": shown_kwh, "energy": shown_kwh}
        if self.model == "sdm630":
            for i, share in enumerate((0.5, 0.3, 0.2), start=1):
                vals[f"voltage_l{i}"] = v + i * 0.3
                vals[f"power_l{i}"] = p * share
                vals[f"current_l{i}"] = p * share / (v + i * 0.3)
                vals[f"energy_l{i}"] = shown_kwh * share  # each phase has drawn its share all along
        vals.update(self.fixed)
        return vals

    def _encode(self, vals: dict[str, float]) -> dict[int, list[int]]:
        """Register words per address, and the exact physical value each carries (in the map's unit)."""
        from pymodbus.client import AsyncModbusSerialClient as C

        out: dict[int, list[int]] = {}
        self._pending: dict[str, float] = {}
        for spec in self.map.registers:
            v = vals[spec.key]
            if spec.unit == "Wh" and spec.key not in self.fixed:
                v *= 1000.0  # our energy is kWh; PZEM counts Wh (pinned values are in the map's unit)
            if spec.type == "float32":
                regs = C.convert_to_registers(float(v), C.DATATYPE.FLOAT32, word_order="big")
                exact = v
            else:
                raw = max(0, round(v / float(spec.scale)))
                dt = C.DATATYPE.UINT16 if spec.type == "uint16" else C.DATATYPE.UINT32
                wo: Any = self.map.word_order
                regs = C.convert_to_registers(raw, dt, word_order=wo)
                exact = raw * float(spec.scale)
            out[spec.address] = regs
            self._pending[spec.key] = exact
        return out

    def device(self) -> Any:
        from pymodbus.simulator import DataType, SimData, SimDevice

        top = max(s.address + s.count for s in self.map.registers)
        if self.model == "pzem004t":
            top = 10  # 0x0000-0x0009; anything beyond is an illegal address, as on the module
            holding = [SimData(0x0001, values=[2300, self.device_id], datatype=DataType.REGISTERS)]
        elif self.model == "sdm630":
            from pymodbus.client import AsyncModbusSerialClient as C

            # 40011 system type 3 (3P4W) as float32, in a block of zeros as Eastron answers
            sys_type = C.convert_to_registers(3.0, C.DATATYPE.FLOAT32)
            holding = [SimData(0x0000, values=[0] * 10 + sys_type + [0] * 20, datatype=DataType.REGISTERS)]
        else:
            holding = [SimData(0x000C, values=[0] * 20, datatype=DataType.REGISTERS)]
        inputs = [SimData(0x0000, values=[0] * top, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(id=self.device_id, simdata=(list(bits), list(bits), holding, inputs), action=self._action)

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list[int],
                      set_values: Any) -> None:
        if fc != 4 or set_values:
            return None
        image = self._encode(self._physics(self.time_fn()))
        for addr, regs in image.items():
            off = addr - start
            if off >= 0 and off + len(regs) <= len(registers):
                registers[off:off + len(regs)] = regs
        for spec in self.map.registers:
            if address <= spec.address and spec.address + spec.count <= address + count:
                self.truth[spec.key] = self._pending[spec.key]
        self.served += 1
        return None


# -- the bus ------------------------------------------------------------------------------------------------------
class ModbusSimulator:
    """A pymodbus RTU server for `meters` on a PtyWire, with a fault knob. `port` is what a driver opens."""

    def __init__(self, meters: Sequence[SimMeter], *, corrupt: float = 0.0, faults: Sequence[str] = FAULTS,
                 seed: int = 1, directory: str | Path | None = None, baud: int = 9600,
                 late_s: float = 0.3) -> None:
        ids = [m.device_id for m in meters]
        if len(set(ids)) != len(ids):
            raise ValueError("two simulated meters share one address")
        bad = [f for f in faults if f not in ALL_FAULTS]
        if bad:
            raise ValueError(f"unknown fault {bad[0]!r}; allowed: {', '.join(ALL_FAULTS)}")
        self.meters = list(meters)
        self.corrupt = corrupt
        self.faults = tuple(faults)
        self.rng = random.Random(seed)
        self.wire = PtyWire(directory)
        self.baud = baud
        self.injected: Counter[str] = Counter()
        self.fault_next: list[str] = []  # faults forced on the next replies, in order (tests)
        self.late_s = late_s
        self.replies = 0
        self._server: Any = None

    @property
    def port(self) -> str:
        return self.wire.port

    def meter(self, device_id: int) -> SimMeter:
        return next(m for m in self.meters if m.device_id == device_id)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        if data[0] not in {m.device_id for m in self.meters}:
            return b""  # nobody at that address: silence, as on a real bus
        self.replies += 1
        if self.fault_next:
            fault = self.fault_next.pop(0)
        elif self.corrupt <= 0 or self.rng.random() >= self.corrupt:
            return data
        else:
            fault = self.rng.choice(self.faults)
        self.injected[fault] += 1
        if fault == "late":
            asyncio.get_running_loop().call_later(self.late_s, self.wire.inject, data)
            return b""
        if fault == "flip":
            b = bytearray(data)
            b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
            return bytes(b)
        if fault == "truncate":
            return data[: self.rng.randrange(1, len(data))]
        if fault == "garbage":
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, len(data) + 1)))
        return b""  # drop

    async def start_server(self) -> None:
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusSerialServer

        logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)
        self._server = ModbusSerialServer(
            [m.device() for m in self.meters], framer=FramerType.RTU, port=self.wire.server_path,
            baudrate=self.baud, trace_packet=self._trace_packet)
        await self._server.serve_forever(background=True)

    async def stop_server(self) -> None:
        """The meters go silent (power cut at the meter, RS485 wire broken)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()

    async def __aenter__(self) -> Self:
        self.wire.start()
        await self.start_server()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop_server()
        self.wire.close()


def _parse_meter(text: str) -> SimMeter:
    model, _, addr = text.partition(":")
    return SimMeter(model, int(addr or "1", 0))


async def _main(args: argparse.Namespace) -> None:
    meters = [_parse_meter(t) for t in (args.meter or ["sdm120:1"])]
    directory = None if args.link is None else Path(args.link).parent
    name = "ttyKOTO0" if args.link is None else Path(args.link).name
    sim = ModbusSimulator(meters, corrupt=args.corrupt, directory=directory)
    sim.wire = PtyWire(directory, name)
    async with sim:
        print(sim.port, flush=True)
        for m in meters:
            print(f"  {m.model} at address {m.device_id}", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Simulated Modbus RTU meters on a pty; prints the port to open.")
    p.add_argument("--meter", action="append", help="model:address, e.g. sdm120:1 (repeatable)")
    p.add_argument("--corrupt", type=float, default=0.0, help="fraction of replies to corrupt (0..1)")
    p.add_argument("--link", help="path of the port symlink to create (default: in a temporary directory)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    main()
