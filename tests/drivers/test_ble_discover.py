"""`discover_ble` lists replayed BTHome devices with what they report and prints a config block that builds."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from drivers.base import build_source
from drivers.ble import BTHomeSource
from drivers.ble_backend import ReplayAdvert, ReplayBackend
from drivers.bthome import build_service_data
from drivers.discover_ble import config_block, discover_ble, format_report
from drivers.errors import BackendUnavailable, DriverConfigError
from gateway.discover import discover_report
from koto.clock import ManualClock
from tests.data import bthome_vectors as V
from tests.drivers.test_ble_source import Radio, fake_backend

PLUG = "A4:C1:38:8D:18:B2"


async def test_discover_lists_replayed_devices_and_prints_a_config_block_that_builds() -> None:
    clock = ManualClock()
    adverts = [
        ReplayAdvert(PLUG, build_service_data(packet_id=1, power_mw=45_670, energy_mwh=12_000_000), rssi=-50,
                     t_s=0.0, name="AC plug"),
        ReplayAdvert(PLUG, build_service_data(packet_id=2, power_mw=45_680, energy_mwh=12_001_000), rssi=-52,
                     t_s=2.0, name="AC plug"),
        ReplayAdvert(V.ENCRYPTED.address, V.ENCRYPTED.service_data, rssi=-80, t_s=3.0),
        ReplayAdvert("22:22:22:22:22:22", b"\x02\x01\x06", rssi=-40, t_s=4.0,
                     uuid="0000feaa-0000-1000-8000-00805f9b34fb"),  # an Eddystone beacon: not listed
    ]
    backend = ReplayBackend(adverts, clock=clock)
    # 2 s of wall time for what the ManualClock replays at once: the first advert imports bthome-ble's parser on the
    # loop, which took longer than the 0.2 s this waited before on a loaded machine (the encrypted one was missed).
    found = await discover_ble(2.0, backend=backend)

    assert [d.address for d in found] == [PLUG, V.ENCRYPTED.address]
    plug, sensor = found
    assert plug.name == "AC plug" and plug.adverts == 2 and plug.rssi == -52 and not plug.encrypted
    assert plug.values == {"power": 45.68, "energy": 12.001}
    assert sensor.encrypted and sensor.values == {}

    report = format_report(found, 0.2)
    assert "2 BTHome device(s) heard" in report and "power=45.68" in report and "needs its bindkey" in report

    cfg = tomllib.loads(config_block(found))
    names = list(cfg["appliance"]["sources"])
    assert names == ["ac-plug-18b2", "bthome-80a5"]
    assert cfg["appliance"]["sources"]["bthome-80a5"]["bindkey"] == ""  # to fill in; the source refuses it until then
    src = build_source(names[0], cfg["appliance"]["sources"][names[0]], clock=clock, ble=backend)
    assert isinstance(src, BTHomeSource) and src.address == PLUG
    with pytest.raises(DriverConfigError) as e:
        build_source(names[1], cfg["appliance"]["sources"][names[1]], clock=clock, ble=backend)
    assert e.value.key == "bindkey"


async def test_discover_says_what_to_check_when_nothing_is_heard() -> None:
    found = await discover_ble(0.05, backend=ReplayBackend(clock=ManualClock()))
    assert found == []
    assert "No BTHome device heard" in format_report(found, 0.05)


NO_DBUS = FileNotFoundError(2, "No such file or directory")  # what bleak raises where the system bus socket is absent


async def test_a_scanner_that_never_starts_is_an_error_not_an_empty_room() -> None:
    """No adapter or no D-Bus: hearing nothing says nothing about the devices, so discover says it could not listen
    (support reads `koto discover --no-serial` as "is the plug still advertising?")."""
    backend = fake_backend(Radio(fail_with=NO_DBUS), retry_initial_s=0.01)
    with pytest.raises(BackendUnavailable, match="could not scan on the default adapter: no D-Bus system bus"):
        await discover_ble(0.1, backend=backend)


async def test_without_a_d_bus_system_bus_discover_stops_listening_at_once() -> None:
    """No system bus will not appear by waiting: the installer gets the answer after the first failed start, not
    after --ble-seconds (10 s by default, up to 600)."""
    backend = fake_backend(Radio(fail_with=NO_DBUS), retry_initial_s=0.01)
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(BackendUnavailable, match="no D-Bus system bus"):
        await discover_ble(30.0, backend=backend)
    assert asyncio.get_running_loop().time() - t0 < 5.0


async def test_koto_discover_says_bluetooth_is_missing_and_does_not_advise_moving_the_device() -> None:
    report = await discover_report(ports=[], addresses=[], bauds=[], timeout_s=0.1, ble_seconds=0.1, gpio_pins=[],
                                   pin_factory=None, ble_backend=fake_backend(Radio(fail_with=NO_DBUS),
                                                                              retry_initial_s=0.01))
    assert "BLE scan not possible here: could not scan on the default adapter: no D-Bus system bus" in report.text
    assert "Bluetooth adapter and bluetoothd" in report.next_step and "closer" not in report.next_step
