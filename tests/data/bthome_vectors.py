"""Published BTHome v2 advertisement vectors (service data for UUID 0xFCD2) and what they decode to.

Source: the bthome-ble project's own tests, Bluetooth-Devices/bthome-ble, tests/test_parser_v2.py (read at commit
7a79e67347b113550de5bd6a0f33676241e007b8): test_bthome_power, test_bthome_energy, test_bthome_voltage,
test_bthome_current, test_bthome_binary_sensor_power, test_bindkey_correct, test_bindkey_wrong and the packet-id
test (`\\x40\\x00\\x09`). Only the byte strings, addresses, keys and expected values are taken; the values are
bthome-ble's native units (W, kWh, V, A), the milli-unit columns are ours (`to_milli` of those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Vector:
    name: str
    address: str
    service_data: bytes
    sensors: dict[str, Any] = field(default_factory=dict)
    binary: dict[str, bool] = field(default_factory=dict)
    bindkey: bytes | None = None
    milli: dict[str, int] = field(default_factory=dict)  # our quantity -> expected integer value


PLAIN = [
    Vector("power", "A4:C1:38:8D:18:B2", b"\x40\x0b\x02\x1b\x00", {"power": 69.14}, milli={"power_mw": 69140}),
    Vector("energy", "A4:C1:38:8D:18:B2", b"\x40\x0a\x13\x8a\x14", {"energy": 1346.067},
           milli={"energy_mwh": 1_346_067_000}),
    Vector("voltage", "A4:C1:38:8D:18:B2", b"\x40\x0c\x02\x0c", {"voltage": 3.074}, milli={"voltage_mv": 3074}),
    Vector("current", "A4:C1:38:8D:18:B2", b"\x40\x43\x4e\x34", {"current": 13.39}, milli={"current_ma": 13390}),
    Vector("binary power", "A4:C1:38:8D:18:B2", b"\x40\x10\x01", binary={"power": True}, milli={"signal": 1}),
]

PACKET_ID_9 = Vector("packet id", "A4:C1:38:8D:18:B2", b"\x40\x00\x09")

# test_bindkey_correct: temperature 25.06 °C, humidity 50.55 %, counter 0x33221100, MIC 78 23 72 14
ENCRYPTED = Vector(
    "encrypted temperature/humidity",
    "54:48:E6:8F:80:A5",
    b"\x41\xa4\x72\x66\xc9\x5f\x73\x00\x11\x22\x33\x78\x23\x72\x14",
    {"temperature": 25.06, "humidity": 50.55},
    bindkey=bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932"),
)
ENCRYPTED_PLAINTEXT_OBJECTS = [(0x02, (2506).to_bytes(2, "little")), (0x03, (5055).to_bytes(2, "little"))]
ENCRYPTED_COUNTER = 0x33221100

# test_bindkey_wrong: an encrypted advert and a key that is not its key -> the MIC does not verify
WRONG_KEY = Vector(
    "encrypted, wrong key",
    "A4:C1:38:8D:18:B2",
    b"\x41\xd2\xfc\xef\xe5\x2e\xb2\x12\xd6\x00\x11\x22\x33\xbc\x38\xc9\x66",
    bindkey=bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99"),
)
