"""Fuzzing Modbus replies as our decoding sees them: bytes on the wire -> pymodbus' RTU framer -> `check_reply`
-> `decode_block` -> integers in milli-units, or a counted error.

Outside bytes enter the gateway at the serial port; pymodbus' `FramerRTU` (CRC, framing) turns them into a PDU,
which `drivers.serialbus.check_reply` and `drivers.modbus.decode_block` judge. `receive` below feeds the framer
exactly as pymodbus' transport does (a growing receive buffer, cut by what the framer used, dropped past its size
limit). The properties:
- from any bytes, split anywhere, nothing escapes but our `FrameError` (kinds the source has words for) and
  pymodbus' own `ModbusException` (which its client turns into a failed attempt, classified by `classify_failure`);
- registers are accepted only when a CRC-good frame from our device, for our function, with exactly the byte count
  asked for, is in the stream, and they are that frame's registers;
- a register value is accepted only inside the map's range, never negative for energy, never beyond 2**53-1, and
  it is exactly the value the words encode (float32 taken at its exact binary value, rounded once, half to even);
- register maps (drivers/registers/*.toml and custom ones) fail only with `DriverConfigError` naming the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from drivers.errors import DriverConfigError, FrameError
from drivers.modbus import _PLAIN, MODELS, TYPES, RegisterMap, decode_block, model_map, parse_map
from drivers.modbus_sim import PtyWire
from drivers.serialbus import (
    FC_READ_HOLDING,
    FC_READ_INPUT,
    ModbusBus,
    SerialSettings,
    check_reply,
    classify_failure,
    guard_framer,
    rtu_frame,
)
from koto.canonical import MAX_SAFE_INT
from koto.reading import UNITS, Quantity
from tests.support.fuzzing import fuzz_settings

MAPS = {m: model_map(m) for m in MODELS}
BLOCKS = [(m, b) for m, rmap in MAPS.items() for b in rmap.blocks()]

# Register words, with the float32 halves that matter (NaN, +-inf, -0, subnormals, the largest finite) over-weighted.
word = st.integers(0, 0xFFFF) | st.sampled_from([0x7F80, 0xFF80, 0x7FC0, 0x7F7F, 0xFFFF, 0x8000, 0x0000, 0x0001])


def expected_value(typ: str, regs: list[int], word_order: str) -> Fraction:
    """What the words encode, computed independently of pymodbus (struct on big-endian bytes)."""
    words = regs if word_order == "big" else list(reversed(regs))
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    fmt = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "float32": ">f"}[typ]
    (v,) = struct.unpack(fmt, raw)
    return Fraction(v)


def check_decoded(rmap: RegisterMap, block: Any, regs: list[int]) -> None:
    for spec, val in decode_block(rmap, block, regs):
        off = spec.address - block.address
        words = regs[off:off + spec.count]
        if isinstance(val, FrameError):
            assert val.kind in _PLAIN
            continue
        assert type(val) is int and abs(val) <= MAX_SAFE_INT
        exact = expected_value(spec.type, words, rmap.word_order) * Fraction(spec.scale)
        assert val == round(exact * UNITS[spec.quantity][spec.unit])
        assert spec.min is None or exact >= Fraction(spec.min)
        assert spec.max is None or exact <= Fraction(spec.max)
        if spec.quantity is Quantity.ENERGY_MWH:
            assert exact >= 0


@fuzz_settings(500)
@given(data=st.data(), which=st.sampled_from(range(len(BLOCKS))))
def test_register_words_decode_exactly_or_are_refused_by_kind(data: st.DataObject, which: int) -> None:
    model, block = BLOCKS[which]
    regs = data.draw(st.lists(word, min_size=block.count, max_size=block.count))
    check_decoded(MAPS[model], block, regs)


# -- custom register maps ----------------------------------------------------------------------------------------
scalar = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
          | st.sampled_from(["0.1", "1e30", "-5", "NaN", "inf", "1e-30", "0", "1e999999"]))


@st.composite
def register_tables(draw: st.DrawFn) -> dict[str, Any]:
    """A [[register]] table: mostly plausible, every field sometimes replaced by junk of another type."""
    q = draw(st.sampled_from([q.value for q in UNITS]))
    table: dict[str, Any] = {
        "key": draw(st.text(min_size=1, max_size=6)),
        "address": draw(st.integers(0, 0x1_0000)),
        "type": draw(st.sampled_from(sorted(TYPES))),
        "quantity": q,
        "unit": draw(st.sampled_from(sorted(UNITS[Quantity(q)]))),
    }
    for opt in ("scale", "min", "max", "signal"):
        if draw(st.booleans()):
            table[opt] = draw(scalar)
    for k in list(table):
        if draw(st.integers(0, 9)) == 0:
            table[k] = draw(scalar)
    if draw(st.integers(0, 19)) == 0:
        table[draw(st.text(max_size=5))] = draw(scalar)
    return table


@st.composite
def register_maps(draw: st.DrawFn) -> dict[str, Any]:
    meter: dict[str, Any] = {"function": draw(st.sampled_from(["input", "holding"]) | scalar),
                             "word_order": draw(st.sampled_from(["big", "little"]) | scalar)}
    for opt in ("max_gap", "max_count"):
        if draw(st.booleans()):
            meter[opt] = draw(st.integers(-2, 130) | scalar)
    doc: dict[str, Any] = {"meter": meter if draw(st.integers(0, 19)) else draw(scalar),
                           "register": draw(st.lists(register_tables(), max_size=6) | scalar)}
    if draw(st.booleans()):
        doc["serial"] = draw(st.dictionaries(st.text(max_size=5), scalar, max_size=3) | scalar)
    return doc


@fuzz_settings(500)
@given(doc=register_maps(), data=st.data())
def test_a_custom_register_map_is_a_named_error_or_decodes_safely(doc: dict[str, Any], data: st.DataObject) -> None:
    try:
        rmap = parse_map(doc, file="fuzz.toml", source="m")
    except DriverConfigError as e:
        assert e.file == "fuzz.toml" and e.key and e.problem
        return
    for block in rmap.blocks():
        assert block.count <= max(rmap.max_count, max(s.count for s in block.specs))
        regs = data.draw(st.lists(word, min_size=block.count, max_size=block.count))
        check_decoded(rmap, block, regs)


# -- bytes on the wire through pymodbus' RTU framer -------------------------------------------------------------
def crc(frame: bytes) -> bytes:
    return FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def receive(chunks: list[bytes], device_id: int) -> Any:
    """The first PDU pymodbus' client would hand back for a request to `device_id`, fed as its transport does,
    through the framer as `ModbusBus` guards it (no exception may escape into asyncio's reader callback)."""
    framer = FramerRTU(DecodePDU(is_server=False))
    guard_framer(framer)
    buf = b""
    for chunk in chunks:
        buf += chunk
        if len(buf) > FramerRTU.MAX_SIZE:  # pymodbus' transport drops an over-full receive buffer
            buf = b""
            continue
        used, pdu = framer.handleFrame(buf, device_id, 0)
        buf = buf[used:]
        if pdu is not None:
            return pdu
    return None


TWO_REGISTER_BLOCK = next(i for i, (m, b) in enumerate(BLOCKS) if b.count == 2 and MAPS[m].function == FC_READ_INPUT)


@st.composite
def replies(draw: st.DrawFn, device_id: int, function: int, count: int) -> bytes:
    """A reply as a line could carry it: noise, maybe a frame (good, or with one thing wrong), noise."""
    regs = draw(st.lists(word, min_size=count, max_size=count))
    body = bytes([device_id, function, 2 * count]) + b"".join(r.to_bytes(2, "big") for r in regs)
    kind = draw(st.sampled_from(["good", "other_device", "other_function", "exception", "byte_count", "flip",
                                 "short", "none"]))
    if kind == "other_device":
        body = bytes([draw(st.integers(0, 255))]) + body[1:]
    elif kind == "other_function":
        body = body[:1] + bytes([draw(st.integers(1, 127))]) + body[2:]
    elif kind == "exception":
        body = bytes([device_id, function | 0x80, draw(st.integers(0, 255))])
    elif kind == "byte_count":
        body = body[:2] + bytes([draw(st.integers(0, 255))]) + body[3:]
    frame = body + crc(body)
    if kind == "flip" and frame:
        i = draw(st.integers(0, len(frame) - 1))
        frame = frame[:i] + bytes([frame[i] ^ (1 << draw(st.integers(0, 7)))]) + frame[i + 1:]
    elif kind == "short":
        frame = frame[:draw(st.integers(0, len(frame) - 1))]
    elif kind == "none":
        frame = b""
    return draw(st.binary(max_size=12)) + frame + draw(st.binary(max_size=12))


def good_frames(data: bytes, device_id: int, function: int, count: int) -> list[list[int]]:
    """The register lists of every CRC-good, well-formed reply to our request anywhere in `data`."""
    n = 5 + 2 * count
    out = []
    for i in range(len(data) - n + 1):
        f = data[i:i + n]
        if f[0] == device_id and f[1] == function and f[2] == 2 * count and crc(f[:-2]) == f[-2:]:
            out.append([int.from_bytes(f[3 + 2 * k:5 + 2 * k], "big") for k in range(count)])
    return out


@fuzz_settings(500)
@given(data=st.data(), which=st.sampled_from(range(len(BLOCKS))), device_id=st.integers(1, 247),
       cuts=st.lists(st.integers(0, 600), max_size=6), raw=st.booleans())
@example(data=None, which=0, device_id=1, cuts=[], raw=False).via("a CRC-good function 3 reply to a function 4 "
                                                                   "request was accepted before check_reply")
@example(data=bytes.fromhex("011403c7a3bbb8f3"), which=0, device_id=1, cuts=[], raw=False).via(
    "a CRC-good function 20 frame pymodbus cannot decode: ModbusIOException escaped into asyncio's reader callback")
@example(data=bytes([1, 4, 5]) + bytes(5) + crc(bytes([1, 4, 5]) + bytes(5)), which=TWO_REGISTER_BLOCK, device_id=1,
         cuts=[], raw=False).via("an odd byte count (5 for 2 registers): pymodbus ignores the last byte; refused")
def test_bytes_on_the_wire_become_registers_only_from_a_good_frame(data: Any, which: int, device_id: int,
                                                                   cuts: list[int], raw: bool) -> None:
    model, block = BLOCKS[which]
    rmap = MAPS[model]
    function = rmap.function
    if data is None:  # the explicit example: the right registers, but under the other read function
        other = FC_READ_HOLDING if function == FC_READ_INPUT else FC_READ_INPUT
        body = bytes([device_id, other, 2 * block.count]) + bytes(2 * block.count)
        wire = body + crc(body)
    elif isinstance(data, bytes):  # an explicit example given as the bytes on the wire
        wire = data
    elif raw:
        wire = data.draw(st.binary(max_size=300))
    else:
        wire = data.draw(replies(device_id, function, block.count))
    points = sorted({c % (len(wire) + 1) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    pdu = receive(chunks, device_id)  # must not raise: in the client it would be a traceback per frame
    if pdu is None:  # no reply: the attempt fails and is classified from the bytes that came
        assert classify_failure(wire, device_id, function, 5 + 2 * block.count) in _PLAIN
        return
    try:
        regs = check_reply(pdu, device_id, function, block.address, block.count, rx=wire)
    except FrameError as e:
        assert e.kind in _PLAIN
        return
    assert regs in good_frames(wire, device_id, function, block.count)
    check_decoded(rmap, block, regs)


async def test_an_undecodable_frame_on_a_real_bus_is_counted_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """The fuzzer's find, end to end: pymodbus' client on a pty, a device answering first with a CRC-good frame
    pymodbus cannot decode, then properly. The first attempt fails by kind, the second reads, and nothing is logged
    at error level (unguarded, asyncio logged "Exception in callback" with a traceback for the frame)."""
    wire = PtyWire()
    wire.start()
    fd = os.open(wire.server_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    replies = [bytes.fromhex("011403c7a3bbb8f3"), rtu_frame(1, FC_READ_INPUT, [0x4366, 0x1999])]

    def answer() -> None:
        with contextlib.suppress(BlockingIOError):
            if os.read(fd, 256) and replies:
                os.write(fd, replies.pop(0))

    loop = asyncio.get_running_loop()
    loop.add_reader(fd, answer)
    bus = ModbusBus(SerialSettings(wire.port), timeout_s=0.3, turnaround_s=0.01)
    try:
        with caplog.at_level(logging.ERROR):
            with pytest.raises(FrameError) as first:
                await bus.read_registers(1, FC_READ_INPUT, 0, 2)
            regs = await bus.read_registers(1, FC_READ_INPUT, 0, 2)
    finally:
        await bus.close()
        loop.remove_reader(fd)
        os.close(fd)
        wire.close()
    assert first.value.kind == "garbage" and bus.failures == {"garbage": 1}
    assert regs == [0x4366, 0x1999]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
