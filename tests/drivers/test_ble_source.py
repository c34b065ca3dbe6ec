"""BTHomeSource end to end: adverts enter through bleak's BleakScanner facade and our detection callback, exactly
as in production; only the BlueZ boundary (the platform scanner backend bleak would pick) is faked, by injecting
`FakeBlueZScanner` through bleak's own `backend=` argument."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from drivers.base import build_source
from drivers.ble import BTHomeSource
from drivers.ble_backend import BleakBackend, ReplayAdvert, ReplayBackend
from drivers.bthome import BTHOME_UUID, build_service_data
from drivers.errors import DriverConfigError
from koto.clock import ManualClock
from koto.reading import Quantity, Reading
from tests.data import bthome_vectors as V
from tests.support.slow import scaled

PLUG = "A4:C1:38:8D:18:B2"


class Radio:
    """What the fake BlueZ adapter does: how starts behave, and adverts to hand to the running scanner."""

    def __init__(self, *, refuse_passive: bool = False, hang_starts: int = 0,
                 fail_with: Exception | None = None) -> None:
        self.refuse_passive = refuse_passive
        self.hang_starts = hang_starts
        self.fail_with = fail_with  # every start raises it (no adapter, no D-Bus)
        self.starts: list[str] = []
        self.stops = 0
        self.or_patterns: list[Any] = []
        self.scanner: FakeBlueZScanner | None = None

    def emit(self, address: str, service_data: bytes, rssi: int = -60, uuid: str = BTHOME_UUID) -> None:
        assert self.scanner is not None, "no scanner is running"
        adv = AdvertisementData(None, {}, {uuid: service_data}, [], None, rssi, ())
        device = self.scanner.create_or_update_device(address, address, None, None, adv)
        self.scanner.call_detection_callbacks(device, adv)


class FakeBlueZScanner(BaseBleakScanner):
    """Stands in for bleak's BleakScannerBlueZDBus: same constructor, start/stop, callbacks."""

    def __init__(self, detection_callback: Any, service_uuids: Any, scanning_mode: str, *, bluez: Any,
                 radio: Radio, **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self.mode = scanning_mode
        self.bluez = bluez
        self.radio = radio

    async def start(self) -> None:
        r = self.radio
        r.starts.append(self.mode)
        r.or_patterns = list(self.bluez.get("or_patterns") or [])
        if r.fail_with is not None:
            raise r.fail_with
        if self.mode == "passive" and r.refuse_passive:
            raise BleakError("passive scanning on Linux requires BlueZ >= 5.56 with --experimental enabled")
        if r.hang_starts > 0:
            r.hang_starts -= 1
            await asyncio.Event().wait()  # a discovery that never answers
        r.scanner = self

    async def stop(self) -> None:
        self.radio.stops += 1
        if self.radio.scanner is self:
            self.radio.scanner = None


def fake_backend(radio: Radio, **kw: Any) -> BleakBackend:
    return BleakBackend(scanner_cls=FakeBlueZScanner, scanner_kwargs={"radio": radio}, **kw)


async def until(cond: Callable[[], bool]) -> None:
    """Poll a condition the code under test has no event for (health state, restart counts)."""
    async with asyncio.timeout(scaled(5)):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def take(it: AsyncIterator[Reading], n: int) -> list[Reading]:
    async with asyncio.timeout(5):
        return [await anext(it) for _ in range(n)]


def values(readings: list[Reading]) -> dict[str, int | str]:
    return {(r.quantity.value + (f":{r.signal}" if r.signal else "")): r.value for r in readings}


@pytest.mark.parametrize("vec", V.PLAIN, ids=lambda v: v.name)
async def test_published_vectors_become_milli_unit_readings_through_the_scanner_callback(
    vec: V.Vector, clock: ManualClock
) -> None:
    radio = Radio()
    backend = fake_backend(radio)
    async with BTHomeSource("plug", clock=clock, address=vec.address, backend=backend) as src:
        await backend.wait_started()
        radio.emit(vec.address, vec.service_data, rssi=-71)
        got = values(await take(aiter(src), 2))
    expected: dict[str, int | str] = {"rssi_dbm": -71}
    for q, v in vec.milli.items():
        if q == "signal":
            expected["signal:power"] = "on"
        else:
            expected[q] = v
    assert got == expected


async def test_encrypted_power_and_energy_adverts_become_readings(clock: ManualClock) -> None:
    key = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    adverts = [
        ReplayAdvert(PLUG, build_service_data(packet_id=i, power_mw=1_234_560 + i * 10, energy_mwh=(7_000 + i) * 1000,
                                              bindkey=key, mac=PLUG, counter=100 + i), t_s=float(i))
        for i in range(3)
    ]
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=ReplayBackend(adverts, clock=clock),
                            bindkey=key) as src:
        got = await take(aiter(src), 9)
    power = [r.value for r in got if r.quantity is Quantity.POWER_MW]
    energy = [r.value for r in got if r.quantity is Quantity.ENERGY_MWH]
    assert power == [1_234_560, 1_234_570, 1_234_580]
    assert energy == [7_000_000, 7_001_000, 7_002_000]
    assert [r.t_mono_ns for r in got if r.quantity is Quantity.POWER_MW] == [
        1_000_000_000, 2_000_000_000, 3_000_000_000
    ]


