"""`koto run`: the gateway as one asyncio process — sources, meters, ledger and sync.

    sources (one task each, supervised) ──► queue ──► meter loop ──► ledger (batched, one fsync per batch)
                                                        │                 │
                                                        └── events (log)  └──► sync.notify() ──► MQTT

One `TaskGroup`: a task per source, the meter loop, a ticker (time alone closes interims and cycles), and the sync.
A failing source is restarted with capped, jittered backoff and counted; it never takes the others down. Meter and
pricing state are checkpointed in the same transaction as the records they produced, so a restart — clean, kill -9
or power loss — resumes exactly where the ledger ends: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from drivers.base import Source, build_source, driver_class
from drivers.errors import DriverConfigError
from koto import __version__
from koto.clock import Clock, Now
from koto.reading import Quantity, Reading
from metering.energy import EnergySpec
from metering.errors import LedgerError, LedgerGone
from metering.ledger import Ledger
from metering.meter import ApplianceMeter, FeedResult, MeterEvent
from metering.pricing import Pricing
from metering.profile import Profile, builtin_profile, load_profile, parse_profile
from metering.records import CLOCK_TYPE, LIFECYCLE_TYPE, Draft, TimeStatus

from .ack_hold import AckHold
from .bthome_counters import EncryptionCounters
from .checkpointing import CheckpointPlan
from .config import ApplianceConfig, GatewayConfig
from .errors import ConfigError
from .held import report_unstored
from .housekeeping import Housekeeper
from .ledger_lending import lend_to_readers
from .pairing import PairingMode
from .power_log import PowerLog
from .sdnotify import Notifier
from .service import ServiceNotify
from .state import StateDir
from .status import StatusFile
from .status_build import SnapshotBuilder
from .summary import HourlySummary
from .supervisor import SourceState, StopDeadline, Supervisor, stop_tasks
from .sync import Sync

log = logging.getLogger("koto.gateway")

PRICING_CHECKPOINT = "pricing"
QUEUE_MAX = 10_000
STOP_DRAIN_S = 3.0


def meter_checkpoint_name(appliance: str) -> str:
    return f"meter:{appliance}"


def load_appliance_profile(app: ApplianceConfig, file: str) -> Profile:
    try:
        if app.profile.endswith(".toml"):
            return load_profile(app.profile)
        return builtin_profile(app.profile)
    except (KeyError, LookupError) as e:
        raise ConfigError(file, f"appliance.{app.id}.profile", f"{e}") from e


def _status(now: Now) -> TimeStatus:
    return TimeStatus.SYNCED if now.synced else TimeStatus.UNSYNCED


@dataclass
class GatewayStats:
    readings: int = 0
    records: int = 0
    batches: int = 0
    unrouted: int = 0
    append_failures: int = 0
    events: list[str] = field(default_factory=list)


class Gateway:
    """Everything `koto run` does, built from a `GatewayConfig`.

    `backends` are the hardware seams handed to drivers (`pin_factory` for GPIO, `ble` for a BLE scanner backend);
    tests and the demo pass simulated ones, production lets each driver choose. `on_event` receives every meter
    event (function started, cycle ended, rejected reading...) — the demo prints them.
    """

    def __init__(self, cfg: GatewayConfig, *, clock: Clock, backends: Mapping[str, Any] | None = None,
                 on_event: Callable[[MeterEvent], None] | None = None, sync_enabled: bool = True,
                 runtime_dir: Path | None = None, deadline: StopDeadline | None = None,
                 notifier: Notifier | None = None, web: bool = False) -> None:
        self.cfg = cfg
        self.web = web and cfg.web_port > 0  # the household page (gateway/web/): `koto run` turns it on
        self.pairing = PairingMode()  # shared by the page and the button: "add an appliance" is offered
        self._tg: asyncio.TaskGroup | None = None  # while running: where a paired source's task is started
        self._workers: list[asyncio.Task[Any]] = []
        self.notifier = notifier or Notifier(environ={})  # systemd's, from `koto run`; silent otherwise
        self.deadline = deadline  # `koto run` arms one; in-process users (tests, the demo) have none
        self.supervisor = Supervisor(asyncio.Event(), deadline=deadline)
        self.status = StatusFile(runtime_dir) if runtime_dir is not None else None  # `koto status` reads it
        self.clock = clock
        self.backends = dict(backends or {})
        self.on_event = on_event
        self.state = StateDir(cfg.state_dir)
        self.stats = GatewayStats()
        self.sync: Sync | None = None
        self.acks: AckHold | None = None  # with a cloud: its acks, written with the next records (ack_hold.py)
        self._sync_enabled = sync_enabled and cfg.cloud is not None
        # exclusive: no -shm on the SD card; readers in other processes borrow it (ledger_lending.py)
        self.ledger = Ledger.open(self.state.ledger, gateway_id=cfg.id, key=self.state.private_key(),
                                  gateway_subject=cfg.subject, exclusive=True)
        try:
            self._build(cfg)
        except BaseException:  # a bad profile or source config: release the ledger (and its writer lock)
            self.ledger.close()
            raise
        # recent power per appliance, in RAM and on tmpfs, for `koto profile check/suggest`
        self.power_log = (PowerLog(runtime_dir, {aid: m.spec for aid, m in self.meters.items()})
                          if runtime_dir is not None else None)
        self._household_init()

    def _build(self, cfg: GatewayConfig) -> None:
        self._profiles: dict[str, tuple[int, str]] = {}
        self.pricing = self._load_pricing()
        self.counters = EncryptionCounters.load(self.ledger)  # BTHome replay memory, saved with each batch
        self.meters: dict[str, ApplianceMeter] = {}
        self.subjects: dict[str, str] = {}
        for app in cfg.appliances:
            profile = self._profile_for(app)
            spec = EnergySpec(kind=app.energy_kind, source=app.energy, imp_per_kwh=app.imp_per_kwh or 1000,
                              max_gap_s=app.max_gap_s, channel=app.channel)
            self.meters[app.id] = ApplianceMeter(app.id, profile, energy=spec, policy=self.pricing,
                                                 interim_s=app.interim_s, idle_interim_s=app.idle_interim_s,
                                                 state=self.ledger.checkpoint(meter_checkpoint_name(app.id)))
            self.subjects[app.id] = app.subject
        self.owner = cfg.source_owner()
        self.sources = {name: SourceState(name, self.owner[name], str(scfg["driver"]))
                        for app in cfg.appliances for name, scfg in app.sources.items()}
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(QUEUE_MAX)
        self._pending: list[Draft] = []
        # What each batch writes, and when: the SD-card write budget (gateway/checkpointing.py)
        self._ckpt = CheckpointPlan(self.meters, cfg.checkpoint_s, hold_s=cfg.hold_s, hold_use_s=cfg.hold_use_s)
        self._clock_synced: bool | None = None
        self._stopping = False
        self._inflight: tuple[asyncio.Future[int], list[Draft]] | None = None
        self._inflight_since = 0.0
        self._append_failing = False
        for name in self.sources:  # fail fast: a driver's config error names the file and key before we start
            self._build_source(name)
        if self._sync_enabled:  # built now so that a bad [cloud] table stops the start with file and key
            self.sync = self._sync()
        self.relays: dict[str, Any] = {}
        for app in cfg.appliances:
            if app.relay:
                from drivers.gpio.relay import Relay

                try:
                    self.relays[app.id] = Relay.from_config(f"{app.id}-relay", app.relay,
                                                            pin_factory=self.backends.get("pin_factory"))
                except DriverConfigError as e:
                    raise DriverConfigError(e.source, f"appliance.{app.id}.relay.{e.key}", e.problem, cfg.file) from e

    # ------------------------------------------------------------------------------------------ set-up

    def _load_pricing(self) -> Pricing:
        """Pricing from its checkpoint, then whatever a downlink committed since (tariffs, entitlements, profiles).

        A command is committed to the ledger before pricing changes in memory, and the pricing snapshot is saved
        only with the next batch, so the ledger's documents are re-applied at every start (a no-op when known).
        """
        from .config_tariff import apply_config_tariff
        from .downlink import restore_from_ledger

        # An appliance behind an enforcement relay is gated as a whole: without a grant it may not start.
        pricing = Pricing(tz=self.cfg.tz, gated=[f"{a.id}/*" for a in self.cfg.appliances if a.relay])
        state = self.ledger.checkpoint(PRICING_CHECKPOINT)
        if state:
            pricing.restore(state)
        restore_from_ledger(self.ledger, pricing, on_profile=self._remember_profile)
        apply_config_tariff(self.cfg, self.ledger, pricing)  # [tariff] edits: docs/pricing.md
        return pricing

    def _remember_profile(self, name: str, version: int, toml_text: str) -> None:
        known = self._profiles.get(name)
        if known is None or version > known[0]:
            self._profiles[name] = (version, toml_text)

    def _profile_for(self, app: ApplianceConfig) -> Profile:
        """The configured profile, or a newer version of it that the cloud sent (the field customisation)."""
        profile = load_appliance_profile(app, self.cfg.file)
        sent = self._profiles.get(profile.name)
        if sent is not None and sent[0] > profile.version:
            profile = parse_profile(tomllib.loads(sent[1]), file=f"ledger profile {profile.name} v{sent[0]}")
            log.info("%s: using profile %s version %d from the cloud", app.id, profile.name, profile.version)
        return profile

    def _source_cfg(self, name: str) -> Mapping[str, Any]:
        return next(a.sources[name] for a in self.cfg.appliances if name in a.sources)

    def _build_source(self, name: str) -> Source:
        return build_source(name, self._source_cfg(name), clock=self.clock, file=self.cfg.file,
                            **self._source_kwargs(name))

    def _source_kwargs(self, name: str) -> dict[str, Any]:
        kw = dict(self.backends, counters=self.counters)  # every driver's from_config ignores what it does not take
        app = self.cfg.appliances[[a.id for a in self.cfg.appliances].index(self.owner[name])]
        if driver_class(self.sources[name].driver).takes_start_count and app.energy == name:
            # The pulse count continues from the meter's checkpoint: a restart loses nothing already counted.
            kw["start_count"] = self.meters[app.id].last_raw or 0
        if driver_class(self.sources[name].driver).takes_channel and app.energy == name:
            kw["channel"] = app.channel  # what the meter takes is read on every poll, diagnostics less often
        return kw

    def _sync(self) -> Sync:
        from koto.signing import KeyError_, PublicKey, load_public_key

        from .downlink import DownlinkHandler

        cloud = self.cfg.cloud
        assert cloud is not None
        keys: list[PublicKey] = []
        for p in cloud.operator_keys:
            try:
                keys.append(load_public_key(p.read_bytes()))
            except OSError as e:
                raise ConfigError(self.cfg.file, "cloud.operator_keys", f"cannot read {p}: {e.strerror}") from e
            except KeyError_ as e:
                raise ConfigError(self.cfg.file, "cloud.operator_keys", f"{p}: {e}") from e
        downlink = None
        if keys:
            downlink = DownlinkHandler(self.ledger, self.pricing, keys, self.cfg.id, self.clock,
                                       on_profile=self._on_profile, appliances=self.meters.keys)
            downlink.add_report_section("gateway", self.report)
        self.acks = AckHold(self.ledger, self.clock)
        try:
            return Sync(cloud, self.ledger, clock=self.clock, downlink=downlink, version=__version__, acks=self.acks)
        except (OSError, ssl.SSLError) as e:  # the CA, certificate or key file is missing or unreadable
            raise ConfigError(self.cfg.file, "cloud", f"cannot load the TLS files (ca, cert, key): {e}") from e

    def _on_profile(self, name: str, version: int, toml_text: str) -> None:
        """A profile came down from the cloud (already committed to the ledger). A meter never changes its rules in
        the middle of a segment: appliances using a profile of that name take it at the gateway's next start."""
        self._remember_profile(name, version, toml_text)
        log.warning("profile %s version %d received; it applies from the next start of the gateway", name, version)

    # ------------------------------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or the task is cancelled); then close segments and write a final batch."""
        stop = stop or asyncio.Event()
        sup = self.supervisor = Supervisor(stop, deadline=self.deadline)  # a task's failure sets `stop` too
        self._lifecycle("start", version=__version__,
                        appliances=",".join(sorted(self.meters)), sources=",".join(sorted(self.sources)))
        self._flush_now()
        relays = contextlib.ExitStack()
        try:
            for relay in self.relays.values():
                relays.enter_context(relay)  # safe state first: the appliance has power
            async with asyncio.TaskGroup() as tg:
                self._tg, workers = tg, self._workers
                for name in self.sources:
                    self.start_source(name)
                workers.append(tg.create_task(sup.guard("ticker", self._ticker()), name="ticker"))
                meter_task = tg.create_task(sup.guard("meter loop", self._meter_loop()), name="meter")
                if self.sync is not None:
                    workers.append(tg.create_task(sup.guard("sync", self.sync.run()), name="sync"))
                snapshot = SnapshotBuilder(self)
                if self.status is not None:
                    workers.append(tg.create_task(sup.guard("status", self.status.run(snapshot)), name="status"))
                workers.append(tg.create_task(sup.guard("summary", HourlySummary(snapshot).run()), name="summary"))
                if self.power_log is not None:
                    workers.append(tg.create_task(sup.guard("power log", self.power_log.run()), name="power-log"))
                workers.append(tg.create_task(sup.guard("housekeeping", self._housekeeper().run()),
                                              name="housekeeping"))
                workers.append(tg.create_task(sup.guard("ledger lending", lend_to_readers(self.ledger)),
                                              name="ledger-lending"))
                if self.web:
                    from .web import serve

                    workers.append(tg.create_task(sup.guard("web page", serve(self)), name="web"))
                self.household.start(tg, sup, workers)  # the LED, the button, Home Assistant
                service = ServiceNotify(self, self.notifier)  # READY now: the ledger is open, the sources started
                workers.append(tg.create_task(sup.guard("systemd notify", service.run()), name="notify"))
                await stop.wait()
                sup.stopping()  # arms the stop deadline, whoever asked for the stop
                service.stopping(str(sup.failure or ""))
                self._stopping = True
                await stop_tasks([w for w in workers if w.get_name() not in ("sync", "home-assistant")])
                await stop_tasks([meter_task])
                await self._settle()  # an append already handed to its thread finishes before the last one
                self._shutdown()
                if self.sync is not None:
                    # A clean stop gives the cloud a moment to ack the last records; what it does not ack in time
                    # stays unacked in the ledger and is sent at the next start.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(STOP_DRAIN_S):
                            await self.sync.wait_acked(self.ledger.head()[0])
                await stop_tasks(workers)
                if self.status is not None:
                    self.status.stopped(snapshot())
                if self.power_log is not None:
                    self.power_log.flush()
        finally:
            relays.close()  # stop: back to the safe state (powered), pins released
            self.ledger.close()
        if sup.failure is not None:
            raise sup.failure  # `koto run` prints it as one line and exits 2

    def start_source(self, name: str) -> asyncio.Task[None]:
        """Start one source's supervised task in the running gateway (at the start, and when pairing adds one)."""
        assert self._tg is not None, "the gateway is not running"
        task = self._tg.create_task(self.supervisor.run_source(self.sources[name], partial(self._build_source, name),
                                                               self._queue.put), name=f"source:{name}")
        self._workers.append(task)
        return task

    def _household_init(self) -> None:
        """The status LED and button, Home Assistant (gateway/household.py): each off unless configured."""
        from .household import Household

        try:
            self.household = Household(self)
        except BaseException:  # a bad [home_assistant] ca: release the ledger (and its writer lock)
            self.ledger.close()
            raise

    def _housekeeper(self) -> Housekeeper:
        """Retention: prunes at a quiet moment (no use running, nothing waiting in memory; see housekeeping.py)."""
        return Housekeeper(self.ledger, self.clock, retain_days=self.cfg.retain_days, local_only=self.cfg.cloud is None,
                           quiet=lambda: not self._pending and not any(m.cycle.running for m in self.meters.values()))

    def _shutdown(self) -> None:
        """A clean stop: feed what is queued, close every open segment, record the stop, one last batch."""
        while not self._queue.empty():
            self._feed(self._queue.get_nowait())
        now = self.clock.now()
        for aid, meter in self.meters.items():
            self._take(aid, meter.close(now))
        self._lifecycle("stop")
        self._ckpt.owe_all()
        self._flush_now()
        report_unstored(self.held_drafts(), {a.id: a.energy_kind for a in self.cfg.appliances})
        log.info("gateway stopped; ledger at seq %d", self.ledger.head()[0])

    async def _meter_loop(self) -> None:
        """Feed readings to meters; append what they produce in batches (one transaction, one fsync each)."""
        batch_s = self.cfg.batch_ms / 1000 / self.clock.factor  # batch_ms of the daemon's clock (compressed in runs)
        while True:
            deadline = time.monotonic() + batch_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(left):
                        reading = await self._queue.get()
                except TimeoutError:
                    break
                self._feed(reading)
            await self._flush()

    async def _ticker(self) -> None:
        """Time alone closes things: interim slices, a cycle's end after its dwell, a stale source."""
        while True:
            await asyncio.sleep(1.0)
            now = self.clock.now()
            self._watch_clock(now)
            for aid, meter in self.meters.items():
                self._take(aid, meter.tick(now))
            self._enforce(now)
            if self.acks is not None:
                self.acks.tick()  # an ack with no records commit to ride with for ACK_HOLD_S is written alone
            if self.sync is not None:  # the optional live view; Sync keeps the newest and rate-limits it
                self.sync.offer_live({aid: {"power_mw": m.power_mw, "function": m.function}
                                      for aid, m in self.meters.items()})

    def _enforce(self, now: Now) -> None:
        """Entitlements, physically: an idle appliance without a grant is kept from starting; a running cycle is
        never cut (the relay driver refuses to), its use is recorded and flagged unentitled instead (§5)."""
        for aid, relay in self.relays.items():
            meter = self.meters[aid]
            # One relay powers the whole appliance: it may start when any of its functions is entitled.
            allowed = any(self.pricing.allows(aid, fn, now.wall).entitled
                          for fn in ("*", *meter.profile.function_names()))
            relay.allow_start(allowed, running=meter.cycle.running)

    def _feed(self, reading: Reading) -> None:
        self.stats.readings += 1
        aid = self.owner.get(reading.source)
        if aid is None:
            self.stats.unrouted += 1
            return
        if reading.quantity not in (Quantity.POWER_MW, Quantity.ENERGY_MWH, Quantity.PULSES, Quantity.SIGNAL):
            return  # diagnostics (voltage, RSSI...) serve the live view, not the ledger
        if self.power_log is not None:
            self.power_log.add(aid, reading)
        self._take(aid, self.meters[aid].feed(reading))
        self._ckpt.fed(aid)  # a pulse count or integrated power is checkpointed within `checkpoint_s`

    def _take(self, aid: str, result: FeedResult) -> None:
        if not result:
            return
        for ev in result.events:
            where = {"appliance": aid, "function": ev.function}
            if ev.kind == "rejected":
                log.warning("%s", ev.message, extra=where)
            else:
                log.info("%s", ev.message, extra=where)
            if self.on_event:
                self.on_event(ev)
        if result.items:
            self._pending.extend(result.drafts(self.subjects[aid]))
            self._ckpt.owe(aid)  # the meter's state goes in the same transaction as its records

    def _watch_clock(self, now: Now) -> None:
        """When the wall clock becomes synchronised, record its offset for this boot (invariant 4)."""
        if self._clock_synced is None:
            self._clock_synced = now.synced
            return
        if now.synced and not self._clock_synced:
            self._pending.append(Draft(CLOCK_TYPE, self.cfg.subject, now.wall, TimeStatus.SYNCED, {
                "event": "clock_synced", "boot_id": now.boot_id, "mono_us": now.mono_ns // 1000,
                "wall_ms": int(now.wall * 1000),
                "offset_ms": int(now.wall * 1000) - now.mono_ns // 1_000_000,
            }))
            log.info("wall clock synchronised; records made before carry time status U and this boot's offset")
        self._clock_synced = now.synced

    def _lifecycle(self, event: str, **data: str | int) -> None:
        now = self.clock.now()
        body: dict[str, Any] = {"event": event, "gateway": self.cfg.id, "boot_id": now.boot_id,
                                "mono_us": now.mono_ns // 1000, "timestatus": str(_status(now)), **data}
        self._pending.append(Draft(LIFECYCLE_TYPE, self.cfg.subject, now.wall, _status(now), body))

    def _checkpoints(self, names: list[str]) -> dict[str, dict[str, Any]]:
        cps = {meter_checkpoint_name(aid): self.meters[aid].snapshot() for aid in names}
        cps[PRICING_CHECKPOINT] = self.pricing.snapshot()
        return cps | self.counters.checkpoints()  # written only when changed, and only with a batch made anyway

    def _batch(self) -> tuple[list[Draft], dict[str, dict[str, Any]]] | None:
        now_ns = self.clock.now().mono_ns
        names = self._ckpt.take(now_ns, records=self._ckpt.records_due(self._pending, now_ns))
        if names is None:
            return None
        drafts, self._pending = self._pending, []
        return drafts, self._checkpoints(names)

    def _flush_now(self) -> None:
        batch = self._batch()
        if batch:
            try:
                self._stored(self._append(*batch))
            except LedgerError as e:
                self._keep(batch[0], e)

    async def _flush(self) -> None:
        batch = self._batch()
        if batch:
            # The fsync runs off the event loop; the snapshot was taken with the drafts, so they stay consistent.
            fut = asyncio.ensure_future(asyncio.to_thread(self._append, *batch))
            self._inflight = (fut, batch[0])
            self._inflight_since = time.monotonic()
            try:
                n = await asyncio.shield(fut)  # cancelled here (a stop), the append still ends: see _settle
            except LedgerError as e:
                self._inflight = None
                self._keep(batch[0], e)
            else:
                self._inflight = None
                self._stored(n)

    async def _settle(self) -> None:
        """Wait for an append that a stop interrupted the waiting for, and account for it like `_flush` would."""
        if self._inflight is None:
            return
        fut, drafts = self._inflight
        self._inflight = None
        try:
            self._stored(await fut)
        except LedgerError as e:
            self._keep(drafts, e)

    def writer_stalled_s(self) -> float:
        """How long the commit now running in its thread has been running (0 when none is): the watchdog's test."""
        return time.monotonic() - self._inflight_since if self._inflight is not None else 0.0

    def held_drafts(self) -> list[Draft]:
        """Records made but not stored, when the last commit failed (a full disk): waiting, or in the commit."""
        if not self._append_failing:
            return []
        return (self._inflight[1] if self._inflight else []) + self._pending

    def _append(self, drafts: list[Draft], checkpoints: dict[str, dict[str, Any]]) -> int:
        return len(self.ledger.append(drafts, checkpoints=checkpoints))

    def _stored(self, n: int) -> None:
        self.stats.batches += 1
        self.stats.records += n
        if self._append_failing:
            log.warning("ledger writable again; the records kept in memory are stored")
            self._append_failing = False
        if n and self.sync is not None:
            self.sync.notify()  # on the event loop's thread: asyncio events are not thread-safe

    def _keep(self, drafts: list[Draft], error: Exception) -> None:
        """The ledger could not commit (a full SD card, an I/O error): nothing of the batch was stored. Keep the
        records in memory, in order, and retry with the next batch, whose checkpoint covers them too. Only a crash
        while the card stays full loses them, and then the register's gap record still accounts for the energy."""
        self._pending[:0] = drafts
        self._ckpt.owe_all()
        self.stats.append_failures += 1
        if isinstance(error, LedgerGone):  # not a full disk: retrying would write into an unlinked file
            self._append_failing = True
            self.supervisor.fail("ledger", error)
            return
        if not self._append_failing:
            log.error("ledger: could not store %d records (%s); keeping them in memory and retrying", len(drafts),
                      error)
            self._append_failing = True

    # ------------------------------------------------------------------------------------------ status

    def report(self) -> dict[str, Any]:
        """A redacted status snapshot (support staff, the diagnostics command, the status page)."""
        seq, _ = self.ledger.head()
        return {
            "gateway": self.cfg.id,
            "version": __version__,
            "ledger": {"epoch": self.ledger.epoch, "head_seq": seq, "acked_through": self.ledger.acked_through(),
                       "unacked": self.ledger.unacked_count()},
            "readings": self.stats.readings,
            "records": self.stats.records,
            "appliances": {aid: {"function": m.function, "power_mw": m.power_mw, "rejected": dict(m.rejected)}
                           for aid, m in self.meters.items()},
            "sources": {name: st.as_dict() for name, st in self.sources.items()},
        }
