"""The bthome-ble adapter: published vectors decode, bad input is classified, repeats are dropped, built adverts
round-trip through bthome-ble."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.bthome import BTHOME_UUID, BTHomeDecoder, build_service_data
from drivers.errors import FrameError
from tests.data import bthome_vectors as V


def decode(vec_or_bytes: V.Vector | bytes, dec: BTHomeDecoder | None = None, t_s: float = 100.0):
    data = vec_or_bytes.service_data if isinstance(vec_or_bytes, V.Vector) else vec_or_bytes
    if dec is None:
        dec = BTHomeDecoder("A4:C1:38:8D:18:B2")
    return dec.decode({BTHOME_UUID: data}, rssi=-60, t_s=t_s)


@pytest.mark.parametrize("vec", V.PLAIN, ids=lambda v: v.name)
def test_published_plain_vectors_decode_to_the_published_values(vec: V.Vector) -> None:
    d = decode(vec, BTHomeDecoder(vec.address))
    assert d is not None
    assert dict(d.sensors) == vec.sensors
    assert dict(d.binary) == vec.binary
    assert not d.encrypted


def test_published_encrypted_vector_decrypts_with_its_bindkey() -> None:
    d = decode(V.ENCRYPTED, BTHomeDecoder(V.ENCRYPTED.address, V.ENCRYPTED.bindkey))
    assert d is not None and d.encrypted
    assert dict(d.sensors) == V.ENCRYPTED.sensors


def test_the_builder_reproduces_the_published_encrypted_advert_byte_for_byte() -> None:
    built = build_service_data(extra=V.ENCRYPTED_PLAINTEXT_OBJECTS, bindkey=V.ENCRYPTED.bindkey,
                               mac=V.ENCRYPTED.address, counter=V.ENCRYPTED_COUNTER)
    assert built == V.ENCRYPTED.service_data


def test_the_builder_reproduces_the_published_plain_adverts() -> None:
    assert build_service_data(power_mw=69140) == V.PLAIN[0].service_data
    assert build_service_data(voltage_mv=3074) == V.PLAIN[2].service_data
    assert build_service_data(current_ma=13390) == V.PLAIN[3].service_data
    assert build_service_data(power_on=True) == V.PLAIN[4].service_data


def test_a_wrong_bindkey_is_a_bad_mic() -> None:
    with pytest.raises(FrameError) as e:
        decode(V.WRONG_KEY, BTHomeDecoder(V.WRONG_KEY.address, V.WRONG_KEY.bindkey))
    assert e.value.kind == "bad_mic"


def test_a_corrupted_ciphertext_is_a_bad_mic() -> None:
    bad = bytearray(V.ENCRYPTED.service_data)
    bad[3] ^= 0x01
    with pytest.raises(FrameError) as e:
        decode(bytes(bad), BTHomeDecoder(V.ENCRYPTED.address, V.ENCRYPTED.bindkey))
    assert e.value.kind == "bad_mic"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x40\x0b\x02\x1b", "wrong_length"),  # power needs 3 bytes, 2 are there
        (b"\x40\x0b\x02\x1b\x00\x0a\x13", "wrong_length"),  # energy cut off after a good power object
        (b"\x40", "wrong_length"),  # no objects at all
        (b"", "wrong_length"),
        (b"\x40\xfe\x01", "unknown_object"),
        (b"\x40\x00\x07\xfe\x01", "unknown_object"),  # a packet id, then an unknown id: nothing to read
        (b"\xe1\x02\x00\x0c\x04\x04\x13\x8a\x01", "bad_version"),  # bthome-ble's test_has_incorrect_version
        (V.ENCRYPTED.service_data, "no_bindkey"),
    ],
)
def test_bad_input_is_classified_and_never_decoded(data: bytes, kind: str) -> None:
    with pytest.raises(FrameError) as e:
        decode(data)
    assert e.value.kind == kind


def test_an_encrypted_advert_too_short_for_counter_and_mic_is_a_wrong_length() -> None:
    with pytest.raises(FrameError) as e:
        decode(b"\x41\x01\x02\x03\x04\x05", BTHomeDecoder("A4:C1:38:8D:18:B2", bytes(16)))
    assert e.value.kind == "wrong_length"


def test_a_plain_advert_from_a_device_with_a_bindkey_is_refused() -> None:
    with pytest.raises(FrameError) as e:
        decode(V.PLAIN[0], BTHomeDecoder("A4:C1:38:8D:18:B2", bytes(16)))
    assert e.value.kind == "not_encrypted"


def test_an_advert_without_bthome_data_is_not_bthome() -> None:
    dec = BTHomeDecoder("A4:C1:38:8D:18:B2")
    with pytest.raises(FrameError) as e:
        dec.decode({"0000feaa-0000-1000-8000-00805f9b34fb": b"\x10\x00"})
    assert e.value.kind == "not_bthome"
    with pytest.raises(FrameError) as e:
        dec.decode({"0000181c-0000-1000-8000-00805f9b34fb": b"\x02\x00\x09"})
    assert e.value.kind == "unsupported_version"


V1_UUID = "0000181c-0000-1000-8000-00805f9b34fb"
# A BTHome v1 (0x181C) payload that bthome-ble reads as an energy of 2.2e17 kWh and a count of 2e20: found by
# make test's fuzzing beside a v2 power reading (2026-12-07)
V1_GARBAGE = b"E=a`*a\n\n*\x8b\x0f\xfe\xfe\x87Y\xf8\x0b\xff,%"


def test_v1_service_data_beside_the_v2_data_is_not_read() -> None:
    """bthome-ble parses v1 service data too; Koto reads v2 only, from the data it checked: what a v1 payload beside
    it says (any value a sender likes, unencrypted) must not become a reading."""
    d = BTHomeDecoder("A4:C1:38:8D:18:B2").decode({V1_UUID: V1_GARBAGE, BTHOME_UUID: V.PLAIN[0].service_data})
    assert d is not None and dict(d.sensors) == V.PLAIN[0].sensors
    # beside an authentic encrypted advert (bthome-ble with a bindkey refused the pair as a failed decryption,
    # bad_mic, before: a device's own adverts dropped whenever something added v1 data)
    dec = BTHomeDecoder(V.ENCRYPTED.address, V.ENCRYPTED.bindkey)
    d = dec.decode({V1_UUID: V1_GARBAGE, BTHOME_UUID: V.ENCRYPTED.service_data}, t_s=100.0)
    assert d is not None and d.encrypted and dict(d.sensors) == V.ENCRYPTED.sensors
    # and beside a forged one (a higher counter, a MIC that does not authenticate): refused, as before
    forged = bytearray(V.ENCRYPTED.service_data)
    forged[-8:-4] = (int.from_bytes(forged[-8:-4], "little") + 1).to_bytes(4, "little")
    with pytest.raises(FrameError) as e:
        dec.decode({V1_UUID: V1_GARBAGE, BTHOME_UUID: bytes(forged)}, t_s=101.0)
    assert e.value.kind == "bad_mic"


def test_a_repeat_of_the_same_bytes_is_dropped_even_after_the_parsers_4_s_window() -> None:
    dec = BTHomeDecoder(V.PACKET_ID_9.address)
    assert decode(V.PACKET_ID_9, dec, t_s=100.0) is not None
    assert decode(V.PACKET_ID_9, dec, t_s=100.5) is None
    assert decode(V.PACKET_ID_9, dec, t_s=200.0) is None


def test_the_same_packet_id_with_other_bytes_is_a_duplicate_and_the_next_id_is_new() -> None:
    dec = BTHomeDecoder("A4:C1:38:8D:18:B2")
    first = decode(build_service_data(packet_id=7, power_mw=1000), dec, t_s=10.0)
    assert first is not None and first.packet_id == 7
    assert decode(build_service_data(packet_id=7, power_mw=2000), dec, t_s=11.0) is None
    older = decode(build_service_data(packet_id=6, power_mw=3000), dec, t_s=11.5)
    assert older is None  # bthome-ble's own rule: an older packet inside its window
    nxt = decode(build_service_data(packet_id=8, power_mw=4000), dec, t_s=12.0)
    assert nxt is not None and dict(nxt.sensors) == {"power": 4.0}


def test_a_bad_advert_does_not_disturb_the_next_good_one() -> None:
    dec = BTHomeDecoder("A4:C1:38:8D:18:B2")
    with pytest.raises(FrameError):
        decode(b"\x40\x00\x05\xfe", dec)
    d = decode(build_service_data(packet_id=5, power_mw=5000), dec)
    assert d is not None and dict(d.sensors) == {"power": 5.0}


@settings(max_examples=60, deadline=None)
@given(
    packet_id=st.integers(0, 255),
    centiwatts=st.integers(0, (1 << 24) - 1),
    wh=st.integers(0, (1 << 32) - 1),
    volts_mv=st.integers(0, 65535),
    amps_ma=st.integers(0, 65535),
    on=st.booleans(),
    encrypted=st.booleans(),
    counter=st.integers(0, (1 << 32) - 1),
)
def test_built_adverts_round_trip_exactly_through_bthome_ble(
    packet_id: int, centiwatts: int, wh: int, volts_mv: int, amps_ma: int, on: bool, encrypted: bool, counter: int
) -> None:
    from koto.reading import to_milli

    key = bytes.fromhex("00112233445566778899aabbccddeeff") if encrypted else None
    mac = "11:22:33:44:55:66"
    data = build_service_data(packet_id=packet_id, power_mw=centiwatts * 10, energy_mwh=wh * 1000,
                              voltage_mv=volts_mv, current_ma=amps_ma, power_on=on, bindkey=key, mac=mac,
                              counter=counter)
    d = BTHomeDecoder(mac, key).decode({BTHOME_UUID: data}, t_s=1.0)
    assert d is not None and d.packet_id == packet_id and d.encrypted == encrypted
    assert to_milli(d.sensors["power"]) == centiwatts * 10
    assert to_milli(d.sensors["energy"], 1_000_000) == wh * 1000
    assert to_milli(d.sensors["voltage"]) == volts_mv
    assert to_milli(d.sensors["current"]) == amps_ma
    assert d.binary == {"power": on}


def test_the_builder_rounds_power_to_bthome_resolution_and_floors_energy_like_a_register() -> None:
    d = BTHomeDecoder("11:22:33:44:55:66").decode(
        {BTHOME_UUID: build_service_data(power_mw=12_345, energy_mwh=9_999)}
    )
    assert d is not None
    assert d.sensors == {"power": 12.34, "energy": 0.009}


def test_an_unknown_newer_object_at_the_end_is_skipped_and_what_came_before_is_read() -> None:
    """bthome.io/format: objects come in ascending id order so that a receiver that does not know a newer id reads
    the ones before it and stops there. A good power object, then an id bthome-ble does not know."""
    d = decode(b"\x40\x0b\x02\x1b\x00\xfe\x01")
    assert d is not None and d.sensors == {"power": 69.14} and d.unknown_object == 0xFE
