"""BLE scanner backends: one supervised bleak scanner per adapter, shared by every BTHome source on it.

Every advert reaches subscribers through one path: a bleak `BleakScanner` calls `BleakBackend._on_advert(device,
advertisement_data)`, which hands the pair to each subscriber. Which bleak scanner backend sits under the facade is
injected the way bleak itself does it (`BleakScanner(..., backend=...)`):

- `BleakBackend()` — production: bleak picks BlueZ on Linux.
- `BleakBackend(scanner_cls=SomeFake)` — tests fake only the BlueZ boundary (a `BaseBleakScanner` subclass).
- `ReplayBackend(adverts, clock=...)` — the demo and tests: a `ReplayScanner` replays (address, service data,
  rssi) adverts on the given clock, through the same facade and callback.

Why one shared scanner: BlueZ keeps one discovery session per D-Bus client, so two active-mode scanners in one
process stop each other; one scanner fanning out to per-device sources avoids that and halves the radio work.

Supervision (in one place, like aiomqtt's reconnect):
- passive scanning (BlueZ advertisement monitor with an or-pattern on BTHome's 16-bit service-data UUID 0xFCD2)
  when `scanning="auto"` or `"passive"`; in "auto" mode a passive start that bleak refuses (BlueZ < 5.56 or
  bluetoothd without --experimental) falls back to active scanning, with one plain log line;
- a start that fails or hangs (a discovery left stuck by a crashed process) is stopped and retried with capped,
  jittered backoff on a fresh scanner object;
- no advert at all for `restart_after_s` restarts the scanner. Every restart is counted in `restarts` and in each
  subscriber's `Subscription.restarts` (sources report it as reconnects).
Supervision timing uses the event loop's clock (it is about the radio, not about appliance time).

bleak is imported only when a scanner is made, so importing this module costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from koto.clock import Clock

from .bthome import BTHOME_UUID

log = logging.getLogger("koto.drivers.ble")

Scanning = Literal["auto", "passive", "active"]
AdvertCallback = Callable[[Any, Any], None]  # (bleak BLEDevice, bleak AdvertisementData) -> None


class Subscription:
    """A subscriber's handle: counts the scanner restarts that happened while it was subscribed."""

    def __init__(self, backend: BleakBackend, callback: AdvertCallback) -> None:
        self.backend = backend
        self.callback = callback
        self.restarts = 0

    async def close(self) -> None:
        await self.backend.unsubscribe(self)


