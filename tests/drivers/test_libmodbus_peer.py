"""Koto's Modbus driver and discovery against meters served by libmodbus, a Modbus RTU implementation that shares
no code with pymodbus (tests/support/libmodbus_server.py).

Every other serial test's meters are served by pymodbus' own RTU server, the same library as Koto's client: a
habit both halves share would pass there. Here libmodbus frames, checks and times every reply, answers a read of a
register the meter does not have with exception 02, and stays silent for another slave's address, as a meter
does; the register images are the vendors' documents' (tests/support/vendor_meters.py), and each expected value is
computed from the document, never from Koto's maps.
"""

from __future__ import annotations

import pytest

from drivers.discover_serial import discover
from tests.drivers.test_vendor_meters import A, E, F, P, V, by_key, milli, sdm630_values, source
from tests.support.libmodbus_server import LibmodbusMeters, why_not
from tests.support.vendor_meters import PZEM004T, SDM120, SDM630


@pytest.fixture(autouse=True)
def _libmodbus_here() -> None:
    """`make system-deps` installs cc and libmodbus-dev: a machine without them fails here, never skips."""
    if (why := why_not()) is not None:
        pytest.fail(f"cannot build the libmodbus meter: {why}")


async def test_sdm120_readings_are_the_documents_floats_through_libmodbus() -> None:
    sdm = SDM120(17, voltage_v=230.1, current_a=5.432, power_w=1250.75, frequency_hz=49.98, import_kwh=1234.567,
                 total_kwh=1234.567)
    steps = [(1250.75, 1234.567), (2000.125, 1234.5675), (-3.5, 1234.75)]
    got = []
    async with LibmodbusMeters(sdm, baud=2400) as served, source(served, "sdm120", 17, 2400) as src:
        for power, energy in steps:
            sdm.set(power_w=power, total_kwh=energy, import_kwh=energy)
            served.update()
            got.append(by_key(await src.poll_once()))
        assert not src.health.errors, dict(src.health.errors)
    for g, (power, energy) in zip(got, steps, strict=True):
        assert g[(P, "")] == milli(P, power)
        assert g[(E, "")] == milli(E, energy)
    assert got[0][(E, "")] == 1_234_567_017  # 1234.567 kWh is 1234.5670166015625 as a float32
    assert got[0][(V, "")] == 230_100 and got[0][(A, "")] == milli(A, 5.432) and got[0][(F, "")] == 49_980


async def test_sdm630_each_phase_through_libmodbus() -> None:
    values = sdm630_values()
    sdm = SDM630(2, **values)
    async with LibmodbusMeters(sdm) as served, source(served, "sdm630", 2, 9600, channel="L2") as src:
        got = by_key(await src.poll_once())
        assert not src.health.errors, dict(src.health.errors)
    for ph in ("L1", "L2", "L3"):
        p = ph.lower()
        assert got[(V, ph)] == milli(V, values[f"voltage_v_{p}"])
        assert got[(P, ph)] == milli(P, values[f"power_w_{p}"])
        assert got[(E, ph)] == milli(E, values[f"total_kwh_{p}"])
    assert got[(E, "")] == milli(E, values["total_kwh"]) and got[(P, "L3")] == -250_750


async def test_pzem_32_bit_values_low_word_first_through_libmodbus() -> None:
    pz = PZEM004T(3, voltage="229.8", current="70.123", power="16000.5", energy=123456, frequency="49.9",
                  power_factor="0.99")
    async with LibmodbusMeters(pz) as served, source(served, "pzem004t", 3, 9600) as src:
        first = by_key(await src.poll_once())
        pz.set(power="7.3", energy=9_999_990)
        served.update()
        second = by_key(await src.poll_once())
        assert not src.health.errors, dict(src.health.errors)
    assert first[(V, "")] == 229_800 and first[(A, "")] == 70_123 and first[(P, "")] == 16_000_500
    assert first[(E, "")] == 123_456_000 and first[(F, "")] == 49_900
    assert second[(P, "")] == 7_300 and second[(E, "")] == 9_999_990_000


async def test_a_wrong_model_gets_libmodbus_exception_replies_counted_and_survived() -> None:
    """An SDM120 configured where a PZEM-004T answers: its float registers are ones the PZEM does not have, so
    libmodbus answers exception 02 for each block; the source counts them, invents nothing, and reads the right
    meter once the config names it."""
    pz = PZEM004T(1, voltage="230.0", power="100.0", energy=5)
    async with LibmodbusMeters(pz) as served:
        async with source(served, "sdm120", 1, 9600) as wrong:
            assert await wrong.poll_once() == []
            assert wrong.health.errors["exception"] >= 1, dict(wrong.health.errors)
            assert set(wrong.health.errors) == {"exception"}, dict(wrong.health.errors)
        async with source(served, "pzem004t", 1, 9600) as right:
            assert by_key(await right.poll_once())[(P, "")] == 100_000


