"""MCP3008 channel through gpiozero's MCP3008 class talking to a mock chip on gpiozero's mock SPI."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest

from drivers.gpio import Calibration, Mcp3008Source
from drivers.gpio.sim import MockMcp3008, mock_factory
from koto.clock import ManualClock
from koto.reading import Quantity
from tests.support.slow import scaled


@pytest.fixture
def chip_and_factory():  # type: ignore[no-untyped-def]
    factory = mock_factory()
    chip = MockMcp3008(pin_factory=factory)  # must exist before the ADC device claims the SPI pins
    yield chip, factory
    chip.close()


async def test_two_point_calibration_turns_raw_counts_into_milliwatts(chip_and_factory) -> None:  # type: ignore[no-untyped-def]
    chip, factory = chip_and_factory
    cal = Calibration.two_points(4, 0, 704, 2000)  # 0 W at raw 4, 2000 W at raw 704: 20/7 W per count
    src = Mcp3008Source("dryer", clock=ManualClock(), channel=2, calibration=cal, pin_factory=factory,
                        interval_s=0.001, samples=2)
    chip.set_raw(2, 354)  # half way: 1000 W
    chip.set_raw(3, 1000)  # a neighbouring channel must not leak in
    async with src:
        it = aiter(src)  # the generator is suspended at each yield, so a value set now is read next
        first = await asyncio.wait_for(anext(it), scaled(5))
        chip.set_raw(2, 4)
        second = await asyncio.wait_for(anext(it), scaled(5))
        chip.set_raw(2, 0)  # below the zero point: noise, never negative power
        third = await asyncio.wait_for(anext(it), scaled(5))
    assert (first.quantity, first.value) == (Quantity.POWER_MW, 1_000_000)
    assert second.value == 0
    assert third.value == 0
    assert chip.conversions >= 6


async def test_linear_calibration_as_an_analog_value(chip_and_factory) -> None:  # type: ignore[no-untyped-def]
    chip, factory = chip_and_factory
    cal = Calibration.linear("0.01", "-1.5")  # e.g. degrees: -1.5 + raw/100
    chip.set_raw(0, 777)
    src = Mcp3008Source("probe", clock=ManualClock(), channel=0, calibration=cal, pin_factory=factory,
                        quantity=Quantity.ANALOG, signal="temp_c", interval_s=0.001, samples=1)
    async with src:
        r = await asyncio.wait_for(anext(aiter(src)), scaled(5))
    assert (r.quantity, r.value, r.signal) == (Quantity.ANALOG, 6270, "temp_c")  # 6.27 in milli-units


def test_calibration_is_exact_and_rounds_half_even() -> None:
    cal = Calibration.linear("0.0005")
    assert cal.milli(Fraction(1)) == 0  # 0.5 mW -> 0 (half-even)
    assert cal.milli(Fraction(3)) == 2  # 1.5 mW -> 2
    assert Calibration.two_points(0, 0, 1023, 3300).milli(Fraction(1023)) == 3_300_000
