"""An independent BTHome v2 advert builder, written from the public specification only.

Sources (read for this file; nothing here comes from Koto's own encoder or framing code):
- https://bthome.io/format/ — the "BTHome Data format" section (device information byte: bit 0 encryption, bit 1
  and bits 3-4 reserved, bit 2 trigger based, bits 5-7 version), the sensor / binary sensor / event / device tables
  (object id, data type, factor, example, result), "Text and Raw sensors", "Commands", "Multiple measurements of the
  same type", "Packet id" and "Timestamp". Page source: github.com/home-assistant/bthome.io `src/format.html` at
  commit 0cf388b02e1c0de88f80e18730e21dabd9be7adf (30 April 2026, "move command object from 0xE0 to 0x3B").
- https://bthome.io/encryption/ (`src/encryption.html`, same commit): AES-CCM, 4-byte MIC, nonce = MAC (6 bytes,
  as written) + UUID bytes D2FC + device information byte + counter (uint32 little endian); service data =
  device information byte + ciphertext + counter + MIC; worked example d2fc41e445f3c9962b332211006c7c4519.
- Cross-checked against the example payloads in the spec's own tables (SPEC_EXAMPLES below, asserted in
  tests/drivers/test_bthome_spec.py) — not against Koto or bthome-ble.

Values are given either as the physical value (`obj(0x0B, "69.14")`, converted exactly with the table's factor,
refusing a value that is not a whole multiple of it) or as the raw integer (`raw_obj(0x0B, 6914)`).
`service_data(...)` returns what a BLE stack reports as the service data of UUID 0xFCD2: the bytes after the UUID.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

UUID16 = 0xFCD2
UUID_BYTES = UUID16.to_bytes(2, "little")  # "The UUID has to be read reversed per byte": D2FC on the air
BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"

# Device information byte (format page, "BTHome Device Information")
ENCRYPTION_FLAG = 0x01  # bit 0
RESERVED_BIT_1 = 0x02  # bit 1: "Reserved for future use"
TRIGGER_BASED_FLAG = 0x04  # bit 2: "Trigger based device flag"
VERSION_SHIFT = 5  # bits 5-7: "BTHome Version"; 2 is the latest (010)


def device_info(*, encrypted: bool = False, trigger_based: bool = False, version: int = 2, reserved: int = 0) -> int:
    """The device information byte. `reserved` ORs raw bits in (bits 1, 3, 4) for negative tests."""
    if not 0 <= version <= 7:
        raise ValueError("the version has 3 bits")
    return (ENCRYPTION_FLAG if encrypted else 0) | (TRIGGER_BASED_FLAG if trigger_based else 0) \
        | (version << VERSION_SHIFT) | reserved


@dataclass(frozen=True)
class Spec:
    """One row of the spec's tables: fixed size in bytes, signedness, factor."""

    name: str
    size: int
    signed: bool = False
    factor: str = "1"


# Fixed-size objects, from the format page's tables (sensor, binary sensor, misc, device).
OBJECTS: dict[int, Spec] = {
    0x00: Spec("packet id", 1),
    0x01: Spec("battery", 1),
    0x02: Spec("temperature", 2, True, "0.01"),
    0x03: Spec("humidity", 2, False, "0.01"),
    0x04: Spec("pressure", 3, False, "0.01"),
    0x05: Spec("illuminance", 3, False, "0.01"),
    0x06: Spec("mass (kg)", 2, False, "0.01"),
    0x07: Spec("mass (lb)", 2, False, "0.01"),
    0x08: Spec("dewpoint", 2, True, "0.01"),
    0x09: Spec("count", 1),
    0x0A: Spec("energy", 3, False, "0.001"),
    0x0B: Spec("power", 3, False, "0.01"),
    0x0C: Spec("voltage", 2, False, "0.001"),
    0x0D: Spec("pm2.5", 2),
    0x0E: Spec("pm10", 2),
    0x0F: Spec("generic boolean", 1),
    0x10: Spec("power (binary)", 1),
    0x11: Spec("opening", 1),
    0x12: Spec("co2", 2),
    0x13: Spec("tvoc", 2),
    0x14: Spec("moisture", 2, False, "0.01"),
    **{i: Spec(f"binary 0x{i:02X}", 1) for i in range(0x15, 0x2E)},  # battery .. window: uint8, 0 / 1
    0x2E: Spec("humidity", 1),
    0x2F: Spec("moisture", 1),
    0x3D: Spec("count", 2),
    0x3E: Spec("count", 4),
    0x3F: Spec("rotation", 2, True, "0.1"),
    0x40: Spec("distance (mm)", 2),
    0x41: Spec("distance (m)", 2, False, "0.1"),
    0x42: Spec("duration", 3, False, "0.001"),
    0x43: Spec("current", 2, False, "0.001"),
    0x44: Spec("speed", 2, False, "0.01"),
    0x45: Spec("temperature", 2, True, "0.1"),
    0x46: Spec("UV index", 1, False, "0.1"),
    0x47: Spec("volume", 2, False, "0.1"),
    0x48: Spec("volume (mL)", 2),
    0x49: Spec("volume flow rate", 2, False, "0.001"),
    0x4A: Spec("voltage", 2, False, "0.1"),
    0x4B: Spec("gas", 3, False, "0.001"),
    0x4C: Spec("gas", 4, False, "0.001"),
    0x4D: Spec("energy", 4, False, "0.001"),
    0x4E: Spec("volume", 4, False, "0.001"),
    0x4F: Spec("water", 4, False, "0.001"),
    0x50: Spec("timestamp", 4),  # seconds since the epoch, UTC
    0x51: Spec("acceleration", 2, False, "0.001"),
    0x52: Spec("gyroscope", 2, False, "0.001"),
    0x55: Spec("volume storage", 4, False, "0.001"),
    0x56: Spec("conductivity", 2),
    0x57: Spec("temperature", 1, True, "1"),
    0x58: Spec("temperature", 1, True, "0.35"),
    0x59: Spec("count", 1, True),
    0x5A: Spec("count", 2, True),
    0x5B: Spec("count", 4, True),
    0x5C: Spec("power", 4, True, "0.01"),
    0x5D: Spec("current", 2, True, "0.001"),
    0x5E: Spec("direction", 2, False, "0.01"),
    0x5F: Spec("precipitation", 2, False, "0.1"),
    0x60: Spec("channel", 1),
    0x61: Spec("rotational speed", 2),
    0x62: Spec("speed (signed)", 4, True, "0.000001"),
    0x63: Spec("acceleration (signed)", 4, True, "0.000001"),
    0x64: Spec("light level", 1),
    0x65: Spec("settings revision", 1),
    0xF0: Spec("device type id", 2),
    0xF1: Spec("firmware version", 4),
    0xF2: Spec("firmware version", 3),
}

