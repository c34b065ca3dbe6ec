"""Koto's real Modbus driver against an emulator written from the vendors' documents only (tests/support/vendor_meters).

Each expected value below is computed from the document's own definition (Eastron: the float32 the register holds,
in W / kWh / V / A / Hz; PZEM-004T v3.0: the integer count times the manual's resolution), never from Koto's maps.
The meters are served by pymodbus' RTU server on a pty pair; the driver is configured as a user would
(docs/serial.md: driver, model, port, address, baud; the appliance's channel passed as `channel=`).
"""

from __future__ import annotations

import asyncio
import struct
import termios
from collections.abc import Callable
from fractions import Fraction

import pytest
import serial
from pymodbus.constants import ExcCodes
from pymodbus.framer.rtu import FramerRTU

from drivers.base import Source, build_source
from drivers.discover_serial import discover
from drivers.errors import DriverConfigError
from koto.clock import ManualClock
from koto.reading import Quantity, Reading
from tests.support.vendor_meters import PZEM004T, SDM120, SDM630, VendorBus, float32

P, E, V, A, F = (Quantity.POWER_MW, Quantity.ENERGY_MWH, Quantity.VOLTAGE_MV, Quantity.CURRENT_MA,
                 Quantity.FREQUENCY_MHZ)
MILLI = {P: 1000, E: 1_000_000, V: 1000, A: 1000, F: 1000}  # W->mW, kWh->mWh, V->mV, A->mA, Hz->mHz


def milli(quantity: Quantity, value: float) -> int:
    """An Eastron float32 register in milli-units: its exact binary value, rounded once, half to even."""
    return round(Fraction(float32(value)) * MILLI[quantity])


def by_key(readings: list[Reading]) -> dict[tuple[Quantity, str], int]:
    out: dict[tuple[Quantity, str], int] = {}
    for r in readings:
        key = (r.quantity, r.signal)
        assert key not in out, f"two readings of {key} in one poll"
        assert isinstance(r.value, int)
        out[key] = r.value
    return out


def source(bus: VendorBus, model: str, address: int, baud: int, channel: str = "", **extra: object) -> Source:
    cfg = {"driver": "modbus", "model": model, "port": bus.port, "address": address, "baud": baud,
           "energy_every": 1, **extra}
    return build_source(f"{model}-{address}", cfg, clock=ManualClock(), channel=channel)


async def polls(src: Source, n: int, before: Callable[[int], None] = lambda i: None) -> list[dict]:
    out = []
    for i in range(n):
        before(i)
        out.append(by_key(await src.poll_once()))  # type: ignore[attr-defined]
    return out


def frame(pdu: bytes) -> bytes:
    return pdu + FramerRTU.compute_CRC(pdu).to_bytes(2, "big")


async def ask(s: serial.Serial, pdu: bytes, want: int, wait_s: float = 0.5) -> bytes:
    """Send one request (pymodbus' CRC appended) and collect up to `want` reply bytes without blocking the loop."""
    s.reset_input_buffer()
    s.write(frame(pdu))
    got = b""
    deadline = asyncio.get_running_loop().time() + wait_s
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
        got += s.read(want - len(got))
    return got


# ---- the emulator against the documents' own example frames (so the tests below rest on it) -----------------------

