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

`check_request` refuses what cannot exist before anything is probed (a port that is not there, an address outside
Modbus' 1..247 (248 only as the PZEM-004T's general address), a baud rate no meter uses), and `survey` reports each
step to a callback as it goes and what it tried, so an empty result can say what was looked at.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FrameError, ProbeRequestError
from .pi_uart import PI_UART, uart_role
from .serialbus import FC_READ_HOLDING, FC_READ_INPUT, ModbusBus, PortUnavailable, SerialSettings

DEFAULT_ADDRESSES = tuple(range(1, 11))
DEFAULT_BAUDS = (9600, 2400)
# What meters' RS-485 ports speak, and what the modbus driver accepts as `baud` (drivers/modbus.py).
METER_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
MAX_ADDRESS = 248  # 1..247 are Modbus device addresses; 248 (0xF8) is the PZEM-004T's general address
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


PI_UART_TEXT = "the Pi's UART on GPIO 14/15"


def list_ports(pi_uart: str = PI_UART) -> list[PortInfo]:
    """Serial ports as pyserial sees them, with the stable by-id path when there is one, and the Pi's own UART as
    `/dev/serial0` when that link exists: pyserial hides the mini UART it points to on a Pi 3 or 4 with Bluetooth
    on (ttyS0, a "platform" port, which it takes for a PC's absent COM port). Not `/dev/serial1`, nor any UART the
    device tree says is a Pi 5's debug connector or the Bluetooth chip's (`drivers/pi_uart.py:uart_role`): no meter
    is there, and probing one writes Modbus frames into a login console or the Bluetooth controller at 9600 baud."""
    from serial.tools import list_ports as lp

    ports = [PortInfo(p.device, p.description or "", p.hwid or "", _by_id(p.device)) for p in lp.comports()
             if uart_role(p.device) is None]
    if not os.path.exists(pi_uart) or uart_role(pi_uart) is not None:  # (a Pi 5's serial0 until uart0_console)
        return ports
    real = os.path.realpath(pi_uart)
    mine = [i for i, p in enumerate(ports) if os.path.realpath(p.device) == real]
    if mine:
        p = ports[mine[0]]
        ports[mine[0]] = PortInfo(p.device, p.description or PI_UART_TEXT, p.hwid, pi_uart)
    else:
        ports.append(PortInfo(real, PI_UART_TEXT, "", pi_uart))
    return ports


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


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a survey, told to the caller as it happens (the command line shows it as progress)."""

    port: str
    baud: int
    address: int | None  # None: a pass over the port at this baud starts, or the port failed to open
    found: Found | None = None
    problem: str | None = None  # the port could not be opened


@dataclass(slots=True)
class Tried:
    """What was tried on one port: an empty result names these."""

    port: str
    addresses: list[int]
    bauds: list[int] = field(default_factory=list)
    problem: str | None = None


@dataclass(slots=True)
class Survey:
    found: list[Found]
    tried: list[Tried]


OnStep = Callable[[Step], None]


def check_request(ports: Iterable[str] | None, addresses: Iterable[int], bauds: Iterable[int]) -> None:
    """Raise ProbeRequestError naming every impossible argument; probing them would only end in "found: 0"."""
    problems: list[str] = []
    for port in ports or ():
        if not os.path.exists(port):
            here = ", ".join(p.stable_path for p in list_ports()) or "none"
            problems.append(f"--port {port}: no such serial port (ports here: {here}; is the adapter plugged in?)")
    addrs = list(addresses)
    if not addrs:
        problems.append("--address: no address to try; give one or more, e.g. 1-10")
    bad = sorted({a for a in addrs if not 1 <= a <= MAX_ADDRESS})
    if bad:
        problems.append(f"--address {ranges(bad)}: not a Modbus device address; use 1..247 (248 is the "
                        "PZEM-004T's general address)")
    rates = list(bauds)
    if not rates:
        problems.append("--baud: no baud rate to try; give one or more, e.g. 9600,2400")
    wrong = sorted({b for b in rates if b not in METER_BAUDS})
    if wrong:
        problems.append(f"--baud {','.join(map(str, wrong))}: no meter uses this rate; use "
                        f"{', '.join(map(str, METER_BAUDS))}")
    if problems:
        raise ProbeRequestError(problems)


def ranges(numbers: Iterable[int]) -> str:
    """1,2,3,5,7,8 -> "1-3,5,7-8": how an installer writes them on the command line."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(set(numbers)):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


async def probe_port(port: str, *, addresses: Iterable[int] = DEFAULT_ADDRESSES,
                     bauds: Iterable[int] = DEFAULT_BAUDS, timeout_s: float = 0.3,
                     on_step: OnStep | None = None, tried: Tried | None = None) -> list[Found]:
    """Probe one port at each baud rate until meters answer; addresses that answered are not asked again."""
    say = on_step or (lambda step: None)
    found: list[Found] = []
    todo = list(addresses)
    tried = tried if tried is not None else Tried(port, list(todo))
    for baud in bauds:
        if not todo:
            break
        tried.bauds.append(baud)
        say(Step(port, baud, None))
        bus = ModbusBus(SerialSettings(port, baud=baud), timeout_s=timeout_s, turnaround_s=0.01)
        try:
            for address in list(todo):
                say(Step(port, baud, address))
                f = await identify(bus, address)
                if f is not None:
                    found.append(f)
                    todo.remove(address)
                    say(Step(port, baud, address, found=f))
        except PortUnavailable as e:
            tried.problem = str(e)
            say(Step(port, baud, None, problem=str(e)))
            return found
        finally:
            await bus.close()
    return found


async def survey(ports: Iterable[str] | None = None, *, addresses: Iterable[int] = DEFAULT_ADDRESSES,
                 bauds: Iterable[int] = DEFAULT_BAUDS, timeout_s: float = 0.3,
                 on_step: OnStep | None = None) -> Survey:
    """Probe the given ports (default: every port pyserial lists, by their stable paths); say what was tried."""
    paths = list(ports) if ports is not None else [p.stable_path for p in list_ports()]
    addrs, rates = list(addresses), list(bauds)
    result = Survey([], [])
    for port in paths:
        tried = Tried(port, addrs)
        result.tried.append(tried)
        result.found.extend(await probe_port(port, addresses=addrs, bauds=rates, timeout_s=timeout_s,
                                             on_step=on_step, tried=tried))
    return result


async def discover(ports: Iterable[str] | None = None, **options: object) -> list[Found]:
    """Probe the given ports (default: every port pyserial lists, by their stable paths)."""
    return (await survey(ports, **options)).found  # type: ignore[arg-type]


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
    try:
        check_request(a.port, _ints(a.address), _ints(a.baud))
    except ProbeRequestError as e:
        p.error(str(e))
    if a.port is None:
        for info in list_ports():
            print(f"# port {info.stable_path} ({info.description}; {info.hwid})")
    found = asyncio.run(discover(a.port, addresses=_ints(a.address), bauds=_ints(a.baud), timeout_s=a.timeout))
    print(config_block(found))


if __name__ == "__main__":
    main()
