"""Find Modbus meters on serial ports for an installer, name their model, and print a config block to paste.

    python -m drivers.discover_serial                              # every port pyserial lists, addresses 1-10
    python -m drivers.discover_serial --port /dev/ttyUSB0 --address 1-5,248 --baud 9600,2400

From code (what `koto discover` calls):

    found = await discover(["/dev/ttyUSB0"], addresses=range(1, 11), bauds=(9600, 2400))
    print(config_block(found))

How a model is recognised (only reads, never writes):
1. Read input registers 0x0000-0x0001 as a big-endian float32. A mains voltage (80-300 V) there means an Eastron
   meter (SDM120, SDM630 and their family keep line voltage as float32 at 30001).
   - Phase 2 and 3 voltages at 0x0002/0x0004 that are mains voltages too, or a system type of 1, 2 or 3 in holding
     register 0x000A (40011, SDM630 only) -> SDM630. Otherwise -> SDM120.
2. Otherwise read input registers 0x0000-0x0009 as PZEM-004T integers: voltage/10 in 80-300 V, frequency/10 at
   0x0007 in 45-65 Hz and power factor at 0x0008 at most 1.00 -> PZEM-004T (its float32 reading in step 1 is a tiny
   denormal, never a voltage).
3. A device that answers but fits neither is reported as unknown, with a hint to write a register map.
A meter that does not answer at a baud rate is tried at the next one; an absent address costs one timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import FrameError
from .serialbus import FC_READ_HOLDING, FC_READ_INPUT, ModbusBus, PortUnavailable, SerialSettings

DEFAULT_ADDRESSES = tuple(range(1, 11))
DEFAULT_BAUDS = (9600, 2400)
MODEL_NAMES = {"sdm120": "Eastron SDM120", "sdm630": "Eastron SDM630", "pzem004t": "PZEM-004T v3"}


@dataclass(frozen=True, slots=True)
class PortInfo:
    device: str
    description: str
    hwid: str
    stable_path: str  # /dev/serial/by-id/... when udev made one: it survives replugging and reboots


@dataclass(frozen=True, slots=True)
class Found:
    port: str
    address: int
    baud: int
    model: str | None  # None: answers, model not recognised
    evidence: str


def _by_id(device: str, by_id_dir: Path = Path("/dev/serial/by-id")) -> str:
    try:
        for link in sorted(by_id_dir.iterdir()):
            if os.path.realpath(link) == os.path.realpath(device):
                return str(link)
    except OSError:
        pass
    return device


def list_ports() -> list[PortInfo]:
    """Serial ports as pyserial sees them, with the stable by-id path when there is one."""
    from serial.tools import list_ports as lp

    return [PortInfo(p.device, p.description or "", p.hwid or "", _by_id(p.device)) for p in lp.comports()]


def _f32(regs: Sequence[int]) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", regs[0] & 0xFFFF, regs[1] & 0xFFFF))[0])


def _mains(v: float) -> bool:
    return 80.0 <= v <= 300.0


async def _read(bus: ModbusBus, address: int, fc: int, start: int, count: int, tries: int = 2) -> list[int] | str:
    """Registers, or the failure kind ("timeout", "exception", ...)."""
    kind = "timeout"
    for _ in range(tries):
        try:
            return await bus.read_registers(address, fc, start, count)
        except FrameError as e:
            kind = e.kind
            if kind in ("timeout", "exception"):
                return kind
    return kind


async def identify(bus: ModbusBus, address: int) -> Found | None:
    """Which meter answers at `address` on this bus (see the module docstring for the heuristic)."""
    port, baud = bus.settings.port, bus.settings.baud
    first = await _read(bus, address, FC_READ_INPUT, 0x0000, 2)
    if first == "timeout":
        return None
    if isinstance(first, list) and _mains(v := _f32(first)):
        phases = await _read(bus, address, FC_READ_INPUT, 0x0002, 4)
        if isinstance(phases, list) and _mains(_f32(phases[:2])) and _mains(_f32(phases[2:])):
            return Found(port, address, baud, "sdm630", f"three phase voltages, L1 {v:.1f} V")
        systype = await _read(bus, address, FC_READ_HOLDING, 0x000A, 2)
        if isinstance(systype, list) and _f32(systype) in (1.0, 2.0, 3.0):
            return Found(port, address, baud, "sdm630", f"system type {_f32(systype):.0f}, L1 {v:.1f} V")
        return Found(port, address, baud, "sdm120", f"float32 voltage {v:.1f} V at 30001, single phase")
    pz = await _read(bus, address, FC_READ_INPUT, 0x0000, 10)
    if isinstance(pz, list) and _mains(pz[0] / 10) and 45.0 <= pz[7] / 10 <= 65.0 and pz[8] <= 100:
        return Found(port, address, baud, "pzem004t", f"voltage {pz[0] / 10:.1f} V, {pz[7] / 10:.1f} Hz as integers")
    return Found(port, address, baud, None, "answers, but the registers fit no known model")


async def probe_port(port: str, *, addresses: Iterable[int] = DEFAULT_ADDRESSES,
                     bauds: Iterable[int] = DEFAULT_BAUDS, timeout_s: float = 0.3) -> list[Found]:
    """Probe one port at each baud rate until meters answer; addresses that answered are not asked again."""
    found: list[Found] = []
    todo = list(addresses)
    for baud in bauds:
        if not todo:
            break
        bus = ModbusBus(SerialSettings(port, baud=baud), timeout_s=timeout_s, turnaround_s=0.01)
        try:
            for address in list(todo):
                f = await identify(bus, address)
                if f is not None:
                    found.append(f)
                    todo.remove(address)
        except PortUnavailable:
            return found
        finally:
            await bus.close()
    return found


async def discover(ports: Iterable[str] | None = None, **options: object) -> list[Found]:
    """Probe the given ports (default: every port pyserial lists, by their stable paths)."""
    paths = list(ports) if ports is not None else [p.stable_path for p in list_ports()]
    found: list[Found] = []
    for port in paths:
        found.extend(await probe_port(port, **options))  # type: ignore[arg-type]
    return found


def config_block(found: Sequence[Found]) -> str:
    """TOML to paste into koto.toml: one [appliance.sources.*] table per meter found."""
    if not found:
        return "# no Modbus meter answered; check wiring (A/B swapped?), address and baud rate\n"
    out: list[str] = []
    for i, f in enumerate(found, start=1):
        name = MODEL_NAMES.get(f.model or "", "unknown device")
        out.append(f"# {name} on {f.port} at address {f.address}, {f.baud} baud: {f.evidence}")
        lines = [f"[appliance.sources.meter-{i}]", 'driver = "modbus"', f'port = "{f.port}"', f"address = {f.address}"]
        if f.model is None:
            lines.append('map = "/etc/koto/maps/my-meter.toml"  # write a register map: see docs/serial.md')
            lines = ["# " + ln for ln in lines]
        else:
            lines.append(f'model = "{f.model}"')
        lines.append(f"baud = {f.baud}" if f.model else f"# baud = {f.baud}")
        out.extend(lines)
        out.append("")
    return "\n".join(out)


def _ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo, 0), int(hi, 0) + 1) if hi else [int(lo, 0)])
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Find Modbus meters on serial ports and print a config block.")
    p.add_argument("--port", action="append", help="port to probe (repeatable; default: all listed ports)")
    p.add_argument("--address", default="1-10", help="addresses, e.g. 1-10,248 (default 1-10)")
    p.add_argument("--baud", default="9600,2400", help="baud rates to try in order (default 9600,2400)")
    p.add_argument("--timeout", type=float, default=0.3, help="seconds to wait for each reply")
    a = p.parse_args(argv)
    if a.port is None:
        for info in list_ports():
            print(f"# port {info.stable_path} ({info.description}; {info.hwid})")
    found = asyncio.run(discover(a.port, addresses=_ints(a.address), bauds=_ints(a.baud), timeout_s=a.timeout))
    print(config_block(found))


if __name__ == "__main__":
    main()