async def test_emulated_pzem_answers_the_manuals_worked_example_and_esphomes_captured_frame_byte_for_byte() -> None:
    # manual 2.3: "0x01 + 0x04 + 0x14 + 0x08 + 0x98 + 0x03 + 0xE8 + 0x00 + 0x00 + 0x08 + 0x98 + ..."
    pz = PZEM004T(1, voltage="220.0", current="1.000", power="220.0", energy=0, frequency="50.0",
                  power_factor="1.00")
    # ESPHome pzemac.cpp comment: a real device's reply, with the device's own CRC (51 34): 225.7 V, 0.108 A,
    # 24.4 W, 38 Wh, 50.0 Hz, PF 1.00
    esphome = bytes.fromhex("01 04 14 08 D1 00 6C 00 00 00 F4 00 00 00 26 00 00 01 F4 00 64 00 00 51 34")
    async with VendorBus([pz]) as bus:
        with serial.Serial(bus.port, 9600, timeout=0) as s:
            manual = frame(bytes.fromhex("01 04 14 0898 03E8 0000 0898 0000 0000 0000 01F4 0064 0000"))
            assert await ask(s, bytes.fromhex("01 04 0000 000A"), 25) == manual
            pz.set(voltage="225.7", current="0.108", power="24.4", energy=38)
            assert await ask(s, bytes.fromhex("01 04 0000 000A"), 25) == esphome
            # reset energy: "Slave address + 0x42 + CRC", the correct reply the same
            assert await ask(s, bytes.fromhex("01 42"), 4) == frame(bytes.fromhex("01 42"))
            assert pz.raw["energy"] == 0
            # the general address; the manual's reply begins "Slave Address", here the address asked
            assert await ask(s, bytes.fromhex("F8 04 0007 0001"), 7) == frame(bytes.fromhex("F8 04 02 01F4"))
            # past 0x0009: "Error Reply: Slave address + 0x84 + Abnormal code", 0x02 illegal address
            assert await ask(s, bytes.fromhex("01 04 0000 000B"), 5) == frame(bytes.fromhex("01 84 02"))
            assert await ask(s, bytes.fromhex("07 04 0000 000A"), 5) == b""  # nobody at 7: silence


async def test_emulated_sdm_serves_float32_high_word_first_and_refuses_more_than_30_parameters() -> None:
    sdm = SDM120(1, voltage_v=230.1, total_kwh=1234.567)
    async with VendorBus([sdm], baud=2400) as bus:
        with serial.Serial(bus.port, 2400, timeout=0) as s:
            total = frame(bytes.fromhex("01 04 04") + struct.pack(">f", 1234.567))  # 0x449A5225: 449A first
            assert await ask(s, bytes.fromhex("01 04 0156 0002"), 9) == total
            assert (await ask(s, bytes.fromhex("01 04 0000 003E"), 5))[1] == 0x84  # 31 parameters: refused
    assert sdm.violations


# ---- Eastron SDM120 --------------------------------------------------------------------------------------------------

async def test_sdm120_power_energy_voltage_current_frequency_are_the_documents_floats() -> None:
    sdm = SDM120(17, voltage_v=230.1, current_a=5.432, power_w=1250.75, frequency_hz=49.98, import_kwh=1234.567,
                 export_kwh=0.0, total_kwh=1234.567)
    steps = [(1250.75, 1234.567), (2000.125, 1234.5675), (3.3, 1234.75)]

    def before(i: int) -> None:
        sdm.set(power_w=steps[i][0], total_kwh=steps[i][1], import_kwh=steps[i][1])

    async with VendorBus([sdm], baud=2400) as bus, source(bus, "sdm120", 17, 2400) as src:
        got = await polls(src, 3, before)
    for i, (power, energy) in enumerate(steps):
        assert got[i][(P, "")] == milli(P, power)
        assert got[i][(E, "")] == milli(E, energy)  # 30343 total active energy (import + export)
    first = got[0]
    assert first[(E, "")] == 1_234_567_017  # 1234.567 kWh is 1234.5670166015625 as a float32
    assert first[(V, "")] == milli(V, 230.1) == 230_100
    assert first[(A, "")] == milli(A, 5.432)
    assert first[(F, "")] == milli(F, 49.98) == 49_980
    assert first[(E, "import")] == milli(E, 1234.567)  # 30073 import active energy
    assert not sdm.violations, sdm.violations
    assert all(r.function == 4 for r in sdm.requests)


async def test_sdm120_export_is_negative_power_and_the_total_register_counts_it() -> None:
    # a balcony solar inverter behind the meter: power flows out, 30013 is negative; 30343 = import + export
    sdm = SDM120(1, power_w=-612.25, current_a=2.7, import_kwh=10.5, export_kwh=54321.5, total_kwh=54332.0)
    async with VendorBus([sdm], baud=2400) as bus, source(bus, "sdm120", 1, 2400) as src:
        got = await polls(src, 2)
    for g in got:
        assert g[(P, "")] == -612_250
        assert g[(E, "")] == milli(E, 54332.0)
    assert got[0][(E, "import")] == milli(E, 10.5)
    assert not src.health.errors, dict(src.health.errors)