# Events (format page, "Events"): button = 1 byte event id; dimmer = event id + steps (2 bytes).
BUTTON = 0x3A
BUTTON_EVENTS = {"none": 0x00, "press": 0x01, "double_press": 0x02, "triple_press": 0x03, "long_press": 0x04,
                 "long_double_press": 0x05, "long_triple_press": 0x06, "hold_press": 0x80}
DIMMER = 0x3C
DIMMER_EVENTS = {"none": 0x00, "rotate_left": 0x01, "rotate_right": 0x02}
# Variable length: text / raw = id, length, bytes; command = id, (3 reserved bits | 5-bit argument length), opcode,
# arguments.
COMMAND = 0x3B
TEXT = 0x53
RAW = 0x54
NEWER_IDS = (0x3B, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x5B, 0x5C, 0x5D, 0x5E, 0x5F, 0x60, 0x61, 0x62, 0x63, 0x64,
             0x65, 0xF0, 0xF1, 0xF2)

# Every example payload in the spec's tables: (object bytes as printed, the result as printed). The test file
# asserts the builder reproduces each one from its result.
SPEC_EXAMPLES: list[tuple[str, str]] = [
    ("518756", "22.151"), ("630057D0FF", "-3.123456"), ("0161", "97"), ("6001", "1"), ("12E204", "1250"),
    ("56E803", "1000"), ("0960", "96"), ("3D0960", "24585"), ("3E2A2C0960", "1611213866"), ("59EA", "-22"),
    ("5AEAEA", "-5398"), ("5BEA0234EA", "-365690134"), ("434E34", "13.39"), ("5D02EA", "-5.63"),
    ("08CA06", "17.38"), ("5E9F8C", "359.99"), ("400C00", "12"), ("414E00", "7.8"), ("424E3400", "13.390"),
    ("4d12138a14", "344593.170"), ("0A138A14", "1346.067"), ("4B138A14", "1346.067"), ("4C41018A01", "25821.505"),
    ("528756", "22.151"), ("03BF13", "50.55"), ("2E23", "35"), ("05138A14", "13460.67"), ("6402", "2"),
    ("065E1F", "80.3"), ("073E1D", "74.86"), ("14020C", "30.74"), ("2F23", "35"), ("0D120C", "3090"),
    ("0E021C", "7170"), ("0B021B00", "69.14"), ("5C02FBFFFF", "-12.78"), ("5FA00F", "400.0"),
    ("04138A01", "1008.83"), ("3F020C", "307.4"), ("61AC0D", "3500"), ("6503", "3"), ("444E34", "133.90"),
    ("624099DFFF", "-2.123456"), ("57EA", "-22"), ("58EA", "-7.7"), ("451101", "27.3"), ("02CA09", "25.06"),
    ("505d396164", "1684093277"), ("133301", "307"), ("0C020C", "3.074"), ("4A020C", "307.4"),
    ("4E87562A01", "19551.879"), ("478756", "2215.1"), ("48DC87", "34780"), ("5587562A01", "19551.879"),
    ("49DC87", "34.780"), ("4632", "5.0"), ("4F87562A01", "19551.879"), ("1501", "1"), ("1A00", "0"),
    ("1001", "1"), ("2D01", "1"), ("0009", "9"), ("F00100", "1"),
]