async def test_after_a_missing_meters_silence_the_next_meter_on_the_bus_is_answered_first_time() -> None:
    """libmodbus stays silent for another slave's request and then takes the next frame on the bus for that slave's
    reply and drops it, unless none comes within its response timeout (0.5 s): on a real multi-drop bus that frame
    is the other meter's answer. With a meter missing from the bus, a gateway that asked the next meter at once
    would lose that request to the drop. Koto keeps the bus quiet after a silence as long again as it waited
    (docs/serial.md), so with the default timeout the next meter is answered first time, poll after poll."""
    sdm = SDM120(5, power_w=42.0)
    async with LibmodbusMeters(sdm) as served, \
            source(served, "sdm120", 6, 9600, retries=0) as missing, \
            source(served, "sdm120", 5, 9600) as present:
        for _round in range(2):
            assert await missing.poll_once() == []
            assert by_key(await present.poll_once())[(P, "")] == 42_000
        assert set(missing.health.errors) == {"timeout"}, dict(missing.health.errors)
        assert not present.health.errors, dict(present.health.errors)


async def test_three_meters_and_a_missing_one_on_one_rs485_bus_each_read_every_poll() -> None:
    """A multi-drop bus as installed: an SDM120, a PZEM-004T and an SDM630 at 1, 2 and 4, each its own libmodbus
    server seeing every request and every other meter's reply (as on the wire), and a meter configured at 3 that is
    not there. Polled in turn on one bus, as the daemon polls a port's sources, with the default settings: the three
    are read every round without a single retry, the missing one only times out."""
    sdm120, pzem, sdm630 = SDM120(1, power_w=812.5), PZEM004T(2, power="1500.0"), SDM630(4, **sdm630_values())
    async with LibmodbusMeters(sdm120, pzem, sdm630) as bus, \
            source(bus, "sdm120", 1, 9600) as a, source(bus, "pzem004t", 2, 9600) as b, \
            source(bus, "sdm120", 3, 9600, retries=0) as missing, source(bus, "sdm630", 4, 9600) as c:
        for step in range(3):
            sdm120.set(power_w=812.5 + step)
            pzem.set(power=f"{1500 + step}.0")
            bus.update()
            assert by_key(await a.poll_once())[(P, "")] == milli(P, 812.5 + step)
            assert by_key(await b.poll_once())[(P, "")] == (1500 + step) * 1000
            assert await missing.poll_once() == []
            assert by_key(await c.poll_once())[(P, "")] == milli(P, sdm630_values()["total_power_w"])
        for src in (a, b, c):
            assert not src.health.errors, (src.name, dict(src.health.errors))
        assert set(missing.health.errors) == {"timeout"}, dict(missing.health.errors)


async def test_discover_finds_every_meter_on_a_shared_bus() -> None:
    meters = (SDM120(1, voltage_v=229.9), PZEM004T(2, voltage="230.0", frequency="50.0"), SDM630(4, **sdm630_values()))
    async with LibmodbusMeters(*meters) as bus:
        found = await discover([bus.port], addresses=range(1, 6), bauds=(9600,), timeout_s=0.3)
    assert [(f.address, f.model) for f in found] == [(1, "sdm120"), (2, "pzem004t"), (4, "sdm630")]


@pytest.mark.parametrize(("meter", "model"), [(SDM120(3, voltage_v=229.9), "sdm120"),
                                              (SDM630(3, **sdm630_values()), "sdm630"),
                                              (PZEM004T(3, voltage="230.0", frequency="50.0"), "pzem004t")])
async def test_discover_names_a_libmodbus_served_meter_after_probing_empty_addresses(meter: object,
                                                                                    model: str) -> None:
    """Addresses 1 and 2 are silence (each makes libmodbus wait for a reply to drop, as above) before the meter at
    3 is asked: discovery still finds it, and names it by the vendor's registers."""
    async with LibmodbusMeters(meter) as served:
        found = await discover([served.port], addresses=range(1, 5), bauds=(9600,), timeout_s=0.3)
    assert [(f.address, f.model) for f in found] == [(3, model)]
