"""Fuzzing BTHome adverts into our driver: service-data bytes and whole advertisement structures, plain and encrypted.

Outside bytes enter at `BTHomeSource._on_advert(device, advertisement_data)`, bleak's detection callback (the one
path production, the demo and the tests share), which hands the service data to `BTHomeDecoder` and bthome-ble.
Seeds are the published vectors (tests/data/bthome_vectors.py) and adverts our builder makes; the fuzzer mutates
them (flips, cuts, insertions) and also sends random bytes under random UUIDs. The properties:
- the callback never raises (bleak's facade would only log a traceback per advert);
- every advert is exactly one of: counted as an error of a documented kind, counted as a duplicate, or decoded;
- what is decoded is valid: integer milli-units within 2**53-1, energy never negative, a signal "on" or "off";
- a source with a bindkey takes nothing that does not authenticate under that key (checked here independently with
  `cryptography`'s AES-CCM), and a plain advert never passes for an encrypted device.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import example, given
from hypothesis import strategies as st

from drivers.ble import BTHomeSource
from drivers.ble_backend import ReplayBackend
from drivers.bthome import BTHOME_UUID, BTHOME_V1_UUIDS, BTHomeDecoder, build_service_data
from drivers.errors import FrameError
from koto.canonical import MAX_SAFE_INT
from koto.clock import ManualClock
from koto.reading import Quantity, Reading
from tests.data import bthome_vectors as V
from tests.support.fuzzing import fuzz_settings

KINDS = {"bad_mic", "bad_version", "no_bindkey", "not_bthome", "not_parsed", "replayed_counter", "unknown_object",
         "unsupported_version", "wrong_length", "not_encrypted", "bad_value", "overflow"}
PLAIN_SEEDS = [v.service_data for v in V.PLAIN] + [V.PACKET_ID_9.service_data]
ENC = V.ENCRYPTED


@st.composite
def built(draw: st.DrawFn) -> bytes:
    """A well-formed advert from our builder: any packet id and values BTHome can carry, plus raw objects."""
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["packet_id"] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        kw["power_mw"] = draw(st.integers(-(2**31) * 10, (2**31 - 1) * 10))
    if draw(st.booleans()):
        kw["energy_mwh"] = draw(st.integers(0, (2**32 - 1) * 1000))
    if draw(st.booleans()):
        kw["voltage_mv"] = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        kw["current_ma"] = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        kw["power_on"] = draw(st.booleans())
    kw["extra"] = draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=4)), max_size=2))
    return build_service_data(**kw)


def mutate(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (operation, position, byte) edits: flip a bit, set a byte, cut the tail, insert or delete a byte."""
    data = bytearray(seed)
    for op, pos, b in edits:
        i = pos % (len(data) + 1)
        if op == 0 and i < len(data):
            data[i] ^= 1 << (b % 8)
        elif op == 1 and i < len(data):
            data[i] = b
        elif op == 2:
            del data[i:]
        elif op == 3:
            data[i:i] = bytes([b])
        elif op == 4 and i < len(data):
            del data[i]
    return bytes(data)


edits = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 63), st.integers(0, 255)), max_size=4)