def raw_obj(obj_id: int, raw: int) -> bytes:
    """A fixed-size object from its raw integer (little endian, the table's size and signedness)."""
    spec = OBJECTS[obj_id]
    return bytes([obj_id]) + raw.to_bytes(spec.size, "little", signed=spec.signed)


def obj(obj_id: int, value: int | str | Decimal) -> bytes:
    """A fixed-size object from its physical value, exactly: the value must be a whole multiple of the factor."""
    spec = OBJECTS[obj_id]
    q = Decimal(str(value)) / Decimal(spec.factor)
    if q != q.to_integral_value():
        raise ValueError(f"{value} is not a multiple of {spec.factor} for 0x{obj_id:02X}")
    return raw_obj(obj_id, int(q))


def value_of(obj_id: int, raw: int) -> Decimal:
    """The physical value of a raw integer, per the table's factor."""
    return raw * Decimal(OBJECTS[obj_id].factor)


def button(event: str) -> bytes:
    return bytes([BUTTON, BUTTON_EVENTS[event]])


def dimmer(event: str, steps: int = 0) -> bytes:
    return bytes([DIMMER, DIMMER_EVENTS[event], steps])


def text(s: str) -> bytes:
    data = s.encode("utf-8")
    return bytes([TEXT, len(data)]) + data


def raw(data: bytes) -> bytes:
    return bytes([RAW, len(data)]) + data


def command(opcode: int, args: bytes = b"") -> bytes:
    if len(args) > 31:
        raise ValueError("the argument length has 5 bits")
    return bytes([COMMAND, len(args), opcode]) + args


def timestamp(epoch_s: int) -> bytes:
    return raw_obj(0x50, epoch_s)


def packet_id(n: int) -> bytes:
    return raw_obj(0x00, n)


def firmware_version(*parts: int) -> bytes:
    """0xF1 for a.b.c.d, 0xF2 for a.b.c: the bytes little endian, so "4.2.1.0" is F1 00 01 02 04."""
    oid = {4: 0xF1, 3: 0xF2}[len(parts)]
    return bytes([oid, *reversed(parts)])


def mac_bytes(address: str) -> bytes:
    """The 6 MAC bytes for the nonce, in the order the address is written (5448E68F80A5 in the spec's example)."""
    b = bytes.fromhex(address.replace(":", ""))
    if len(b) != 6:
        raise ValueError("a MAC address has 6 bytes")
    return b


def nonce(address: str, info: int, counter: int) -> bytes:
    return mac_bytes(address) + UUID_BYTES + bytes([info]) + counter.to_bytes(4, "little")


def encrypt(payload: bytes, *, bindkey: bytes, address: str, counter: int, info: int) -> bytes:
    """Service data of an encrypted advert: info byte, ciphertext, counter (uint32 LE), 4-byte MIC."""
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    sealed = AESCCM(bindkey, tag_length=4).encrypt(nonce(address, info, counter), payload, None)
    ciphertext, mic = sealed[:-4], sealed[-4:]
    return bytes([info]) + ciphertext + counter.to_bytes(4, "little") + mic


def service_data(objects: Iterable[bytes], *, bindkey: bytes | None = None, address: str | None = None,
                 counter: int | None = None, trigger_based: bool = False, version: int = 2,
                 reserved: int = 0) -> bytes:
    """The service data (after the UUID) for these objects, as given: plain, or AES-CCM with `bindkey`."""
    payload = b"".join(objects)
    info = device_info(encrypted=bindkey is not None, trigger_based=trigger_based, version=version,
                       reserved=reserved)
    if bindkey is None:
        return bytes([info]) + payload
    if address is None or counter is None:
        raise ValueError("an encrypted advert needs the device's address and a counter")
    return encrypt(payload, bindkey=bindkey, address=address, counter=counter, info=info)


def advertising_payload(sd: bytes, *, name: str | None = None) -> bytes:
    """The whole legacy advertising payload: Flags 020106, optional Complete Local Name, Service Data 0x16."""
    out = bytes.fromhex("020106")
    if name is not None:
        n = name.encode()
        out += bytes([len(n) + 1, 0x09]) + n
    body = UUID_BYTES + sd
    return out + bytes([len(body) + 1, 0x16]) + body


LEGACY_PAYLOAD_MAX = 31  # a legacy (BLE 4) advertising payload carries at most 31 bytes


def fits_legacy(sd: bytes) -> bool:
    """Whether a real BLE 4 device could send this service data, with the Flags element and no name."""
    return len(advertising_payload(sd)) <= LEGACY_PAYLOAD_MAX
