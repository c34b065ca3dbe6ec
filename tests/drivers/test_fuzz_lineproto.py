"""Fuzzing the line protocol: serial bytes as they arrive, split anywhere, into lines, values and counted errors.

Outside bytes enter at `LineSplitter.feed` (whatever the port's `read` returned) and `LineParser.parse` (one line).
The properties:
- nothing but `FrameError` (with a kind the source has words for) ever leaves the parser;
- what is accepted is valid: billable values are integers of at most 2**53-1 (what a record carries), energy is never
  negative, a signal is a short string; and a number is exactly `to_milli` of the text that was sent;
- how the bytes were split into chunks changes nothing: the same lines, so the same readings and the same counts;
- the source, fed fuzzed bytes through its real splitter and parser, never stops, emits only what parsed and counts
  every rejected line, unknown key and bad value.

Regression byte literals at the bottom are what fuzzing found (and what was fixed in drivers/lineproto.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from drivers.errors import FrameError
from drivers.lineproto import _PLAIN, DEFAULT_KEYS, MAX_LINE, UNITS, LineParser, LineSource, LineSplitter
from drivers.modbus_sim import PtyWire
from koto.canonical import MAX_SAFE_INT
from koto.clock import ManualClock
from koto.reading import BILLABLE, Quantity, Reading, to_milli
from tests.support.fuzzing import fuzz_settings

KEYS = sorted(DEFAULT_KEYS)

# Text a sketch could print as a number, good and bad: decimals, exponents, signs, NaN/inf spellings, junk.
number_text = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.floats().map(repr),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.sampled_from(["1e30", "-1e30", "1e999999999", "1e-999999999", "-0", "+5", "0x10", "1_000", ".5", "5.",
                     "Infinity", "-inf", "NaN", "sNaN", "1e", "", " ", "٣"]),
    st.text(max_size=12),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def kv_lines(draw: st.DrawFn) -> bytes:
    """key:value lines, mostly well formed, with known and unknown keys and every separator sketches use."""
    pairs = draw(st.lists(st.tuples(st.sampled_from([*KEYS, "T", "x", ""]) | st.text(max_size=6),
                                    st.sampled_from([":", "="]), number_text), max_size=6))
    seps = draw(st.lists(st.sampled_from([",", ";", " ", "\t", ", "]), min_size=len(pairs), max_size=len(pairs)))
    return "".join(k + s + v + sep for (k, s, v), sep in zip(pairs, seps, strict=True)).encode("utf-8", "replace")


@st.composite
def json_lines(draw: st.DrawFn) -> bytes:
    obj = draw(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6),
                               json_value | number_text | st.floats(), max_size=6))
    return json.dumps(obj, allow_nan=True).encode()


lines = st.one_of(kv_lines(), json_lines(), st.binary(max_size=MAX_LINE + 40),
                  st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))


def check_value(q: Quantity, value: int | str) -> None:
    """What an accepted value must look like."""
    if q is Quantity.SIGNAL:
        assert isinstance(value, str) and len(value) <= 64
        return
    assert type(value) is int and abs(value) <= MAX_SAFE_INT
    if q in (Quantity.ENERGY_MWH, Quantity.PULSES):
        assert value >= 0


@fuzz_settings(600)
@given(line=lines)
@example(line=b"P:1e30")  # decimal.InvalidOperation escaped the parser (to_milli's quantize beyond 28 digits)
@example(line=b"P:1e999999999")  # decimal.Overflow escaped
@example(line=b'{"P": 1e300}')
@example(line=b'{"a":' + b"[" * 1000)  # RecursionError escaped json.loads
@example(line=b"E:9007199254741")  # above 2**53-1 mWh: never a reading
def test_the_parser_raises_only_frame_errors_and_accepts_only_valid_values(line: bytes) -> None:
    try:
        got = LineParser().parse(line)
    except FrameError as e:
        assert e.kind in _PLAIN
        return
    for spec, value in got.values:
        check_value(spec.quantity, value)
    for rej in got.rejected:
        assert rej.kind in _PLAIN


@fuzz_settings(600)
@given(key=st.sampled_from([k for k in KEYS if DEFAULT_KEYS[k].quantity is not Quantity.SIGNAL]), text=number_text,
       kv=st.booleans())
@example(key="E", text="0,", kv=True)
def test_an_accepted_number_is_exactly_what_was_sent(key: str, text: str, kv: bool) -> None:
    """The value is `to_milli` of the decimal text, in the key's unit: never rounded twice, never a float."""
    # In a key:value line a comma ends the pair ("E:0,P:5" is two readings, "E:0," one): the text sent as this key's
    # number is then only what comes before it (make fuzz, 2026-12-06: "E:0," read as 0 while the check took "0,")
    sent = text.split(",", 1)[0] if kv else text
    line = f"{key}:{text}" if kv else json.dumps({key: text})
    try:
        got = LineParser().parse(line.encode("utf-8", "surrogatepass"))
    except FrameError:
        return  # e.g. "P:" or "P:1 2": not a key:value line at all
    spec = DEFAULT_KEYS[key]
    if got.values:
        [(s, value)] = got.values
        assert s == spec
        assert value == to_milli(Decimal(sent.strip()), UNITS[spec.quantity][spec.unit])
        check_value(spec.quantity, value)