class BleakBackend:
    """A supervised bleak scanner shared by subscribers. Start it by subscribing; it stops with the last one."""

    def __init__(
        self,
        *,
        adapter: str | None = None,
        scanning: Scanning = "auto",
        restart_after_s: float = 120.0,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        scanner_cls: type[Any] | None = None,
        scanner_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if scanning not in ("auto", "passive", "active"):
            raise ValueError(f"scanning must be auto, passive or active, not {scanning!r}")
        self.adapter = adapter
        self.scanning: Scanning = scanning
        self.mode: Literal["passive", "active"] = "active" if scanning == "active" else "passive"
        self.restart_after_s = restart_after_s
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.restarts = 0
        self.start_failures = 0
        self.last_failure = ""  # why the scanner last failed to start, in words (discover says it)
        self.failure_lasts = False  # that reason will not go away by waiting (no D-Bus at all): discover stops
        self.adverts = 0
        self.running = False
        self._scanner_cls = scanner_cls
        self._scanner_kwargs = dict(scanner_kwargs or {})
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._scanner: Any = None
        self._heard = asyncio.Event()
        self._started = asyncio.Event()

    @property
    def where(self) -> str:
        return self.adapter or "the default adapter"

    # --- subscribers -----------------------------------------------------------------------------------------

    def subscribe(self, callback: AdvertCallback) -> Subscription:
        """Receive every advert as (BLEDevice, AdvertisementData). The first subscriber starts the scanner."""
        sub = Subscription(self, callback)
        self._subs.append(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"ble-scanner-{self.where}")
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        if not self._subs:
            await self.aclose()

    @property
    def started(self) -> bool:
        """Whether the scanner has started at least once."""
        return self._started.is_set()

    async def wait_started(self) -> None:
        """Wait until the scanner has started once (tests and `discover` use it)."""
        await self._started.wait()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_quietly()

    # --- the one callback path --------------------------------------------------------------------------------

    def _on_advert(self, device: Any, adv: Any) -> None:
        """bleak's detection callback. Never raises into bleak: a failing subscriber is logged and skipped."""
        self._heard.set()
        self.adverts += 1
        for sub in list(self._subs):
            try:
                sub.callback(device, adv)
            except Exception:
                log.exception("BLE advert handler failed for %s; advert skipped", getattr(device, "address", "?"))

    # --- supervision ------------------------------------------------------------------------------------------

    def _make_scanner(self) -> Any:
        from bleak import BleakScanner
        from bleak.args.bluez import BlueZScannerArgs, OrPattern
        from bleak.assigned_numbers import AdvertisementDataType

        bluez: BlueZScannerArgs = {}
        if self.adapter:
            bluez["adapter"] = self.adapter
        if self.mode == "passive":
            # BTHome puts its data in a 16-bit service-data AD structure whose first two bytes are 0xFCD2 (LE).
            bluez["or_patterns"] = [OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc")]
        return BleakScanner(
            self._on_advert, None, self.mode, bluez=bluez, backend=self._scanner_cls, **self._scanner_kwargs
        )

    async def _stop_quietly(self) -> None:
        scanner, self._scanner = self._scanner, None
        self.running = False
        if scanner is None:
            return
        try:
            async with asyncio.timeout(self.stop_timeout_s):
                await scanner.stop()
        except Exception as e:  # a stuck or already-gone discovery; the next start uses a fresh scanner
            log.debug("stopping the BLE scanner on %s failed: %r", self.where, e)

    def _count_restart(self) -> None:
        self.restarts += 1
        for sub in self._subs:
            sub.restarts += 1

    async def _start_once(self) -> None:
        """Make a scanner and start it; on any failure stop it again and re-raise."""
        try:
            self._scanner = self._make_scanner()
            async with asyncio.timeout(self.start_timeout_s):
                await self._scanner.start()
        except BaseException:
            await self._stop_quietly()
            raise

    async def _supervise(self) -> None:
        from bleak.exc import BleakError

        delay = self.retry_initial_s
        while True:
            try:
                await self._start_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if self.mode == "passive" and self.scanning == "auto" and isinstance(e, BleakError):
                    log.warning("passive BLE scanning is not available on %s (%s); falling back to active scanning",
                                self.where, reason)
                    self.mode = "active"
                    continue
                self.start_failures += 1
                if isinstance(e, TimeoutError):
                    reason = f"no answer within {self.start_timeout_s:g} s"
                elif isinstance(e, FileNotFoundError):  # bleak's BlueZ backend found no socket to the system bus
                    reason = "no D-Bus system bus to reach BlueZ (is dbus running? not in this container?)"
                self.last_failure = reason
                self.failure_lasts = isinstance(e, FileNotFoundError)
                log.warning("could not start BLE scanning on %s (%s); retrying in %.1f s", self.where, reason, delay)
                self._count_restart()
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = self.retry_initial_s
            self.running = True
            log.info("BLE scanning started on %s (%s)", self.where, self.mode)
            self._started.set()
            while True:
                self._heard.clear()
                try:
                    async with asyncio.timeout(self.restart_after_s):
                        await self._heard.wait()
                except TimeoutError:
                    break
            log.warning("no BLE adverts on %s for %.0f s; restarting the scanner", self.where, self.restart_after_s)
            await self._stop_quietly()
            self._count_restart()


# ---------------------------------------------------------------------------------------------------------------
# Replay: the demo's and the tests' radio


@dataclass(frozen=True, slots=True)
class ReplayAdvert:
    """One advert to replay `t_s` seconds (on the replay's clock) after the replay started; None = at once."""

    address: str
    service_data: bytes
    rssi: int = -60
    t_s: float | None = None
    name: str | None = None
    uuid: str = BTHOME_UUID


class Replay:
    """A script of adverts, played on a clock. Survives scanner restarts: it resumes where it was.

    Waiting is `clock.sleep(dt)`: a ScaledClock sleeps dt/factor, a ManualClock is moved forward by `dt`, so a test
    replays hours of adverts instantly and in order.
    """

    def __init__(self, adverts: Iterable[ReplayAdvert] = (), *, clock: Clock) -> None:
        self.clock = clock
        self._pending: list[ReplayAdvert] = list(adverts)
        self._more = asyncio.Event()
        self._t = 0.0
        self.delivered = 0
        self.idle = asyncio.Event()

    def push(self, advert: ReplayAdvert) -> None:
        """Add an advert (the demo's live appliances push theirs as they change)."""
        self._pending.append(advert)
        self.idle.clear()
        self._more.set()

    async def _wait_until(self, t_s: float) -> None:
        dt = t_s - self._t
        if dt > 0:
            await self.clock.sleep(dt)
            self._t = t_s
        await asyncio.sleep(0)

    async def run(self, scanner: Any) -> None:
        """Deliver adverts to `scanner.deliver` as they fall due; then wait for pushed ones."""
        while True:
            while self._pending:
                adv = self._pending[0]
                if adv.t_s is not None:
                    await self._wait_until(adv.t_s)
                self._pending.pop(0)
                scanner.deliver(adv)
                self.delivered += 1
                await asyncio.sleep(0)
            self.idle.set()
            self._more.clear()
            await self._more.wait()


def _replay_scanner_class() -> type[Any]:
    from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

    class ReplayScanner(BaseBleakScanner):
        """A bleak scanner backend that plays a `Replay` instead of listening to a radio."""

        def __init__(self, detection_callback: Any, service_uuids: Any, scanning_mode: str, *,
                     bluez: Mapping[str, Any], replay: Replay, **kwargs: Any) -> None:
            super().__init__(detection_callback, service_uuids)
            self.scanning_mode = scanning_mode
            self.or_patterns = bluez.get("or_patterns")
            self.replay = replay
            self._task: asyncio.Task[None] | None = None

        async def start(self) -> None:
            self.seen_devices = {}
            self._task = asyncio.get_running_loop().create_task(self.replay.run(self))

        async def stop(self) -> None:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        def deliver(self, advert: ReplayAdvert) -> None:
            data = AdvertisementData(
                local_name=advert.name, manufacturer_data={}, service_data={advert.uuid: advert.service_data},
                service_uuids=[], tx_power=None, rssi=advert.rssi, platform_data=(),
            )
            device = self.create_or_update_device(advert.address, advert.address, advert.name, None, data)
            self.call_detection_callbacks(device, data)

    return ReplayScanner


class ReplayBackend(BleakBackend):
    """`BleakBackend` over a `ReplayScanner`: same facade, same callback path, adverts from a script."""

    def __init__(self, adverts: Iterable[ReplayAdvert] = (), *, clock: Clock, scanning: Scanning = "auto",
                 **kwargs: Any) -> None:
        self.replay = Replay(adverts, clock=clock)
        kwargs.setdefault("restart_after_s", 3600.0)
        super().__init__(scanning=scanning, scanner_cls=_replay_scanner_class(),
                         scanner_kwargs={"replay": self.replay}, **kwargs)