async def test_bluez_repeats_and_same_packet_ids_give_one_set_of_readings(clock: ManualClock) -> None:
    radio = Radio()
    backend = fake_backend(radio)
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend) as src:
        await backend.wait_started()
        first = build_service_data(packet_id=41, power_mw=500_000)
        radio.emit(PLUG, first, rssi=-60)
        radio.emit(PLUG, first, rssi=-61)  # BlueZ: RSSI changed, same cached service data
        clock.advance(30)
        radio.emit(PLUG, first, rssi=-62)  # long after bthome-ble's 4 s window: still a repeat
        radio.emit(PLUG, build_service_data(packet_id=41, power_mw=600_000))  # same packet id
        radio.emit(PLUG, build_service_data(packet_id=42, power_mw=700_000))
        got = await take(aiter(src), 4)
        assert src.duplicates == 3
    assert [r.value for r in got if r.quantity is Quantity.POWER_MW] == [500_000, 700_000]
    assert not src.health.errors


async def test_bad_input_is_counted_by_kind_logged_once_and_never_becomes_a_reading(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    radio = Radio()
    backend = fake_backend(radio)
    key = V.WRONG_KEY.bindkey
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend, bindkey=key) as src:
        await backend.wait_started()
        mac_nonce = {"mac": PLUG}
        radio.emit(PLUG, V.WRONG_KEY.service_data)  # published advert, not this key
        bad = bytearray(build_service_data(packet_id=1, power_mw=1000, bindkey=key, counter=1, **mac_nonce))
        bad[2] ^= 0xFF
        radio.emit(PLUG, bytes(bad))  # corrupted ciphertext
        for n in range(2):  # wrong length, twice: counted twice, logged once
            short = build_service_data(packet_id=2 + n, power_mw=1000, bindkey=key, counter=2 + n, **mac_nonce)
            radio.emit(PLUG, short[:4])
        radio.emit(PLUG, b"\x40\x0b\x02\x1b\x00")  # plain advert although a bindkey is configured
        radio.emit(PLUG, b"\x10\x00", uuid="0000feaa-0000-1000-8000-00805f9b34fb")  # not BTHome at all
        # an unknown object id, inside a correctly encrypted advert
        unknown = build_service_data(packet_id=9, extra=[(0xFE, b"\x01")], bindkey=key, counter=9, **mac_nonce)
        radio.emit(PLUG, unknown)
        radio.emit("11:22:33:44:55:66", b"\x40\x0b\x02\x1b\x00")  # another device: not ours, not an error
        good = build_service_data(packet_id=10, power_mw=2_000, bindkey=key, counter=10, **mac_nonce)
        radio.emit(PLUG, good)
        got = await take(aiter(src), 2)
    assert values(got) == {"power_mw": 2_000, "rssi_dbm": -60}
    assert dict(src.health.errors) == {
        "bad_mic": 2, "wrong_length": 2, "not_encrypted": 1, "not_bthome": 1, "unknown_object": 1
    }
    wrong_length_lines = [r for r in caplog.records if "too short" in r.getMessage() or "needs" in r.getMessage()]
    assert len(wrong_length_lines) == 1
    assert all(r.getMessage().startswith(f"plug: advert from {PLUG} ignored:") for r in caplog.records
               if r.name == "koto.drivers.bthome")


async def test_a_silent_device_turns_stale_with_one_log_line_and_no_invented_readings(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    radio = Radio()
    backend = fake_backend(radio)
    src = BTHomeSource("plug", clock=clock, address=PLUG, backend=backend, stale_after_s=300,
                       check_interval_s=0.01)
    async with src:
        it = aiter(src)
        await backend.wait_started()
        radio.emit(PLUG, build_service_data(packet_id=1, power_mw=100_000))
        await take(it, 2)
        clock.advance(299)
        pending = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)
        assert src.health.state == "ok"
        clock.advance(2)
        await until(lambda: src.health.state == "degraded")
        await asyncio.sleep(0.05)
        assert not pending.done()  # nothing invented while silent
        stale_lines = [r for r in caplog.records if "no advert from" in r.getMessage()]
        assert len(stale_lines) == 1
        radio.emit(PLUG, build_service_data(packet_id=2, power_mw=0))
        first = await asyncio.wait_for(pending, scaled(5))
        assert first.value == 0 and src.health.state == "ok"


async def test_passive_scanning_uses_an_or_pattern_on_the_bthome_uuid(clock: ManualClock) -> None:
    radio = Radio()
    backend = fake_backend(radio)
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend):
        await backend.wait_started()
    assert radio.starts == ["passive"]
    assert [(p.start_position, int(p.ad_data_type), p.content_of_pattern) for p in radio.or_patterns] == [
        (0, 0x16, b"\xd2\xfc")
    ]


