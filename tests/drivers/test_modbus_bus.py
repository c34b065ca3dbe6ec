"""Modbus meters against a real pymodbus RTU server on a pty pair: decoding, sharing a bus, faults and recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.base import build_source
from drivers.modbus import ModbusMeterSource
from drivers.modbus_sim import ModbusSimulator, SimMeter
from koto.clock import ManualClock
from koto.reading import Quantity, Reading

FAST_BUS = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "turnaround_s": 0.005}
SLOW_BACKOFF_BUS = {**FAST_BUS, "backoff_initial_s": 60.0, "backoff_max_s": 60.0}  # what only a re-plug can beat


def meter(sim: ModbusSimulator, address: int, model: str, *, bus: dict[str, float] = FAST_BUS,
          **extra: Any) -> ModbusMeterSource:
    cfg = {"driver": "modbus", "port": sim.port, "address": address, "model": model, "poll_s": 0.02,
           "timeout_s": 0.15, "retries": 0, "baud": 9600, "diag_every": 1, "energy_every": 1,
           **extra}  # every register, every poll
    src = build_source(f"{model}-{address}", cfg, clock=ManualClock(), bus_options=bus)
    assert isinstance(src, ModbusMeterSource)
    return src


def by_key(src: ModbusMeterSource, readings: list[Reading]) -> dict[str, int | str]:
    keys = {(s.quantity, s.signal): s.key for s in src.map.registers}
    return {keys[(r.quantity, r.signal)]: r.value for r in readings}


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    meters = [
        SimMeter("sdm120", 1, fixed={"voltage": 230.1, "current": 5.25, "power": 1150.5, "frequency": 49.98,
                                     "import_energy": 1234.567, "energy": 1234.567}),
        SimMeter("sdm630", 2, fixed={"voltage_l1": 231.0, "voltage_l2": 229.5, "voltage_l3": 230.25,
                                     "power_l1": 100.5, "power_l2": 200.25, "power_l3": 0.0, "power": 300.75,
                                     "current_l1": 0.5, "current_l2": 1.0, "current_l3": 0.0,
                                     "energy": 98765.43}),
        SimMeter("pzem004t", 3, fixed={"voltage": 230.1, "current": 2.345, "power": 539.6, "energy": 70000,
                                       "frequency": 50.0}),
    ]
    async with ModbusSimulator(meters) as s:
        yield s


async def test_sdm120_decodes_to_milli_units(sim: ModbusSimulator) -> None:
    async with meter(sim, 1, "sdm120") as src:
        got = by_key(src, await src.poll_once())
    assert got == {"voltage": 230_100, "current": 5_250, "power": 1_150_500, "frequency": 49_980,
                   "import_energy": 1_234_567_017, "energy": 1_234_567_017}  # float32 1234.5670166015625 kWh


async def test_sdm630_decodes_each_phase_and_the_totals(sim: ModbusSimulator) -> None:
    async with meter(sim, 2, "sdm630") as src:
        readings = await src.poll_once()
    got = by_key(src, readings)
    assert (got["voltage_l1"], got["voltage_l2"], got["voltage_l3"]) == (231_000, 229_500, 230_250)
    assert (got["power_l1"], got["power_l2"], got["power_l3"], got["power"]) == (100_500, 200_250, 0, 300_750)
    assert got["energy"] == 98_765_429_688  # float32 98765.4296875 kWh, exactly
    phase = {r.signal for r in readings if r.quantity is Quantity.POWER_MW}
    assert phase == {"L1", "L2", "L3", ""}


async def test_pzem004t_decodes_scaled_low_word_first_integers(sim: ModbusSimulator) -> None:
    async with meter(sim, 3, "pzem004t") as src:
        got = by_key(src, await src.poll_once())
    assert got == {"voltage": 230_100, "current": 2_345, "power": 539_600, "energy": 70_000_000,
                   "frequency": 50_000}


async def test_meters_on_one_port_share_one_bus_owner_and_both_deliver(sim: ModbusSimulator) -> None:
    async with meter(sim, 1, "sdm120") as a, meter(sim, 3, "pzem004t") as b:
        assert a.bus is b.bus

        async def take(src: ModbusMeterSource, n: int) -> list[Reading]:
            out: list[Reading] = []
            async for r in src:
                out.append(r)
                if len(out) == n:
                    return out
            return out

        ra, rb = await asyncio.gather(take(a, 18), take(b, 15))
        assert a.bus is not None and a.bus.requests >= 3 * 3 + 3
    assert {r.source for r in ra} == {"sdm120-1"} and {r.source for r in rb} == {"pzem004t-3"}
    assert by_key(a, ra[:6])["power"] == 1_150_500 and by_key(b, rb[:5])["power"] == 539_600
    assert a.health.errors == {} and b.health.errors == {}


async def test_unplugged_adapter_is_counted_and_the_driver_reconnects(sim: ModbusSimulator) -> None:
    async with meter(sim, 1, "sdm120") as src:
        assert len(await src.poll_once()) == 6
        sim.wire.unplug()
        for _ in range(3):
            assert await src.poll_once() == []
            await asyncio.sleep(0.02)
        assert src.health.errors["port"] >= 1 and src.health.state == "reconnecting"
        sim.wire.plug()
        readings: list[Reading] = []
        for _ in range(50):
            readings = await src.poll_once()
            if readings:
                break
            await asyncio.sleep(0.02)
        assert len(readings) == 6
        assert src.health.reconnects == 1 and src.health.state == "ok"


async def test_an_adapter_plugged_back_is_read_at_the_next_poll_not_after_the_backoff(sim: ModbusSimulator) -> None:
    """Pulled out, the port backs off (here a minute; the default caps it at 30 s). Plugged back, its path is there
    again and the next poll opens it (drivers/port_watch.py): the installer waits one poll, not the backoff."""
    async with meter(sim, 1, "sdm120", bus=SLOW_BACKOFF_BUS) as src:
        assert await src.poll_once()
        sim.wire.unplug()
        for _ in range(3):  # the first open fails: the path is gone, and the backoff starts
            assert await src.poll_once() == []
        sim.wire.plug()
        readings = await src.poll_once()
        assert readings and src.health.reconnects == 1 and src.health.state == "ok"


async def test_an_adapter_that_stays_out_is_not_opened_at_every_poll(sim: ModbusSimulator) -> None:
    """Missing for good, the port is tried again only when the backoff allows: a poll in between fails at once."""
    async with meter(sim, 1, "sdm120", bus=SLOW_BACKOFF_BUS) as src:
        assert await src.poll_once()
        sim.wire.unplug()
        assert await src.poll_once() == []
        assert src.bus is not None
        tried = src.bus.open_attempts
        for _ in range(20):
            assert await src.poll_once() == []
        assert src.bus.open_attempts == tried
        assert src.health.state == "reconnecting"


async def test_meter_that_goes_silent_times_out_then_recovers(sim: ModbusSimulator) -> None:
    async with meter(sim, 3, "pzem004t") as src:
        await sim.stop_server()
        assert await src.poll_once() == []
        assert src.health.errors["timeout"] == 1
        await sim.start_server()
        assert len(await src.poll_once()) == 5


@pytest.mark.parametrize(
    ("fault", "kinds"),
    [
        ("flip", {"crc", "garbage", "truncated", "timeout"}),
        ("truncate", {"truncated", "garbage"}),
        ("garbage", {"garbage", "crc", "truncated", "timeout"}),
        ("drop", {"timeout"}),
    ],
)
async def test_corrupted_replies_are_counted_and_never_become_readings(
    sim: ModbusSimulator, fault: str, kinds: set[str]
) -> None:
    sim.corrupt, sim.faults = 1.0, (fault,)
    async with meter(sim, 3, "pzem004t") as src:
        for _ in range(4):
            assert await src.poll_once() == []
        assert sum(src.health.errors.values()) == 4 and set(src.health.errors) <= kinds
        assert src.health.readings == 0
        sim.corrupt = 0.0
        assert len(await src.poll_once()) == 5


async def test_garbage_bytes_on_the_line_do_not_become_readings(sim: ModbusSimulator) -> None:
    truth = {"voltage": 230_100, "current": 5_250, "power": 1_150_500, "frequency": 49_980,
             "import_energy": 1_234_567_017, "energy": 1_234_567_017}
    async with meter(sim, 1, "sdm120", retries=2) as src:
        delivered = 0
        for noise in (b"\x00\xff\x13\x37", b"\x01\x04\x04\x41\x20", bytes(range(40)), b"\x01" * 30):
            sim.wire.inject(noise)
            await asyncio.sleep(0.01)
            got = by_key(src, await src.poll_once())
            assert all(truth[k] == v for k, v in got.items())
            delivered += len(got)
        assert delivered > 0 and src.health.errors["line_noise"] >= 1

async def test_exception_reply_is_counted(sim: ModbusSimulator) -> None:
    beyond = {"register": [{"key": "p", "address": 0x0100, "type": "uint16", "quantity": "power_mw", "unit": "W"}]}
    async with meter(sim, 3, "pzem004t") as ok:
        assert ok.bus is not None
    cfg = {"driver": "modbus", "port": sim.port, "address": 3, "map": beyond, "timeout_s": 0.15}
    src = build_source("odd", cfg, clock=ManualClock(), bus_options=FAST_BUS)
    assert isinstance(src, ModbusMeterSource)
    async with src:
        assert await src.poll_once() == []
    assert src.health.errors["exception"] == 1


async def test_energy_register_going_backwards_is_rejected_until_it_persists(sim: ModbusSimulator) -> None:
    pzem = sim.meter(3)
    async with meter(sim, 3, "pzem004t") as src:
        assert by_key(src, await src.poll_once())["energy"] == 70_000_000
        pzem.fixed["energy"] = 69_000
        assert "energy" not in by_key(src, await src.poll_once())
        assert "energy" not in by_key(src, await src.poll_once())
        assert src.health.errors["energy_backwards"] == 2
        assert by_key(src, await src.poll_once())["energy"] == 69_000_000  # third time: the meter was reset


async def test_different_line_settings_on_one_port_are_refused(sim: ModbusSimulator) -> None:
    from drivers.errors import DriverConfigError

    async with meter(sim, 1, "sdm120", baud=9600):
        with pytest.raises(DriverConfigError) as e:
            async with meter(sim, 3, "pzem004t", baud=19200):
                pass
        assert e.value.key == "baud"


async def test_a_late_reply_is_never_taken_for_the_retrys_answer() -> None:
    ticks = iter(range(1_000_000))
    pzem = SimMeter("pzem004t", 3, time_fn=lambda: float(next(ticks)) * 7.0)  # every reply carries new values
    # late_s 0.2: after the 0.15 s timeout, before the quiet period ends
    async with ModbusSimulator([pzem], late_s=0.2) as sim, meter(sim, 3, "pzem004t", retries=2) as src:
        for _ in range(3):
            sim.fault_next = ["late"]
            got = by_key(src, await src.poll_once())
            assert got["power"] == round(pzem.truth["power"] * 1000)  # the retry's own reply, not the late one
            assert got["energy"] == round(pzem.truth["energy"] * 1000)
        assert src.health.errors["timeout"] == 3 and src.health.errors["line_noise"] >= 1


async def test_between_full_polls_only_the_channels_power_and_energy_are_read(sim: ModbusSimulator) -> None:
    """diag_every = 6 and energy_every = 2 on an SDM120: the first poll reads all six values (three requests), then
    power alone (one request) and power with total energy (two: 0x000C and 0x0156 are too far apart for one) in
    turn, and the seventh all six again."""
    async with meter(sim, 1, "sdm120", diag_every=6, energy_every=2) as src:
        keys, requests = [], []
        for _ in range(7):
            before = sim.replies
            keys.append(sorted(by_key(src, await src.poll_once())))
            requests.append(sim.replies - before)
        assert src.health.errors == {} and src.health.state == "ok"
    everything = ["current", "energy", "frequency", "import_energy", "power", "voltage"]
    both, power = ["energy", "power"], ["power"]
    assert keys == [everything, power, both, power, both, power, everything]
    assert requests == [3, 1, 2, 1, 2, 1, 3]


async def test_by_default_the_energy_register_is_read_every_fifth_poll_and_after_a_failed_read(
        sim: ModbusSimulator) -> None:
    """The defaults: the full map on the first poll and every 10th, the total energy every 5th, the power on every
    poll; a poll whose energy read failed (the meter silent) is followed by one that reads it again."""
    async with meter(sim, 1, "sdm120", diag_every=10, energy_every=5) as src:
        got = [sorted(by_key(src, await src.poll_once())) for _ in range(11)]
        assert [("energy" in k) for k in got] == [True, False, False, False, False, True, False, False, False,
                                                 False, True]
        for _ in range(4):  # the 12th to the 15th
            await src.poll_once()
        await sim.stop_server()  # the meter goes silent for the 16th, an energy poll
        assert "energy" not in by_key(src, await src.poll_once())
        await sim.start_server()
        assert "energy" in by_key(src, await src.poll_once())  # the 17th makes up for it
        assert "energy" not in by_key(src, await src.poll_once())


async def test_a_phase_channel_is_read_every_poll_and_the_totals_between(sim: ModbusSimulator) -> None:
    """The gateway names the appliance's channel (`channel=`, as for an SDM630 phase): that phase's power and energy
    every poll, the totals and the other phases only on the full polls."""
    cfg = {"driver": "modbus", "port": sim.port, "address": 2, "model": "sdm630", "poll_s": 0.02,
           "timeout_s": 0.15, "retries": 0, "baud": 9600, "diag_every": 2, "energy_every": 1}
    src = build_source("sdm630-2", cfg, clock=ManualClock(), bus_options=FAST_BUS, channel="L1")
    assert isinstance(src, ModbusMeterSource)
    async with src:
        first, second = await src.poll_once(), await src.poll_once()
    fast = {(r.quantity, r.signal) for r in second}
    assert fast == {(q, "L1") for q in (Quantity.POWER_MW, Quantity.ENERGY_MWH)
                    if any(s.quantity is q and s.signal == "L1" for s in src.map.registers)}
    assert (Quantity.POWER_MW, "L1") in fast and {(r.quantity, r.signal) for r in first} > fast


def test_diag_every_and_energy_every_are_checked() -> None:
    from drivers.errors import DriverConfigError

    for key, bad in [("diag_every", v) for v in (0, 3601, 2.5, True)] + [("energy_every", v) for v in (0, 61, 1.5)]:
        cfg = {"driver": "modbus", "port": "/dev/null", "model": "sdm120", key: bad}
        with pytest.raises(DriverConfigError, match=key):
            build_source("m", cfg, clock=ManualClock())


async def test_requests_are_written_at_once_without_registering_the_port_for_writing(sim: ModbusSimulator) -> None:
    """drivers/serialbus.py `write_now`: a request goes out in the call that sends it, not one loop iteration later
    through add_writer/remove_writer (two epoll changes and a wakeup per request); the replies are the same."""
    loop = asyncio.get_running_loop()
    registered: list[int] = []
    add_writer = loop.add_writer

    def counting_add_writer(fd: Any, callback: Any, *args: Any) -> None:
        registered.append(fd)
        add_writer(fd, callback, *args)

    async with meter(sim, 1, "sdm120") as src:
        assert len(await src.poll_once()) == 6  # opens the port
        loop.add_writer = counting_add_writer  # type: ignore[method-assign]
        try:
            for _ in range(5):
                got = by_key(src, await src.poll_once())
        finally:
            del loop.add_writer
        assert src.bus is not None and src.bus.requests == 3 * 6  # three blocks a poll (diag_every = 1)
        ours = src.bus._client.ctx.transport.sync_serial.fileno()
    assert got["power"] == 1_150_500 and got["energy"] == 1_234_567_017
    assert ours not in registered  # (the simulator's server on the same loop still replies its own way)


async def test_a_request_the_port_does_not_take_at_once_goes_the_transports_way(sim: ModbusSimulator) -> None:
    """When the direct write fails (here: the port's fd refuses it), the bytes are queued in pymodbus' transport,
    which writes them when the port is writable: the request is still answered."""
    import os

    async with meter(sim, 1, "sdm120") as src:
        assert len(await src.poll_once()) == 6
        real_write = os.write
        refused: list[int] = []

        def refusing_write(fd: int, data: Any) -> int:
            if not refused:
                refused.append(fd)
                raise BlockingIOError
            return real_write(fd, data)

        os.write = refusing_write  # type: ignore[assignment]
        try:
            got = by_key(src, await src.poll_once())
        finally:
            os.write = real_write
    assert refused and got["power"] == 1_150_500


async def test_replies_are_read_with_one_read_not_through_pyserial(sim: ModbusSimulator) -> None:
    """drivers/serialbus.py `read_now`: the transport's reader is one os.read, not pyserial's `read` (a select and a
    timeout object per reply); the replies and their checks are the same, and an unplugged port is still seen
    (test_unplugged_adapter_is_counted_and_the_driver_reconnects)."""
    async with meter(sim, 1, "sdm120") as src:
        assert len(await src.poll_once()) == 6  # opens the port
        assert src.bus is not None
        port = src.bus._client.ctx.transport.sync_serial
        calls: list[int] = []
        pyserial_read = port.read

        def counting_read(size: int = 1) -> bytes:
            calls.append(size)
            return pyserial_read(size)  # type: ignore[no-any-return]

        port.read = counting_read
        got = by_key(src, await src.poll_once())
    assert got["power"] == 1_150_500 and got["voltage"] == 230_100
    assert calls == []
