"""Register maps and decoding, without a bus: register words in, integers in milli-units out."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import build_source
from drivers.errors import DriverConfigError, FrameError
from drivers.modbus import (
    ModbusMeterSource,
    decode_block,
    exact_milli,
    float32_exact,
    load_map,
    model_map,
    parse_map,
)
from drivers.serialbus import classify_failure
from koto.clock import ManualClock
from koto.reading import Quantity


def values(model: str, regs_by_block: list[list[int]]) -> dict[str, int | str]:
    rmap = model_map(model)
    out: dict[str, int | str] = {}
    for block, regs in zip(rmap.blocks(), regs_by_block, strict=True):
        for spec, v in decode_block(rmap, block, regs):
            out[spec.key] = v.kind if isinstance(v, FrameError) else v
    return out


def test_float32_registers_convert_at_their_exact_binary_value_rounded_once_half_even() -> None:
    import struct
    from fractions import Fraction

    f = struct.unpack(">f", bytes.fromhex("4366199a"))[0]
    assert float32_exact(f) == Fraction(Decimal("230.100006103515625"))  # what the meter sent, not 230.1
    assert exact_milli(float32_exact(f), 1000) == 230_100
    # 1/128 kWh is 7812.5 mWh exactly: a tie, to even; 3/128 kWh = 23437.5 mWh, to even (up)
    assert exact_milli(float32_exact(1 / 128), 1_000_000) == 7812
    assert exact_milli(float32_exact(3 / 128), 1_000_000) == 23438
    with pytest.raises(FrameError):
        float32_exact(float("nan"))


def test_sdm120_requests_three_blocks_and_decodes_to_milli_units() -> None:
    rmap = model_map("sdm120")
    assert [(b.address, b.count) for b in rmap.blocks()] == [(0x0000, 14), (0x0046, 4), (0x0156, 2)]
    block0 = [0x4366, 0x199A, 0, 0, 0, 0, 0x40A8, 0x0000, 0, 0, 0, 0, 0x448F, 0xD000]  # 230.1 V, 5.25 A, 1150.5 W
    block1 = [0x4247, 0xEB85, 0x449A, 0x5225]  # 49.98 Hz, 1234.567 kWh import (exactly 1234.5670166015625)
    block2 = [0x47C0, 0xE6B7]  # 98765.43 kWh total (exactly 98765.4296875)
    assert values("sdm120", [block0, block1, block2]) == {
        "voltage": 230_100,
        "current": 5_250,
        "power": 1_150_500,
        "frequency": 49_980,
        "import_energy": 1_234_567_017,  # the register's exact value, not its shortest decimal (issue 9)
        "energy": 98_765_429_688,
    }


def test_sdm630_reports_each_phase_and_the_total() -> None:
    rmap = model_map("sdm630")
    phases = {(s.quantity, s.signal) for s in rmap.registers}
    for q in (Quantity.VOLTAGE_MV, Quantity.CURRENT_MA, Quantity.POWER_MW):
        assert {(q, "L1"), (q, "L2"), (q, "L3")} <= phases
    assert (Quantity.POWER_MW, "") in phases and (Quantity.ENERGY_MWH, "") in phases
    by_key = {s.key: s.address for s in rmap.registers}
    assert by_key["power_l1"] == 0x000C and by_key["power_l3"] == 0x0010 and by_key["power"] == 0x0034
    assert by_key["import_energy"] == 0x0048 and by_key["energy"] == 0x0156


def test_pzem004t_32_bit_values_are_low_word_first_scaled_integers() -> None:
    rmap = model_map("pzem004t")
    assert [(b.address, b.count) for b in rmap.blocks()] == [(0x0000, 8)]
    regs = [
        2301,  # 230.1 V
        0x86A0, 0x0001,  # 100000 -> 100.000 A
        23005, 0x0000,  # 2300.5 W
        0x1170, 0x0001,  # 70000 Wh
        500,  # 50.0 Hz
    ]
    assert values("pzem004t", [regs]) == {
        "voltage": 230_100,
        "current": 100_000,
        "power": 2_300_500,
        "energy": 70_000_000,
        "frequency": 50_000,
    }


def test_implausible_values_are_rejected_with_their_kind() -> None:
    nan, minus_one, volts_1000 = [0x7FC0, 0x0000], [0xBF80, 0x0000], [0x447A, 0x0000]
    block0 = volts_1000 + [0] * 12
    got = values("sdm120", [block0, [0x4247, 0xEB85, *nan], minus_one])
    assert got["voltage"] == "out_of_range"
    assert got["import_energy"] == "not_finite"
    assert got["energy"] == "negative_energy"
    assert got["frequency"] == 49_980


def test_a_generic_map_from_a_users_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "heatpump.toml"
    f.write_text(
        '[meter]\nname = "Heat pump"\nfunction = "holding"\n'
        '[[register]]\nkey = "power"\naddress = 100\ntype = "int16"\nquantity = "power_mw"\nunit = "kW"\n'
        'scale = "0.01"\n'
        '[[register]]\nkey = "energy"\naddress = 101\ntype = "uint32"\nquantity = "energy_mwh"\nunit = "kWh"\n'
        'scale = "0.1"\n'
    )
    rmap = load_map(f)
    assert rmap.function == 3 and [(b.address, b.count) for b in rmap.blocks()] == [(100, 3)]
    (block,) = rmap.blocks()
    got = {s.key: v for s, v in decode_block(rmap, block, [0xFF38, 0x0000, 0x3039])}  # -2.00 kW, 1234.5 kWh
    assert got == {"power": -2_000_000, "energy": 1_234_500_000}


@pytest.mark.parametrize(
    ("patch", "key", "words"),
    [
        ({"type": "float"}, "register[0] (power).type", "allowed: uint16"),
        ({"unit": "kWh"}, "register[0] (power).unit", "allowed: W, kW, mW"),
        ({"quantity": "power_w"}, "register[0] (power).quantity", "allowed"),
        ({"address": -1}, "register[0] (power).address", "0..0xFFFF"),
        ({"scale": "abc"}, "register[0] (power).scale", "number"),
        ({"colour": 1}, "register[0].colour", "unknown key"),
    ],
)
def test_map_errors_name_the_file_and_the_key(patch: dict[str, object], key: str, words: str) -> None:
    reg = {"key": "power", "address": 12, "type": "float32", "quantity": "power_mw", "unit": "W", **patch}
    with pytest.raises(DriverConfigError) as e:
        parse_map({"register": [reg]}, file="/etc/koto/meter.toml", source="washer")
    assert e.value.file == "/etc/koto/meter.toml" and e.value.key == key
    assert words in str(e.value) and "/etc/koto/meter.toml" in str(e.value)


def test_overlapping_registers_are_a_config_error() -> None:
    regs = [{"key": "a", "address": 0, "type": "float32", "quantity": "power_mw", "unit": "W"},
            {"key": "b", "address": 1, "type": "uint16", "quantity": "power_mw", "unit": "W"}]
    with pytest.raises(DriverConfigError, match="overlaps register 'a'"):
        parse_map({"register": regs}, file="m.toml")


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"model": "sdm120"}, "port"),
        ({"port": "/dev/ttyUSB0"}, "model"),
        ({"port": "/dev/ttyUSB0", "model": "sdm120", "map": "x.toml"}, "model"),
        ({"port": "/dev/ttyUSB0", "model": "sdm999"}, "model"),
        ({"port": "/dev/ttyUSB0", "model": "sdm120", "baud": 12345}, "baud"),
        ({"port": "/dev/ttyUSB0", "model": "sdm120", "address": 0}, "address"),
        ({"port": "/dev/ttyUSB0", "model": "sdm120", "pol_s": 1}, "pol_s"),
        ({"port": "/dev/ttyUSB0", "map": "/nonexistent/map.toml"}, "map"),
    ],
)
def test_source_config_errors_name_the_key(cfg: dict[str, object], key: str) -> None:
    with pytest.raises(DriverConfigError) as e:
        build_source("washer", {"driver": "modbus", **cfg}, clock=ManualClock(), file="/etc/koto/koto.toml")
    assert e.value.key == key and "/etc/koto/koto.toml" in str(e.value)


def test_model_defaults_for_the_line_and_overrides() -> None:
    clock = ManualClock()
    sdm = build_source("a", {"driver": "modbus", "port": "/dev/x", "model": "sdm120"}, clock=clock)
    pzem = build_source("b", {"driver": "modbus", "port": "/dev/x", "model": "pzem004t", "baud": 19200}, clock=clock)
    assert isinstance(sdm, ModbusMeterSource) and isinstance(pzem, ModbusMeterSource)
    assert sdm.settings.baud == 2400 and pzem.settings.baud == 19200


def test_inline_map_table() -> None:
    inline = {"register": [{"key": "p", "address": 0, "type": "uint16", "quantity": "power_mw", "unit": "W"}]}
    src = build_source("c", {"driver": "modbus", "port": "/dev/x", "map": inline}, clock=ManualClock())
    assert isinstance(src, ModbusMeterSource) and src.map.registers[0].key == "p"


@pytest.mark.parametrize(
    ("rx", "kind"),
    [
        (b"", "timeout"),
        (bytes.fromhex("0104040000"), "truncated"),  # header, 5 of 9 bytes
        (bytes.fromhex("01040400000000ffff"), "crc"),  # full length, wrong CRC
        (bytes.fromhex("8104"), "garbage"),  # somebody else's header
        (bytes.fromhex("018402"), "truncated"),  # an exception reply cut short
    ],
)
def test_failed_attempts_are_classified_from_the_bytes_that_arrived(rx: bytes, kind: str) -> None:
    assert classify_failure(rx, device_id=1, function=4, expected_len=9) == kind