def outcome(line: bytes) -> object:
    """What the parser makes of a line, comparably: its values, unknown keys and rejected kinds, or its error kind."""
    try:
        got = LineParser().parse(line)
    except FrameError as e:
        return e.kind
    return got.values, got.unknown, [e.kind for e in got.rejected]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


stream = st.lists(lines | st.sampled_from([b"\r", b"\n", b"\r\n", b"", b"P:1\r\r\r"]), max_size=12).map(
    lambda parts: b"\n".join(parts))


@fuzz_settings(400)
@given(data=stream | st.binary(max_size=4 * MAX_LINE),
       cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=20))
@example(data=b"x" * 1500 + b"\nP:1\nP:2\n", cuts=[1100])  # a cut over-long first line dropped the next good one
@example(data=b"\nP:1" + b"\r" * 1100 + b"\nP:2\n", cuts=[1050])  # CRs judged differently whole and cut
@example(data=b"\n" + b"9" * 3000 + b"\nP:2\n", cuts=[1100, 2200])  # one long line counted twice when cut twice
def test_how_the_bytes_were_chunked_changes_nothing(data: bytes, cuts: list[int]) -> None:
    whole = LineSplitter().feed(data)
    splitter = LineSplitter()
    chunked = [line for chunk in split_at(data, cuts) for line in splitter.feed(chunk)]
    assert [outcome(x) for x in chunked] == [outcome(x) for x in whole]
    assert all(len(x) <= MAX_LINE or outcome(x) == "too_long" for x in chunked)
    assert len(splitter._buf) <= MAX_LINE  # bounded, whatever comes


class ChunkedLineSource(LineSource):
    """The real source, its splitter and parser; only the port is replaced by a list of chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__("fuzz", clock=ManualClock(), port="/dev/null")
        self.chunks = chunks

    async def _lines(self) -> AsyncIterator[bytes]:
        splitter = LineSplitter()
        for chunk in self.chunks:
            for line in splitter.feed(chunk):
                yield line


async def drain(src: LineSource) -> list[Reading]:
    return [r async for r in src._stream_readings()]


@fuzz_settings(300)
@given(data=stream, cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=10))
def test_the_source_keeps_going_and_counts_every_bad_line(data: bytes, cuts: list[int]) -> None:
    src = ChunkedLineSource(split_at(data, cuts))
    got = asyncio.run(drain(src))
    parser, readings, errors = LineParser(), 0, 0
    for line in LineSplitter().feed(data):
        try:
            parsed = parser.parse(line)
        except FrameError:
            errors += 1
            continue
        readings += len(parsed.values)
        errors += len(parsed.unknown) + len(parsed.rejected)
    assert len(got) == src.health.readings == readings
    assert sum(src.health.errors.values()) == errors
    assert set(src.health.errors) <= set(_PLAIN)
    for r in got:
        check_value(r.quantity, r.value)
        assert r.quantity in BILLABLE | {Quantity.SIGNAL, Quantity.VOLTAGE_MV, Quantity.CURRENT_MA,
                                         Quantity.FREQUENCY_MHZ}


@pytest.fixture
async def wire() -> AsyncIterator[PtyWire]:
    w = PtyWire()
    w.start()
    yield w
    w.close()


async def test_a_pty_full_of_random_bytes_is_survived_counted_and_good_lines_still_read(wire: PtyWire) -> None:
    """The real path end to end: 64 KiB of seeded random bytes and broken lines through a pty, then a good line."""
    rng = random.Random(15)
    junk = b"".join(rng.choice([rng.randbytes(rng.randrange(1, 3000)), b"P:1e30\n", b'{"a":' + b"[" * 1000 + b"\n",
                                b"P:nan\n", b"\xff\xfe\n", b"E:-1\n", b"T:5\n"]) for _ in range(80))
    src = LineSource("junk", clock=ManualClock(), port=wire.port)
    # Non-blocking: a blocking write into a full pty would stop the event loop that the relay and the source
    # (which drain it) run on, and hang the test past its own timeout.
    fd = os.open(wire.server_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

    async def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view[:997]):]
            except BlockingIOError:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)

    try:
        async with src:
            async def feed() -> None:
                await asyncio.sleep(0.1)
                await write_all(junk)
                await write_all(b"\nP:42.5\n")

            feeder = asyncio.create_task(feed())
            async with asyncio.timeout(20):
                async for r in src:
                    if r.quantity is Quantity.POWER_MW and r.value == 42_500:
                        break
            await feeder
    finally:
        os.close(fd)
    assert sum(src.health.errors.values()) >= 10 and set(src.health.errors) <= set(_PLAIN)
    assert src.health.reconnects == 0
