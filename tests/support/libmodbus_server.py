"""A meter served by libmodbus (tests/support/libmodbus_meter.c): a Modbus RTU peer with no pymodbus in it.

Koto's client is pymodbus' framer and transport with Koto's own reply checks around them, and every other serial
test serves its meters with pymodbus' RTU server too, so a habit they share (how a reply is timed, how an exception
frame is read, what happens to a request for a slave nobody is) would pass unseen. libmodbus is the C library
behind many real meters' gateways and PLC tools; here it frames, checks and times every reply. What it serves is a
register image made from tests/support/vendor_meters.py (the vendors' documents), one server per meter, all on one
RS-485 bus made of pty pairs (`RS485Bus`: every byte reaches every other device, as on the wire).

The server is compiled on first use (cc and Debian's libmodbus-dev: `make system-deps` installs them) into a
folder keyed by its source's hash, once per machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from drivers.modbus_sim import raw_pty
from tests.support.vendor_meters import FC_READ_INPUT, PZEM004T, EastronMeter, EmulatedMeter, float32_words

SOURCE = Path(__file__).with_name("libmodbus_meter.c")
HEADER = Path("/usr/include/modbus/modbus.h")


def why_not() -> str | None:
    """What is missing to build the server here, in words (None: nothing)."""
    if shutil.which("cc") is None:
        return "no C compiler (cc): make system-deps installs gcc"
    if not HEADER.exists():
        return f"no {HEADER}: make system-deps installs libmodbus-dev"
    return None


def build() -> Path:
    """The compiled server, built once per source text."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = Path(tempfile.gettempdir()) / f"koto-libmodbus-{digest}" / "libmodbus_meter"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        part = binary.with_suffix(f".{os.getpid()}")
        subprocess.run(["cc", "-O1", "-Wall", "-Werror", f"-I{HEADER.parent}", "-o", str(part), str(SOURCE),
                        "-lmodbus"], check=True, capture_output=True, text=True)
        part.replace(binary)
    return binary


def registers(meter: EmulatedMeter) -> list[tuple[str, int, int]]:
    """The meter's register image as libmodbus serves it: ("i" input | "h" holding, address, word). An Eastron
    meter's input registers are all there up to its last parameter (between parameters they read as zero, as the
    emulator says), its setup registers only where the document lists one; a PZEM-004T has input 0x0000-0x0009 and
    holding 0x0001-0x0002."""
    if isinstance(meter, PZEM004T):
        return ([("i", a, w) for a, w in enumerate(meter.input_registers())]
                + [("h", 0x0001, meter.alarm_threshold_w), ("h", 0x0002, meter.address)])
    assert isinstance(meter, EastronMeter), meter
    out: list[tuple[str, int, int]] = []
    for a in range(0, meter.INPUT_END, 60):
        words = meter._read(FC_READ_INPUT, a, min(60, meter.INPUT_END - a))
        assert isinstance(words, list)
        out += [("i", a + i, w) for i, w in enumerate(words)]
    for name, a in meter.HOLDING.items():
        out += [("h", a + i, w) for i, w in enumerate(float32_words(meter.values[name]))]
    return out


class RS485Bus:
    """A two-wire RS-485 bus as the pty pairs can make it: the gateway's adapter (`port`, what a driver opens) and
    one pty per meter, and a relay that puts every byte sent on it in front of every other device on it. The
    gateway's requests reach every meter, and each meter's reply reaches the gateway and the other meters, as on
    the wire (a meter built on libmodbus relies on that: after another meter's request it reads that meter's
    reply and drops it)."""

    def __init__(self, meters: int) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="koto-rs485-")
        self.port = str(Path(self._folder.name) / "ttyRS485")
        self._gateway = raw_pty()
        self._meters = [raw_pty() for _ in range(meters)]
        os.symlink(self._gateway[2], self.port)
        self._loop: asyncio.AbstractEventLoop | None = None

    def meter_path(self, i: int) -> str:
        """The tty meter `i` opens."""
        return self._meters[i][2]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ends = [self._gateway[0], *(m[0] for m in self._meters)]
        for fd in ends:
            self._loop.add_reader(fd, self._relay, fd, [other for other in ends if other != fd])

    @staticmethod
    def _relay(fd: int, to: list[int]) -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:  # (nothing to read yet, or the pty closed)
            return
        for dest in to:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(dest, data)

    def close(self) -> None:
        for master, slave, _path in (self._gateway, *self._meters):
            if self._loop is not None:
                self._loop.remove_reader(master)
            os.close(master)
            os.close(slave)
        self._folder.cleanup()


class LibmodbusMeters:
    """`async with LibmodbusMeters(SDM120(7, ...), PZEM004T(3, ...)) as bus:` one libmodbus RTU server per meter,
    at its address, all on one RS-485 bus; `bus.port` is what a driver opens; `bus.update()` serves the meters'
    current values from their next request on."""

    def __init__(self, *meters: EmulatedMeter, baud: int = 9600) -> None:
        self.meters, self.baud = meters, baud
        self.bus = RS485Bus(len(meters))
        self._folder = tempfile.TemporaryDirectory(prefix="koto-libmodbus-")
        self._maps = [Path(self._folder.name) / f"registers-{i}" for i in range(len(meters))]
        self._procs: list[asyncio.subprocess.Process] = []
        self.stderr: list[bytes] = []

    @property
    def port(self) -> str:
        return self.bus.port

    def update(self) -> None:
        """Write each register image and rename it into place (a server rereads its file when the mtime changes;
        each version gets its own mtime)."""
        for meter, path in zip(self.meters, self._maps, strict=True):
            text = "".join(f"{k} {a} {w}\n" for k, a, w in registers(meter))
            part = path.with_suffix(".part")
            part.write_text(text)
            old = path.stat().st_mtime_ns if path.exists() else 0
            new = max(part.stat().st_mtime_ns, old + 1_000_000)
            os.utime(part, ns=(new, new))
            part.replace(path)

    async def __aenter__(self) -> LibmodbusMeters:
        binary = await asyncio.to_thread(build)
        self.update()
        self.bus.start()
        for i, meter in enumerate(self.meters):
            proc = await asyncio.create_subprocess_exec(
                str(binary), self.bus.meter_path(i), str(meter.address), str(self.baud), str(self._maps[i]),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            self._procs.append(proc)
            assert proc.stdout is not None
            if (await asyncio.wait_for(proc.stdout.readline(), 10)).strip() != b"ready":
                await self._stop()
                raise RuntimeError(f"libmodbus_meter did not start: {b''.join(self.stderr).decode(errors='replace')}")
        return self

    async def _stop(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            self.stderr.append((await proc.communicate())[1])
        self._procs = []

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop()
        self.bus.close()
        self._folder.cleanup()