def mutated(seeds: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(mutate, seeds, edits)


plain_service_data = mutated(st.sampled_from(PLAIN_SEEDS) | built()) | st.binary(max_size=40)
encrypted_service_data = (mutated(st.just(ENC.service_data))
                          | mutated(st.sampled_from(PLAIN_SEEDS))
                          | st.builds(lambda c, p: build_service_data(power_mw=p, packet_id=c % 256, counter=c,
                                                                      bindkey=ENC.bindkey, mac=ENC.address),
                                      st.integers(0, 2**32 - 1), st.integers(0, 10**7)))


uuids = st.sampled_from([BTHOME_UUID, *sorted(BTHOME_V1_UUIDS), "0000fe95-0000-1000-8000-00805f9b34fb"])


@st.composite
def adverts(draw: st.DrawFn, service_data: st.SearchStrategy[bytes], address: str) -> tuple[BLEDevice, Any]:
    """A whole advertisement as bleak reports it: sometimes from another device, with any UUIDs, name and RSSI."""
    addr = draw(st.sampled_from([address, address.lower(), "11:22:33:44:55:66"]))
    sd = {BTHOME_UUID: draw(service_data)}
    if draw(st.integers(0, 4)) == 0:
        sd = draw(st.dictionaries(uuids, service_data | st.binary(max_size=20), max_size=3))
    adv = AdvertisementData(draw(st.none() | st.text(max_size=10)), {}, sd, list(sd), None,
                            draw(st.integers(-127, 20)), ())
    return BLEDevice(addr, None, None), adv


@fuzz_settings(600)
@given(raw=plain_service_data | encrypted_service_data, keyed=st.booleans())
# make fuzz, 2026-12-06: object 0x50 (a timestamp) came out of bthome-ble as a datetime, not a plain value
@example(raw=b"@\x0c\x00\x00P\x00C\x00\x00", keyed=False)
def test_the_decoder_raises_only_frame_errors_and_decrypts_only_what_authenticates(raw: bytes, keyed: bool) -> None:
    """One advert, straight into the decoder (the fast loop: bytes in, `Decoded` or `FrameError` out)."""
    key = ENC.bindkey if keyed else None
    dec = BTHomeDecoder(ENC.address, key)
    try:
        got = dec.decode({BTHOME_UUID: raw}, rssi=-60, t_s=100.0)
    except FrameError as e:
        assert e.kind in KINDS
        return
    assert got is not None  # a fresh decoder has seen nothing to call a repeat
    if key is not None:
        assert got.encrypted and authentic(raw, ENC.address, key)
    else:
        assert not got.encrypted
    for v in got.sensors.values():
        assert isinstance(v, int | float | str | bool) or v is None


def check_reading(r: Reading) -> None:
    if r.quantity is Quantity.SIGNAL:
        assert r.value in ("on", "off")
        return
    assert type(r.value) is int and abs(r.value) <= MAX_SAFE_INT
    if r.quantity is Quantity.ENERGY_MWH:
        assert r.value >= 0


def authentic(raw: bytes, address: str, key: bytes) -> bool:
    """Independently of bthome-ble: does `raw` authenticate under `key` as an encrypted BTHome v2 advert?"""
    if len(raw) < 1 + 4 + 4 or not raw[0] & 0x01 or (raw[0] >> 5) & 7 != 2:
        return False
    mac_in_advert = 6 if raw[0] & 0x02 else 0
    body = raw[1 + mac_in_advert:]
    ciphertext, counter, mic = body[:-8], body[-8:-4], body[-4:]
    nonce = bytes.fromhex(address.replace(":", "")) + b"\xd2\xfc" + raw[:1] + counter
    try:
        AESCCM(key, tag_length=4).decrypt(nonce, ciphertext + mic, None)
    except (InvalidTag, ValueError):
        return False
    return True


Outcomes = list[tuple[str, list[Reading]]]


class Harness:
    """One real source, opened once on a replay backend in its own event loop, then fed example after example
    through its detection callback (which needs no running loop); opening a source per example cost more than
    the example."""

    def __init__(self, address: str, bindkey: bytes | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.src = BTHomeSource("fuzz", clock=self.clock, address=address,
                                backend=ReplayBackend([], clock=self.clock), bindkey=bindkey)
        self.loop.run_until_complete(self.src.__aenter__())

    def close(self) -> None:
        self.loop.run_until_complete(self.src.__aexit__(None, None, None))
        self.loop.close()

    def feed(self, batch: list[tuple[BLEDevice, Any]]) -> Outcomes:
        """What each advert produced: "error", "duplicate", "decoded" (with its readings) or "not ours"."""
        src, outcomes = self.src, []
        for device, adv in batch:
            self.clock.advance(1.0)
            before = (sum(src.health.errors.values()), src.duplicates, src.adverts)
            src._on_advert(device, adv)  # bleak's detection callback; must never raise
            after = (sum(src.health.errors.values()), src.duplicates, src.adverts)
            got = [src._queue.get_nowait() for _ in range(src._queue.qsize())]
            if device.address.upper() != src.address:
                assert after == before and not got
                outcomes.append(("not ours", got))
                continue
            assert after[2] == before[2] + 1  # heard
            if after[0] > before[0]:
                assert after[0] == before[0] + 1 and after[1] == before[1] and not got
                outcomes.append(("error", got))
            elif after[1] > before[1]:
                assert after[1] == before[1] + 1 and not got
                outcomes.append(("duplicate", got))
            else:
                outcomes.append(("decoded", got))
        return outcomes


@pytest.fixture(scope="module")
def plain_source() -> Iterator[Harness]:
    h = Harness("A4:C1:38:8D:18:B2", None)
    yield h
    h.close()


@pytest.fixture(scope="module")
def encrypted_source() -> Iterator[Harness]:
    h = Harness(ENC.address, ENC.bindkey)
    yield h
    h.close()


@fuzz_settings(300)
@given(batch=st.lists(adverts(plain_service_data, "A4:C1:38:8D:18:B2"), min_size=1, max_size=3))
@example(batch=[(BLEDevice("A4:C1:38:8D:18:B2", None, None),
                 AdvertisementData(None, {}, {BTHOME_UUID: b"\x40\x5c\xff\xff\xff\xff"}, [], None, -60, ()))])
# make test, 2026-12-07: bthome-ble read the v1 data (0x181C) beside the v2 data: an energy of 2.2e17 kWh
@example(batch=[(BLEDevice("A4:C1:38:8D:18:B2", None, None),
                 AdvertisementData(None, {}, {"0000181c-0000-1000-8000-00805f9b34fb":
                                              b"E=a`*a\n\n*\x8b\x0f\xfe\xfe\x87Y\xf8\x0b\xff,%",
                                              BTHOME_UUID: b"@\x0b\x02\x1b\x00"}, [], None, 0, ()))])
def test_plain_adverts_are_decoded_counted_or_dropped_never_crash(plain_source: Harness,
                                                                  batch: list[tuple[BLEDevice, Any]]) -> None:
    outcomes = plain_source.feed(batch)
    assert set(plain_source.src.health.errors) <= KINDS
    for _, got in outcomes:
        for r in got:
            check_reading(r)


@fuzz_settings(300)
@given(batch=st.lists(adverts(encrypted_service_data, ENC.address), min_size=1, max_size=3))
def test_an_encrypted_source_takes_only_adverts_that_authenticate(encrypted_source: Harness,
                                                                  batch: list[tuple[BLEDevice, Any]]) -> None:
    assert ENC.bindkey is not None
    outcomes = encrypted_source.feed(batch)
    assert set(encrypted_source.src.health.errors) <= KINDS
    for (_device, adv), (what, got) in zip(batch, outcomes, strict=True):
        if what == "decoded":
            assert authentic(adv.service_data[BTHOME_UUID], ENC.address, ENC.bindkey)
        for r in got:
            check_reading(r)
