"""Line protocol: JSON lines and key:value lines from an appliance's microcontroller."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest

from drivers.base import build_source
from drivers.errors import DriverConfigError, FrameError
from drivers.lineproto import LineParser, LineSource, parse_keys
from drivers.modbus_sim import PtyWire
from koto.clock import ManualClock
from koto.reading import Quantity, Reading
from tests.support.cloudpeer import until


def parse(line: bytes, parser: LineParser | None = None) -> dict[tuple[Quantity, str], int | str]:
    got = (parser or LineParser()).parse(line)
    return {(s.quantity, s.signal): v for s, v in got.values}


def test_json_line_becomes_power_energy_and_state() -> None:
    assert parse(b'{"power_w": 12.5, "energy_kwh": 1.234, "state": "spin"}') == {
        (Quantity.POWER_MW, ""): 12_500,
        (Quantity.ENERGY_MWH, ""): 1_234_000,
        (Quantity.SIGNAL, "state"): "spin",
    }


@pytest.mark.parametrize("line", [b"P:12.5,E:1.234", b"P=12.5 E=1.234\r", b"P:12.5;E:1.234", b"P:12.5\tE:1.234"])
def test_key_value_lines_as_sketches_print_them(line: bytes) -> None:
    assert parse(line.rstrip(b"\r")) == {(Quantity.POWER_MW, ""): 12_500, (Quantity.ENERGY_MWH, ""): 1_234_000}


def test_configured_keys_with_scale_unit_and_signal() -> None:
    keys = parse_keys({"pw": {"quantity": "power_mw", "unit": "W", "scale": "0.1"},
                       "l2": {"quantity": "power_mw", "unit": "kW", "signal": "L2"},
                       "heater": {"quantity": "signal"}})
    p = LineParser(keys)
    assert parse(b'{"pw": 125, "l2": 1.5, "heater": true}', p) == {
        (Quantity.POWER_MW, ""): 12_500, (Quantity.POWER_MW, "L2"): 1_500_000, (Quantity.SIGNAL, "heater"): "on"}


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"hello world", "garbage"),
        (b'{"power_w": 12.5', "garbage"),
        (b"[1, 2]", "garbage"),
        (b"\xff\xfe\x00P", "not_text"),
        (b"P:1\x07", "not_text"),
        (b"P:" + b"9" * 2000, "too_long"),
    ],
)
def test_bad_lines_are_refused_with_their_kind(line: bytes, kind: str) -> None:
    with pytest.raises(FrameError) as e:
        LineParser().parse(line)
    assert e.value.kind == kind


@pytest.mark.parametrize(
    ("line", "kind"),
    [(b'{"power_w": NaN}', "not_finite"), (b"P:inf", "not_finite"), (b"P:abc", "bad_value"),
     (b'{"power_w": [1]}', "bad_value"), (b"E:-0.5", "negative_energy"), (b'{"energy_kwh": -1}', "negative_energy")],
)
def test_bad_values_are_rejected_and_never_become_values(line: bytes, kind: str) -> None:
    got = LineParser().parse(line)
    assert got.values == [] and [e.kind for e in got.rejected] == [kind]


def test_unknown_keys_are_reported_and_known_ones_kept() -> None:
    got = LineParser().parse(b"P:5,T:21.5")
    assert got.unknown == ["T"] and [(s.quantity, v) for s, v in got.values] == [(Quantity.POWER_MW, 5_000)]


@pytest.mark.parametrize(
    ("cfg", "key"),
    [({}, "port"), ({"port": "/dev/x", "format": "csv"}, "format"), ({"port": "/dev/x", "baud": "fast"}, "baud"),
     ({"port": "/dev/x", "keys": {"P": {"quantity": "watts"}}}, "keys.P.quantity"),
     ({"port": "/dev/x", "keys": {"P": {"quantity": "power_mw", "unit": "kWh"}}}, "keys.P.unit"),
     ({"port": "/dev/x", "keys": {"P": {"quantity": "power_mw", "scale": 0}}}, "keys.P.scale")],
)
def test_config_errors_name_the_key(cfg: dict[str, object], key: str) -> None:
    with pytest.raises(DriverConfigError) as e:
        build_source("coffee", {"driver": "line", **cfg}, clock=ManualClock(), file="koto.toml")
    assert e.value.key == key and "koto.toml" in str(e.value)


@pytest.fixture
async def wire() -> AsyncIterator[PtyWire]:
    w = PtyWire()
    w.start()
    yield w
    w.close()


async def take(src: LineSource, n: int) -> list[Reading]:
    out: list[Reading] = []
    async with asyncio.timeout(5):
        async for r in src:
            out.append(r)
            if len(out) == n:
                break
    return out


async def test_lines_over_a_pty_with_garbage_in_between(wire: PtyWire) -> None:
    src = build_source("coffee", {"driver": "line", "port": wire.port, "baud": 115200}, clock=ManualClock())
    assert isinstance(src, LineSource)
    fd = os.open(wire.server_path, os.O_RDWR | os.O_NOCTTY)
    try:
        async with src:
            async def feed() -> None:
                await asyncio.sleep(0.1)
                os.write(fd, b"ower_w\": 99}\n")  # we joined mid-line: dropped
                os.write(fd, b'{"power_w": 12.5, "state": "heat"}\n\xff\xfe garbage\nP:nan\n')
                os.write(fd, b"@@@@\nP:13.0,E:0.5,X:1\n")

            feeder = asyncio.create_task(feed())
            got = await take(src, 4)
            await feeder
    finally:
        os.close(fd)
    assert [(r.quantity, r.value) for r in got] == [
        (Quantity.POWER_MW, 12_500), (Quantity.SIGNAL, "heat"), (Quantity.POWER_MW, 13_000),
        (Quantity.ENERGY_MWH, 500_000)]
    assert src.health.errors == {"not_text": 1, "not_finite": 1, "garbage": 1, "unknown_key": 1}


async def feed_forever(wire: PtyWire) -> None:
    """The device's side: a line every 10 ms while the adapter is plugged in."""
    while True:
        if wire.plugged:
            fd = os.open(wire.server_path, os.O_RDWR | os.O_NOCTTY)
            os.write(fd, b"P:1\n")
            os.close(fd)
        await asyncio.sleep(0.01)


