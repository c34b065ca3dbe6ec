"""One owner per serial port: every Modbus request on an RS485 bus goes through one `ModbusBus`, one at a time.

RS485 is half-duplex and Modbus RTU frames carry no transaction id, so two requests in flight on one wire would mix
their replies. Several meter sources configured on the same port therefore share one `ModbusBus` (looked up by port
path in `acquire_bus`), and the bus serialises requests with one lock. The bus also owns the port's life: when the
USB adapter is unplugged the transport drops, and the next request reopens the port with capped, jittered backoff;
`generation` counts successful reopens so each source can count its reconnects.

pymodbus' own `AsyncModbusSerialClient` does the framing and the CRC (a reply that fails CRC is dropped by its RTU
framer and never decoded). We run it with `retries=0` and no automatic reconnect, so that every failed attempt comes
back here and can be classified (timeout, CRC, truncated, garbage, exception) and counted by the source that asked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .errors import BackendUnavailable, BusSettingsConflict, FrameError
from .pi_uart import not_the_pins
from .port_watch import missing, why_not_open

log = logging.getLogger("koto.drivers.serialbus")

FC_READ_HOLDING = 3
FC_READ_INPUT = 4


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """How to talk on one port. Every meter sharing a port must agree on these."""

    port: str
    baud: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1

    def line(self) -> tuple[int, str, int, int]:
        return (self.baud, self.parity, self.bytesize, self.stopbits)


class PortUnavailable(BackendUnavailable):
    """The port cannot be opened now (unplugged, missing, busy); the bus retries it after a backoff."""

    kind = "port"


def _quiet_pymodbus() -> None:
    """pymodbus logs every timeout at ERROR; we count and rate-limit those ourselves, in plain words.

    Only touched when nobody configured the pymodbus logger (its level is still NOTSET)."""
    lg = logging.getLogger("pymodbus.logging")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.CRITICAL)


def classify_failure(rx: bytes, device_id: int, function: int, expected_len: int) -> str:
    """Name what went wrong from the bytes that arrived during a failed attempt (pure; tested byte by byte).

    - nothing arrived: "timeout" (device absent, asleep, wrong baud or address)
    - our header (device id, function code) but too few bytes: "truncated"
    - our header and enough bytes: the RTU framer refused it, so the CRC was wrong: "crc"
    - anything else: "garbage" (noise, another device talking, a corrupted header)
    """
    if not rx:
        return "timeout"
    if len(rx) >= 2 and rx[0] == device_id and (rx[1] & 0x7F) == function:
        if rx[1] & 0x80:
            return "crc" if len(rx) >= 5 else "truncated"
        return "truncated" if len(rx) < expected_len else "crc"
    return "garbage"


def check_reply(rr: Any, device_id: int, function: int, address: int, count: int, rx: bytes | None = None) -> list[int]:
    """The registers of a reply pymodbus' RTU framer let through (CRC good, our device id), or FrameError(kind).

    Pure, and fuzzed (tests/drivers/test_fuzz_modbus.py): the framer decodes whatever function code a frame
    carries, so a CRC-good reply to another request (function 3 when we asked 4) must be refused here, as must an
    exception reply and a reply with another number of registers than we asked for. The framer also takes a frame
    whose byte count is odd (5 bytes for 2 registers: it ignores the last one), so when the bytes that arrived are
    known (`rx`), the well-formed frame with exactly these registers must be among them.
    """
    if rr.isError():
        code = getattr(rr, "exception_code", "?")
        raise FrameError("exception", f"device {device_id} register {address:#06x}: exception code {code}")
    got = getattr(rr, "function_code", None)
    if got != function:
        raise FrameError("wrong_function", f"device {device_id}: asked with function {function}, reply has {got}")
    regs = list(rr.registers)
    if len(regs) != count:
        raise FrameError("wrong_length", f"device {device_id}: asked {count} registers, got {len(regs)}")
    if rx is not None and rtu_frame(device_id, function, regs) not in rx:
        raise FrameError("wrong_length", f"device {device_id}: the reply's byte count is not {2 * count}")
    return regs


def rtu_frame(device_id: int, function: int, regs: list[int]) -> bytes:
    """The well-formed RTU reply carrying `regs`: id, function, byte count, the registers, CRC."""
    from pymodbus.framer import FramerRTU

    body = bytes([device_id, function, 2 * len(regs)]) + b"".join(r.to_bytes(2, "big") for r in regs)
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


def guard_framer(framer: Any) -> None:
    """Keep pymodbus' RTU framer from raising out of the transport's `data_received`.

    For a CRC-good frame from our device that it cannot decode (function 20 with a short body, function 0x80...)
    the framer raises `ModbusIOException` inside asyncio's reader callback: asyncio logs a traceback for every such
    frame and the bytes stay in the buffer. Found by fuzzing (tests/drivers/test_fuzz_modbus.py). Guarded, the bytes
    are dropped; the request gets no reply, and the bus classifies and counts it from the bytes that came.
    """
    from pymodbus.exceptions import ModbusException

    handle = framer.handleFrame

    def guarded(data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, Any]:
        try:
            return handle(data, exp_devid, exp_tid)  # type: ignore[no-any-return]
        except ModbusException as e:
            log.debug("undecodable frame dropped (%s): %s", e, data.hex())
            return len(data), None

    framer.handleFrame = guarded


def write_now(transport: Any) -> None:
    """Let pymodbus' serial transport write a request at once, when nothing is queued before it.

    pymodbus' `SerialTransport.write` queues the bytes and registers the port with the event loop for writing; the
    next loop iteration writes them (through pyserial) and unregisters the port: two epoll changes, a loop wakeup
    and a callback per request, and the requests are most of the daemon's CPU per meter (docs/performance.md). A
    request is 8 bytes and the port is non-blocking, so the write almost always completes at once. Whatever does
    not (a full output buffer: the rest; an error such as an unplugged adapter: all of it) goes the transport's own
    way, which retries, or closes the transport and reports the error as before. The transport's data are the same
    bytes in the same order: the direct write is taken only when its queue is empty.
    """
    queued = transport.write
    fd = transport.sync_serial.fileno()

    def write(data: bytes) -> None:
        if transport.intern_write_buffer or getattr(transport, "poll_task", None) or transport.sync_serial is None:
            queued(data)
            return
        try:
            n = os.write(fd, data)
        except OSError:
            n = 0
        if n < len(data):
            queued(data[n:])

    transport.write = write


def read_now(transport: Any) -> None:
    """Let pymodbus' serial transport read what arrived with one `os.read`, not through pyserial's `read`, which
    asks `select` first and builds a timeout object for a non-blocking port: a syscall and some Python per reply.
    The outcomes are pyserial's: the bytes go to the protocol; nothing to read (EAGAIN) is nothing; a port that says
    it is readable but gives no bytes (an unplugged adapter), or any other error, closes the transport with the
    same `SerialException` pyserial raises, so the bus sees the port go away as before."""
    from serial import SerialException

    loop = transport.async_loop
    fd = transport.sync_serial.fileno()

    def read_ready() -> None:
        try:
            data = os.read(fd, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            transport.close(exc=SerialException(f"read failed: {e}"))
            return
        if not data:
            transport.close(exc=SerialException("device reports readiness to read but returned no data (device "
                                                "disconnected or multiple access on port?)"))
            return
        transport.intern_protocol.data_received(data)

    loop.add_reader(fd, read_ready)  # replaces the transport's own reader of this fd


class ModbusBus:
    """The single owner of one serial port. Use `acquire_bus` to share it between sources."""

    def __init__(
        self,
        settings: SerialSettings,
        *,
        timeout_s: float = 0.5,
        turnaround_s: float = 0.02,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.turnaround_s = turnaround_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.generation = 0  # successful reopens after the first open
        self.opened_once = False
        self.requests = 0
        self.open_attempts = 0  # tries to open the port, the first included
        self.failures: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()
        self._client: Any = None
        self._rx = b""
        self._busy = False
        self._noise = 0
        self._backoff_s = 0.0
        self._next_open_at = 0.0
        self._was_missing = False  # the port's path was not there at the last failed open
        self.last_open_error = ""

    # -- port life ------------------------------------------------------------------------------------------------
    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            return data
        if not self._busy:
            self._noise += 1  # bytes nobody asked for: noise, or a reply that came too late
        elif len(data) >= len(self._rx):
            self._rx = bytes(data)  # the framer's accumulated receive buffer for this attempt
        return data

    def take_noise(self) -> int:
        """How many times bytes arrived while no request was waiting, since the last call."""
        n, self._noise = self._noise, 0
        return n

    def _make_client(self) -> Any:
        from pymodbus.client import AsyncModbusSerialClient
        from pymodbus.framer import FramerType

        _quiet_pymodbus()
        s = self.settings
        client = AsyncModbusSerialClient(
            s.port,
            framer=FramerType.RTU,
            baudrate=s.baud,
            bytesize=s.bytesize,
            parity=s.parity,
            stopbits=s.stopbits,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,  # we reopen ourselves, with jitter, and count it
            name=f"koto:{s.port}",
            trace_packet=self._trace_packet,
        )
        guard_framer(client.ctx.framer)
        return client

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def _ensure_open(self) -> None:
        if self.connected:
            return
        now = time.monotonic()
        if now < self._next_open_at:
            if not (self._was_missing and not missing(self.settings.port)):
                raise PortUnavailable(f"{self.settings.port}: not open ({self.last_open_error}); retrying shortly")
            self._backoff_s = 0.0  # plugged back in (drivers/port_watch.py): open now, and from the start if it fails
        if self._client is not None:
            self._client.close()  # a fresh client per open: no state left over from the lost transport
        self._client = self._make_client()
        self.open_attempts += 1
        ok = await self._client.connect()
        if not ok or not self._client.connected:
            self._backoff_s = min(self.backoff_max_s, max(self.backoff_initial_s, self._backoff_s * 2))
            delay = self._backoff_s * self._rng.uniform(0.5, 1.0)
            self._next_open_at = time.monotonic() + delay
            self._was_missing = missing(self.settings.port)
            self.last_open_error = why_not_open(self.settings.port) or "cannot open the port (unplugged or missing?)"
            raise PortUnavailable(f"{self.settings.port}: {self.last_open_error}")
        transport = getattr(self._client.ctx, "transport", None)
        if transport is not None and hasattr(transport, "intern_write_buffer"):  # pymodbus' SerialTransport
            write_now(transport)
            if not getattr(transport, "poll_task", None):  # its reader is registered with the loop (not Windows)
                read_now(transport)
        self._backoff_s = 0.0
        self.last_open_error = ""
        if self.opened_once:
            self.generation += 1
            log.info("%s: serial port open again", self.settings.port)
        elif (elsewhere := not_the_pins(self.settings.port)) is not None:
            log.warning("%s; %s", *elsewhere)  # it opens, and the meter on GPIO 14/15 will never answer through it
        self.opened_once = True

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- requests -------------------------------------------------------------------------------------------------
    async def read_registers(self, device_id: int, function: int, address: int, count: int) -> list[int]:
        """One attempt to read `count` registers; raises FrameError(kind) or PortUnavailable. No retry here."""
        from pymodbus.exceptions import ModbusException

        async with self._lock:
            await self._ensure_open()
            self.requests += 1
            self._rx = b""
            self._busy = True
            client = self._client
            try:
                if function == FC_READ_INPUT:
                    rr = await client.read_input_registers(address, count=count, device_id=device_id)
                elif function == FC_READ_HOLDING:
                    rr = await client.read_holding_registers(address, count=count, device_id=device_id)
                else:  # pragma: no cover - maps are validated
                    raise ValueError(f"unsupported function code {function}")
            except ModbusException as e:
                self._busy = False
                if not self.connected:
                    kind = "port"
                    self._next_open_at = 0.0
                else:
                    kind = classify_failure(self._rx, device_id, function, 5 + 2 * count)
                self.failures[kind] += 1
                # RTU replies carry no transaction id: a reply that comes late would be taken for the answer to the
                # next request (and a retry asks the same registers, so nothing would tell them apart). After no
                # reply or a partial one, keep the bus quiet as long again as we waited; whatever arrives meanwhile
                # is dropped (counted as line noise) before the next request is sent.
                quiet = self.turnaround_s if kind in ("crc", "port") else max(self.turnaround_s, self.timeout_s)
                await asyncio.sleep(quiet)
                log.debug("%s: device %d register %#06x: %s", self.settings.port, device_id, address, e)
                raise FrameError(kind, f"device {device_id}, register {address:#06x}") from None
            finally:
                self._busy = False
            try:
                return check_reply(rr, device_id, function, address, count, rx=self._rx)
            except FrameError as e:
                self.failures[e.kind] += 1
                raise


# -- sharing: one bus per port per event loop ---------------------------------------------------------------------
_BUSES: dict[tuple[int, str], tuple[ModbusBus, int]] = {}


def acquire_bus(settings: SerialSettings, **options: Any) -> ModbusBus:
    """The bus for `settings.port` in this event loop, created on first use; release it with `release_bus`."""
    key = (id(asyncio.get_running_loop()), settings.port)
    found = _BUSES.get(key)
    if found is not None:
        bus, refs = found
        if bus.settings.line() != settings.line():
            raise BusSettingsConflict(
                f"{settings.port} is already used at {bus.settings.line()} (baud, parity, bytesize, stopbits); "
                f"every meter on one bus must use the same line settings, not {settings.line()}"
            )
        _BUSES[key] = (bus, refs + 1)
        return bus
    bus = ModbusBus(settings, **options)
    _BUSES[key] = (bus, 1)
    return bus


async def release_bus(bus: ModbusBus) -> None:
    for key, (b, refs) in list(_BUSES.items()):
        if b is bus:
            if refs <= 1:
                del _BUSES[key]
                await bus.close()
            else:
                _BUSES[key] = (b, refs - 1)
            return
    await bus.close()