async def test_sdm120_an_exception_reply_for_one_block_loses_that_block_only_and_is_not_retried() -> None:
    sdm = SDM120(1, power_w=800.5, total_kwh=321.25, import_kwh=321.25)
    sdm.refuse[0x0156] = ExcCodes.ILLEGAL_ADDRESS  # the total energy register's block is refused
    async with VendorBus([sdm], baud=2400) as bus, source(bus, "sdm120", 1, 2400) as src:
        first = by_key(await src.poll_once())
        asked = len(sdm.reads_of(0x0156))
        assert src.health.errors["exception"] == 1
        assert src.health.state == "degraded"
        del sdm.refuse[0x0156]
        second = by_key(await src.poll_once())
    assert asked == 1  # an exception is the meter's considered answer: asking again would get the same one
    assert (E, "") not in first  # nothing is invented for the refused register
    assert first[(P, "")] == 800_500 and first[(E, "import")] == 321_250_000 and first[(V, "")] == 230_000
    assert second[(E, "")] == 321_250_000 and second[(P, "")] == 800_500


# ---- Eastron SDM630 --------------------------------------------------------------------------------------------------

def sdm630_values() -> dict[str, float]:
    """Distinct values on every phase, so a reading taken from the wrong register cannot pass."""
    v: dict[str, float] = {"total_power_w": 4321.5, "frequency_hz": 50.02, "import_kwh": 23456.75,
                           "export_kwh": 12.5, "total_kwh": 23469.25, "sum_current_a": 18.75,
                           "average_voltage_v": 231.0}
    for i, p in enumerate(("l1", "l2", "l3"), start=1):
        v[f"voltage_v_{p}"] = 229.5 + i
        v[f"current_a_{p}"] = 1.25 * i + 0.125
        v[f"power_w_{p}"] = 1000.0 * i + 0.25 * i
        v[f"import_kwh_{p}"] = 7000.0 * i + 0.5
        v[f"export_kwh_{p}"] = 3.0 * i
        v[f"total_kwh_{p}"] = 7000.0 * i + 0.5 + 3.0 * i  # L1 total kWh = import + export
    v["power_w_l3"] = -250.75  # one phase exporting
    return v


@pytest.mark.parametrize("channel", ["", "L1", "L2", "L3"])
async def test_sdm630_total_and_each_phase_as_the_appliances_channel(channel: str) -> None:
    sdm = SDM630(2, **sdm630_values())
    power_reg = {"": "total_power_w", "L1": "power_w_l1", "L2": "power_w_l2", "L3": "power_w_l3"}[channel]
    energy_reg = {"": "total_kwh", "L1": "total_kwh_l1", "L2": "total_kwh_l2", "L3": "total_kwh_l3"}[channel]

    def before(i: int) -> None:  # the channel's power and energy move between polls
        sdm.set(**{power_reg: sdm.values[power_reg] + 10.5 * i, energy_reg: sdm.values[energy_reg] + 0.25 * i})

    async with VendorBus([sdm]) as bus, source(bus, "sdm630", 2, 9600, channel=channel) as src:
        got = []
        for i in range(3):
            before(i)
            got.append((by_key(await src.poll_once()), sdm.served(power_reg), sdm.served(energy_reg)))
            if i == 0:
                at_first = {name: sdm.served(name) for name in sdm.values}
    for g, power, energy in got:
        assert g[(P, channel)] == milli(P, power)
        assert g[(E, channel)] == milli(E, energy)
    first = got[0][0]
    for ph in ("L1", "L2", "L3"):
        p = ph.lower()
        assert first[(V, ph)] == milli(V, at_first[f"voltage_v_{p}"])
        assert first[(A, ph)] == milli(A, at_first[f"current_a_{p}"])
        assert first[(P, ph)] == milli(P, at_first[f"power_w_{p}"])
        assert first[(E, ph)] == milli(E, at_first[f"total_kwh_{p}"])  # 30359/61/63 L1..L3 total kWh
    assert first[(P, "")] == milli(P, at_first["total_power_w"])  # 30053 total system power
    assert first[(E, "")] == milli(E, at_first["total_kwh"])  # 30343 total kWh
    assert first[(E, "import")] == milli(E, at_first["import_kwh"])  # 30073 total import kWh
    assert first[(F, "")] == milli(F, 50.02)
    assert first[(P, "L3")] == -250_750
    assert not sdm.violations, sdm.violations
    assert not src.health.errors, dict(src.health.errors)