async def test_port_unplugged_and_back_is_survived_and_counted(wire: PtyWire) -> None:
    src = LineSource("coffee", clock=ManualClock(), port=wire.port, backoff_initial_s=0.01, backoff_max_s=0.05)

    feeder = asyncio.create_task(feed_forever(wire))
    try:
        async with src:
            await take(src, 2)
            wire.unplug()
            await asyncio.sleep(0.1)
            wire.plug()
            await take(src, 2)
    finally:
        feeder.cancel()
    assert src.health.reconnects == 1 and src.health.errors["port"] >= 1


async def test_a_port_plugged_back_is_read_again_without_waiting_out_the_backoff(wire: PtyWire) -> None:
    """An installer pulls the adapter and plugs it back: its path is there again, and the source reopens it within
    a look (drivers/port_watch.py), not after a backoff that here would be a minute (the default caps it at 30 s)."""
    src = LineSource("coffee", clock=ManualClock(), port=wire.port, backoff_initial_s=60.0, backoff_max_s=60.0)
    got: list[Reading] = []

    async def read_forever() -> None:  # as the daemon does: the source is read all along, unplugged or not
        async for r in src:
            got.append(r)

    feeder = asyncio.create_task(feed_forever(wire))
    try:
        async with src:
            reader = asyncio.create_task(read_forever())
            await until(lambda: len(got) >= 2)
            wire.unplug()
            await until(lambda: src.health.state == "reconnecting")
            await asyncio.sleep(0.3)
            wire.plug()
            before = len(got)
            await until(lambda: len(got) >= before + 2, 20)  # a minute's backoff would fail this
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    finally:
        feeder.cancel()
    assert src.health.reconnects == 1
