"""A meter served by libmodbus (tests/support/libmodbus_meter.c): a Modbus RTU peer with no pymodbus in it.

Koto's client is pymodbus' framer and transport with Koto's own reply checks around them, and every other serial
test serves its meters with pymodbus' RTU server too, so a habit they share (how a reply is timed, how an exception
frame is read, what happens to a request for a slave nobody is) would pass unseen. libmodbus is the C library
behind many real meters' gateways and PLC tools; here it frames, checks and times every reply. What it serves is a
register image made from tests/support/vendor_meters.py (the vendors' documents), on one end of the same pty cable
the simulators use (drivers/modbus_sim.PtyWire), the driver opening the other.

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

from drivers.modbus_sim import PtyWire
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


class LibmodbusMeter:
    """`async with LibmodbusMeter(SDM120(7, power_w=...)) as m:` a libmodbus RTU server for that meter at its
    address; `m.port` is what a driver opens; `m.update()` serves the meter's current values from the next
    request on."""

    def __init__(self, meter: EmulatedMeter, *, baud: int = 9600) -> None:
        self.meter, self.baud = meter, baud
        self.wire = PtyWire()
        self._folder = tempfile.TemporaryDirectory(prefix="koto-libmodbus-")
        self._map = Path(self._folder.name) / "registers"
        self._proc: asyncio.subprocess.Process | None = None
        self.stderr = b""

    @property
    def port(self) -> str:
        return self.wire.port

    def update(self) -> None:
        """Write the register image and rename it into place (the server rereads it when its mtime changes;
        each version gets its own mtime)."""
        text = "".join(f"{k} {a} {w}\n" for k, a, w in registers(self.meter))
        part = self._map.with_suffix(".part")
        part.write_text(text)
        old = self._map.stat().st_mtime_ns if self._map.exists() else 0
        new = max(part.stat().st_mtime_ns, old + 1_000_000)
        os.utime(part, ns=(new, new))
        part.replace(self._map)

    async def __aenter__(self) -> LibmodbusMeter:
        binary = await asyncio.to_thread(build)
        self.update()
        self.wire.start()
        self._proc = await asyncio.create_subprocess_exec(
            str(binary), self.wire.server_path, str(self.meter.address), str(self.baud), str(self._map),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 10)
        if line.strip() != b"ready":
            await self._stop()
            raise RuntimeError(f"libmodbus_meter did not start: {self.stderr.decode(errors='replace')}")
        return self

    async def _stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            _out, self.stderr = await self._proc.communicate()
            self._proc = None

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop()
        self.wire.close()
        self._folder.cleanup()