# ---- Peacefair PZEM-004T v3.0 --------------------------------------------------------------------------------------

async def test_pzem_32_bit_registers_low_word_first_and_the_manuals_resolutions() -> None:
    # current 70.123 A = 70123 counts, power 16000.5 W = 160005, energy 123456 Wh: all above 65535, so the high
    # word (0x0002, 0x0004, 0x0006) is non-zero and a word-order mistake reads something else entirely
    pz = PZEM004T(3, voltage="229.8", current="70.123", power="16000.5", energy=123456, frequency="49.9",
                  power_factor="0.99")
    steps = [("16000.5", 123456), ("7.3", 123457), ("22999.9", 9_999_990)]  # last: the manual's 9999.99 kWh

    def before(i: int) -> None:
        pz.set(power=steps[i][0], energy=steps[i][1])

    async with VendorBus([pz]) as bus, source(bus, "pzem004t", 3, 9600) as src:
        got = await polls(src, 3, before)
    for g, (power, energy) in zip(got, steps, strict=True):
        assert g[(P, "")] == int(float(power) * 10) * 100  # 0.1 W counts -> mW
        assert g[(E, "")] == energy * 1000  # 1 Wh counts -> mWh
    first = got[0]
    assert first[(V, "")] == 229_800
    assert first[(A, "")] == 70_123
    assert first[(F, "")] == 49_900
    assert not pz.violations, pz.violations
    assert all(r.function == 4 and r.start + r.count <= 10 for r in pz.requests)


# a real PZEM-004T's reply logged in arendst/Tasmota issue #11817, CRC and all: 242.9 V, 13.378 A, 3031.3 W, 8023 Wh,
# 50.0 Hz, PF 0.93
TASMOTA_11817 = bytes.fromhex("01 04 14 09 7D 34 42 00 00 76 69 00 00 1F 57 00 00 01 F4 00 5D 00 00 C2 6A")


async def test_a_real_pzems_logged_reply_is_served_byte_for_byte_and_read_by_koto_as_its_manual_defines() -> None:
    pz = PZEM004T(1, voltage="242.9", current="13.378", power="3031.3", energy=8023, frequency="50.0",
                  power_factor="0.93")
    async with VendorBus([pz]) as bus:
        with serial.Serial(bus.port, 9600, timeout=0) as s:
            assert await ask(s, bytes.fromhex("01 04 0000 000A"), 25) == TASMOTA_11817
        async with source(bus, "pzem004t", 1, 9600) as src:
            (got,) = await polls(src, 1)
    assert got == {(V, ""): 242_900, (A, ""): 13_378, (P, ""): 3_031_300, (E, ""): 8_023_000, (F, ""): 50_000}


async def test_pzem_at_the_general_address_0xf8_is_read_when_it_is_alone_on_the_line() -> None:
    pz = PZEM004T(0x11, voltage="231.4", current="1.234", power="285.5", energy=70000, frequency="50.0")
    async with VendorBus([pz]) as bus, source(bus, "pzem004t", 0xF8, 9600) as src:
        got = await polls(src, 2)
    assert got[0][(P, "")] == 285_500 and got[0][(E, "")] == 70_000_000 and got[0][(V, "")] == 231_400
    assert got[0][(A, "")] == 1_234
    assert got[1][(P, "")] == 285_500
    assert {r.device_id for r in pz.requests} == {0xF8}