async def test_without_passive_support_it_falls_back_to_active_scanning_with_one_log_line(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    radio = Radio(refuse_passive=True)
    backend = fake_backend(radio)
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend) as src:
        await backend.wait_started()
        radio.emit(PLUG, V.PLAIN[0].service_data)
        got = await take(aiter(src), 2)
    assert radio.starts == ["passive", "active"] and backend.mode == "active"
    assert values(got)["power_mw"] == 69_140
    assert len([r for r in caplog.records if "falling back to active" in r.getMessage()]) == 1


async def test_a_stuck_start_is_stopped_and_retried_and_counted_as_a_reconnect(clock: ManualClock) -> None:
    radio = Radio(hang_starts=1)
    backend = fake_backend(radio, start_timeout_s=0.05, retry_initial_s=0.01)
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend, check_interval_s=0.01) as src:
        await backend.wait_started()
        assert radio.starts == ["passive", "passive"] and radio.stops >= 1
        radio.emit(PLUG, V.PLAIN[0].service_data)
        await take(aiter(src), 2)
        assert backend.start_failures == 1
        assert src.health.reconnects == 1


async def test_the_scanner_restarts_after_a_silence_and_each_restart_is_a_reconnect(clock: ManualClock) -> None:
    radio = Radio()
    backend = fake_backend(radio, restart_after_s=0.05)
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend, check_interval_s=0.01) as src:
        it = aiter(src)
        await until(lambda: len(radio.starts) >= 3)
        await until(lambda: radio.scanner is not None)
        radio.emit(PLUG, V.PLAIN[0].service_data)
        await take(it, 2)
        assert src.health.reconnects >= 2
        assert radio.stops >= 2


async def test_two_sources_share_one_scanner_and_each_gets_only_its_device(clock: ManualClock) -> None:
    radio = Radio()
    backend = fake_backend(radio)
    other = "11:22:33:44:55:66"
    async with BTHomeSource("a", clock=clock, address=PLUG, backend=backend) as a, \
            BTHomeSource("b", clock=clock, address=other, backend=backend) as b:
        await backend.wait_started()
        radio.emit(PLUG, build_service_data(power_mw=1_000))
        radio.emit(other, build_service_data(power_mw=2_000))
        ga, gb = await take(aiter(a), 2), await take(aiter(b), 2)
        assert len(radio.starts) == 1
    assert values(ga)["power_mw"] == 1_000 and values(gb)["power_mw"] == 2_000
    assert radio.stops == 1  # the last source out stops the shared scanner


def test_config_builds_through_the_registry_and_names_bad_keys(clock: ManualClock) -> None:
    backend = ReplayBackend(clock=clock)
    src = build_source("plug", {"driver": "bthome", "address": PLUG.lower(),
                                "bindkey": "231d39c1d7cc1ab1aee224cd096db932", "stale_after_s": 60},
                       clock=clock, ble=backend)
    assert isinstance(src, BTHomeSource) and src.address == PLUG and src.stale_after_s == 60
    bad = [
        ({"address": "not-a-mac"}, "address"),
        ({"address": PLUG, "bindkey": "abcd"}, "bindkey"),
        ({"address": PLUG, "bindkey": "zz" * 16}, "bindkey"),
        ({"address": PLUG, "stale_after_s": 0}, "stale_after_s"),
        ({"address": PLUG, "scanning": "loud"}, "scanning"),
        ({"address": PLUG, "colour": "red"}, "colour"),
    ]
    for cfg, key in bad:
        with pytest.raises(DriverConfigError) as e:
            build_source("plug", {"driver": "bthome", **cfg}, clock=clock, file="/etc/koto/koto.toml")
        assert e.value.key == key and "koto.toml" in str(e.value)


async def test_a_newer_object_id_at_the_end_is_read_up_to_and_said_once(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A plug on a newer BTHome minor version appends an id this Koto does not know: its power is still read (the
    spec's rule), nothing is counted as an error, and the journal says once what is skipped."""
    caplog.set_level(logging.WARNING)
    radio = Radio()
    backend = fake_backend(radio)
    async with BTHomeSource("plug", clock=clock, address=PLUG, backend=backend) as src:
        await backend.wait_started()
        for packet in (1, 2):
            radio.emit(PLUG, bytes([0x40, 0x00, packet, 0x0B, 0x02, 0x1B, 0x00, 0xFE, 0x01]))
        got = await take(aiter(src), 4)  # power and rssi of each advert
    assert [r.value for r in got if r.quantity.value == "power_mw"] == [69_140, 69_140]
    assert src.health.errors == {} and src.health.state == "stopped"
    said = [r.getMessage() for r in caplog.records if "0xfe" in r.getMessage()]
    assert len(said) == 1 and "values before it are read" in said[0]