async def test_pzem_energy_reset_by_function_0x42_never_yields_a_value_the_meter_did_not_serve() -> None:
    pz = PZEM004T(1, power="100.0", energy=123456)
    served: list[int] = []

    def before(i: int) -> None:
        if i == 2:
            pz.reset_energy(1)  # the energy counter cleared (the manual's 0x42: "Reset energy")
        if i >= 2:
            pz.set(energy=i - 2)  # and counting up again from zero
        served.append(pz.raw["energy"] * 1000)

    async with VendorBus([pz]) as bus, source(bus, "pzem004t", 1, 9600) as src:
        got = await polls(src, 7, before)
    energies = [g.get((E, "")) for g in got]
    assert all(e is None or e == s for e, s in zip(energies, served, strict=True)), (energies, served)
    assert energies[-1] == served[-1]  # the reset is accepted in the end


# Eastron documents the meter's Modbus address as 1..247 (SDM72D-M manual V1.1: 'RS485 network address nnn -
# 3-digit number, 001 to 247'; SDM630MCT-ML manual V1.2: 'Address: 1 to 247 for MODBUS Protocol'); 0xF8 is a
# PZEM-only general address.
@pytest.mark.parametrize("model", ["sdm120", "sdm630"])
def test_an_eastron_model_at_the_pzem_general_address_is_refused_in_the_config(model: str) -> None:
    with pytest.raises(DriverConfigError, match="address"):
        build_source("m", {"driver": "modbus", "model": model, "port": "/dev/ttyUSB0", "address": 248},
                     clock=ManualClock())


async def test_pzem_line_settings_default_to_the_manuals_9600_8n1() -> None:
    pz = PZEM004T(1)
    cfg = {"driver": "modbus", "model": "pzem004t", "address": 1}
    async with VendorBus([pz]) as bus:
        src = build_source("pz", {**cfg, "port": bus.port}, clock=ManualClock())
        async with src:
            await src.poll_once()  # type: ignore[attr-defined]
            _i, _o, cflag, _l, ispeed, ospeed, _cc = termios.tcgetattr(bus.wire.client_slave_fd)
    assert (ispeed, ospeed) == (termios.B9600, termios.B9600)
    assert cflag & termios.CSIZE == termios.CS8
    assert not cflag & termios.PARENB
    assert not cflag & termios.CSTOPB


async def test_sdm120_line_settings_default_to_2400_8n1() -> None:
    # SDM120 default 2400 baud, 8 data bits, 1 stop bit, no parity (SolarNetwork wiki "SDM XXX meters")
    sdm = SDM120(1)
    async with VendorBus([sdm], baud=2400) as bus:
        src = build_source("s", {"driver": "modbus", "model": "sdm120", "address": 1, "port": bus.port},
                           clock=ManualClock())
        async with src:
            await src.poll_once()  # type: ignore[attr-defined]
            _i, _o, cflag, _l, ispeed, ospeed, _cc = termios.tcgetattr(bus.wire.client_slave_fd)
    assert (ispeed, ospeed) == (termios.B2400, termios.B2400)
    assert cflag & termios.CSIZE == termios.CS8 and not cflag & termios.PARENB and not cflag & termios.CSTOPB


# ---- discover tells the three apart by the documents' registers ---------------------------------------------------

async def test_discover_names_each_meter_by_the_vendors_registers_including_a_single_phase_sdm630() -> None:
    values = sdm630_values()
    single = {k: (0.0 if k.endswith(("_l2", "_l3")) else v) for k, v in values.items()}  # 1p2w: X reads zero
    meters = [SDM120(1, voltage_v=229.9), SDM630(2, **values), PZEM004T(3, voltage="230.0", frequency="50.0"),
              SDM630(4, system_type=1.0, **single)]
    async with VendorBus(meters) as bus:
        found = await discover([bus.port], addresses=range(1, 6), bauds=(9600,), timeout_s=0.3)
    assert {f.address: f.model for f in found} == {1: "sdm120", 2: "sdm630", 3: "pzem004t", 4: "sdm630"}
    assert not any(m.violations for m in meters), [m.violations for m in meters]
