"""Home Assistant: each appliance as a device on the household's own MQTT broker, by MQTT discovery — off unless a
`[home_assistant]` table is configured.

    [home_assistant]
    host = "homeassistant.local"   # the household's broker (Home Assistant's Mosquitto add-on, or any)
    port = 1883                    # default 1883, 8883 with tls
    username = "koto"              # optional
    password = "..."               # optional (the config file is 0600)
    tls = false                    # true: TLS, the broker checked against `ca` (or the system's CAs)
    ca = "/etc/koto/ha-ca.pem"     # optional
    discovery_prefix = "homeassistant"
    topic_prefix = "koto/GATEWAY-ID"   # where the states and the availability go
    interval_s = 10                # how often power and function are sent

What Home Assistant gets (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery, and the sensor schema of
homeassistant/components/mqtt/sensor.py), per appliance, one device (`koto_GW_APPLIANCE`, model = its profile) with:

- `Power` — device_class power, W, state_class measurement;
- `Function` — the function running now (text);
- `Energy` — device_class energy, kWh, state_class total_increasing: the appliance's lifetime total as Koto
  metered it (gateway/ha_totals.py), so it never goes down, across restarts too.

Discovery configs go to `{discovery_prefix}/sensor/{gw}/{appliance}_{power|function|energy}/config`, retained, QoS 1,
and again whenever Home Assistant says it came online (`{discovery_prefix}/status` = `online`). An appliance that
was announced before (it has an energy total) and is no longer configured gets empty retained configs, which
remove it from Home Assistant. The states are one
retained JSON message per appliance on `{topic_prefix}/{appliance}/state`; availability is
`{topic_prefix}/availability`: `online` retained at connect, `offline` at a clean stop and as the MQTT Will when the
gateway dies. Nothing of this can hold up metering: it is one task, reading what the meters hold and (in a thread)
the ledger's totals; a broker that is down is said once in the journal and retried with capped backoff. On the first
start with Home Assistant on, the totals are first counted over the whole ledger (`first_totals`, in a thread, seconds
on a big ledger): the gateway is ready and meters meanwhile; the discovery and availability go out at once, the states
once the totals are known (never an energy of 0 that Home Assistant would take for a meter reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from koto import __version__
from koto.net import Backoff

from .errors import ConfigError
from .ha_totals import CountStopped, EnergyTotals

if TYPE_CHECKING:
    from .daemon import Gateway

log = logging.getLogger("koto.homeassistant")

TOPIC_WORD = re.compile(r"[^A-Za-z0-9_-]")
ENERGY_EVERY_S = 60.0
_KEYS = {"host", "port", "username", "password", "tls", "ca", "discovery_prefix", "topic_prefix", "interval_s",
         "enabled"}


@dataclass(frozen=True)
class HomeAssistantConfig:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca: Path | None = None
    discovery_prefix: str = "homeassistant"
    topic_prefix: str = ""  # "" = koto/{gateway id}
    interval_s: float = 10.0
    enabled: bool = True


def _topic_ok(v: str) -> bool:
    return bool(v) and not v.endswith("/") and not v.startswith("/") and not any(c in v for c in "#+")


def parse_config(raw: Mapping[str, Any], *, file: str, base: Path) -> HomeAssistantConfig:
    """`[home_assistant]`; a bad value is a ConfigError naming `home_assistant.KEY` and what is allowed."""

    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(file, f"home_assistant.{key}", problem)

    for k in raw:
        if k not in _KEYS:
            raise bad(k, f"unknown key; allowed here: {', '.join(sorted(_KEYS))}")

    def text(key: str, default: str | None) -> str | None:
        v = raw.get(key, default)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise bad(key, f"expected a non-empty string, got {v!r}")
        return v

    def flag(key: str, default: bool) -> bool:
        v = raw.get(key, default)
        if not isinstance(v, bool):
            raise bad(key, f"expected true or false, got {v!r}")
        return v

    host = text("host", None)
    if host is None:
        raise bad("host", "missing; the household's MQTT broker (the host Home Assistant uses), e.g. "
                  '"homeassistant.local"')
    tls = flag("tls", False) or "ca" in raw
    port = raw.get("port", 8883 if tls else 1883)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise bad("port", f"expected a port number from 1 to 65535, got {port!r}")
    interval = raw.get("interval_s", 10)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 1 <= interval <= 3600:
        raise bad("interval_s", f"expected a number of seconds from 1 to 3600, got {interval!r}")
    username, password = text("username", None), text("password", None)
    if password is not None and username is None:
        raise bad("password", "needs a username")
    ca_text = text("ca", None)
    ca = None if ca_text is None else (Path(ca_text) if Path(ca_text).is_absolute() else base / ca_text)
    prefix = text("discovery_prefix", "homeassistant") or "homeassistant"
    topics = text("topic_prefix", "") if raw.get("topic_prefix") is not None else ""
    for key, v in (("discovery_prefix", prefix), ("topic_prefix", topics)):
        if v and not _topic_ok(v):
            raise bad(key, f"{v!r} is not allowed; a topic like koto/home without wildcards or a leading or "
                      "trailing /")
    return HomeAssistantConfig(host=host, port=port, username=username, password=password, tls=tls, ca=ca,
                               discovery_prefix=prefix, topic_prefix=topics or "", interval_s=float(interval),
                               enabled=flag("enabled", True))


# ------------------------------------------------------------------------------------------------ payloads


def topic_word(text: str) -> str:
    """An id as discovery allows it in a topic ([A-Za-z0-9_-]: a '.' becomes '_')."""
    return TOPIC_WORD.sub("_", text)


@dataclass(frozen=True)
class Topics:
    gateway: str
    discovery_prefix: str
    base: str

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def state(self, appliance: str) -> str:
        return f"{self.base}/{topic_word(appliance)}/state"

    def config(self, appliance: str, what: str) -> str:
        return f"{self.discovery_prefix}/sensor/{topic_word(self.gateway)}/{topic_word(appliance)}_{what}/config"


def topics_for(cfg: HomeAssistantConfig, gateway: str) -> Topics:
    return Topics(gateway, cfg.discovery_prefix, cfg.topic_prefix or f"koto/{topic_word(gateway)}")


def discovery_configs(topics: Topics, appliance: str, profile: str) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config payload for the appliance's three sensors."""
    gw, app = topic_word(topics.gateway), topic_word(appliance)
    device = {"identifiers": [f"koto_{gw}_{app}"], "name": appliance, "manufacturer": "Koto",
              "model": profile, "sw_version": __version__}
    origin = {"name": "Koto", "sw_version": __version__}
    common = {"state_topic": topics.state(appliance), "availability_topic": topics.availability,
              "payload_available": "online", "payload_not_available": "offline", "device": device,
              "origin": origin}
    sensors: dict[str, dict[str, Any]] = {
        "power": {"name": "Power", "device_class": "power", "unit_of_measurement": "W",
                  "state_class": "measurement", "value_template": "{{ value_json.power_w }}",
                  "suggested_display_precision": 1},
        "function": {"name": "Function", "icon": "mdi:state-machine", "value_template": "{{ value_json.function }}"},
        "energy": {"name": "Energy", "device_class": "energy", "unit_of_measurement": "kWh",
                   "state_class": "total_increasing", "value_template": "{{ value_json.energy_kwh }}",
                   "suggested_display_precision": 3},
    }
    return {topics.config(appliance, what): {**s, "unique_id": f"koto_{gw}_{app}_{what}", **common}
            for what, s in sensors.items()}


def kwh(mwh: int) -> str:
    """Integer mWh as kWh with six decimals (exact), by integer arithmetic: never a float drift that could make a
    total step back. (Home Assistant shows it to `suggested_display_precision`, three.)"""
    v = max(0, mwh)
    return f"{v // 1_000_000}.{v % 1_000_000:06d}"


def state_payload(power_mw: int, function: str, energy_mwh: int) -> dict[str, Any]:
    return {"power_w": round(power_mw / 1000, 1), "function": function or "idle", "energy_kwh": kwh(energy_mwh)}


# ------------------------------------------------------------------------------------------------ the link


class HomeAssistant:
    """Publishes discovery, availability and the appliances' states to the household's broker while the gateway
    runs. `appliances()` returns {appliance: (power_mw, function)}; `totals()` the lifetime mWh (blocking);
    `first_totals(stop)`, when given, the first count of them (blocking, run once in a thread before any state is
    published; it raises CountStopped when `stop` is set)."""

    def __init__(self, cfg: HomeAssistantConfig, gateway: str, profiles: Mapping[str, str], *,
                 appliances: Callable[[], Mapping[str, tuple[int, str]]],
                 totals: Callable[[], Mapping[str, int]], backoff: Backoff | None = None,
                 energy_every_s: float = ENERGY_EVERY_S,
                 on_stop: Callable[[], Mapping[str, int]] | None = None, tls: ssl.SSLContext | None = None,
                 gone: Iterable[str] = (),
                 first_totals: Callable[[threading.Event], Mapping[str, int]] | None = None) -> None:
        self.cfg = cfg
        self.topics = topics_for(cfg, gateway)
        self.profiles = dict(profiles)
        self.gone = sorted(set(gone) - set(profiles))  # appliances announced before, no longer configured
        self.appliances = appliances
        self.totals = totals
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.energy_every_s = energy_every_s  # the totals are a ledger read (in a thread): once a minute
        self.on_stop = on_stop  # at a clean stop (the ledger quiet): the totals, their base saved
        self.first_totals = first_totals
        self._known = asyncio.Event()  # the totals are known: states may be published
        if first_totals is None:
            self._known.set()
        self.tls = tls if tls is not None or not cfg.tls else tls_for(cfg, "<config>")
        self.connected = False
        self.published = 0
        self._energy: dict[str, int] = {}
        self._failing = False
        self._stopped = False

    def _client(self) -> Any:
        import aiomqtt

        will = aiomqtt.Will(self.topics.availability, b"offline", qos=1, retain=True)
        return aiomqtt.Client(self.cfg.host, self.cfg.port, username=self.cfg.username, password=self.cfg.password,
                              identifier=f"koto-{topic_word(self.topics.gateway)}-ha", will=will, tls_context=self.tls,
                              keepalive=30, timeout=10)

    async def run(self) -> None:
        """Count the totals first if needed (in the background); connect, announce, publish; on any failure wait
        (capped backoff) and again, until cancelled."""
        counting = asyncio.create_task(self._count()) if not self._known.is_set() else None
        try:
            await self._connect_loop()
        finally:
            if counting is not None:
                counting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await counting

    async def _count(self) -> None:
        """`first_totals` in a worker thread, the event loop free meanwhile; a failure is said and tried again a
        minute later. Cancelled (the stop): the count is told to stop, and it does within milliseconds."""
        assert self.first_totals is not None
        stop = threading.Event()
        while True:
            try:
                self._energy = dict(await asyncio.to_thread(self.first_totals, stop))
                break
            except asyncio.CancelledError:
                stop.set()
                log.info("Home Assistant energy totals: the count was stopped with the gateway; it runs again at "
                         "the next start")
                raise
            except CountStopped:
                return
            except Exception as e:  # sqlite3.Error, OSError: metering goes on, the states wait
                log.warning("Home Assistant energy totals cannot be counted (%s); trying again in %.0f s", e,
                            self.energy_every_s)
            await asyncio.sleep(self.energy_every_s)
        self._known.set()

    async def _connect_loop(self) -> None:
        where = f"{self.cfg.host}:{self.cfg.port}"
        while True:
            try:
                async with self._client() as client:
                    await self._session(client)
            except asyncio.CancelledError:
                self._final_totals()  # not connected at the stop: the base is saved all the same
                raise
            except Exception as e:  # aiomqtt.MqttError, OSError, ssl...: never out of here, metering goes on
                if self.connected or not self._failing:
                    log.warning("Home Assistant broker %s: %s; retrying (the gateway meters on)", where, e)
                self._failing = True
                self.connected = False
            await asyncio.sleep(self.backoff.next())

    async def _session(self, client: Any) -> None:
        await client.subscribe(self.topics.ha_status, qos=1)
        await client.publish(self.topics.availability, b"online", qos=1, retain=True)
        await self._announce(client)
        if self._failing or not self.connected:
            log.info("Home Assistant: connected to %s:%d; %d appliance(s) announced", self.cfg.host, self.cfg.port,
                     len(self.profiles))
        self.connected, self._failing = True, False
        self.backoff.reset()
        listener = asyncio.create_task(self._listen(client))
        try:
            await self._publish_loop(client)
        except asyncio.CancelledError:  # a clean stop: the last totals, then say so (the Will says it only on a crash)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.5):
                    self._final_totals()
                    await self._publish_states(client)
                    await client.publish(self.topics.availability, b"offline", qos=1, retain=True)
            raise
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def _announce(self, client: Any) -> None:
        for app in self.gone:  # an empty retained config removes the entity (and then the device) from HA
            for topic in discovery_configs(self.topics, app, ""):
                await client.publish(topic, b"", qos=1, retain=True)
            await client.publish(self.topics.state(app), b"", qos=1, retain=True)
        for app, profile in self.profiles.items():
            for topic, payload in discovery_configs(self.topics, app, profile).items():
                await client.publish(topic, json.dumps(payload, sort_keys=True).encode(), qos=1, retain=True)

    async def _listen(self, client: Any) -> None:
        """Home Assistant restarted (its birth message): announce again, so it finds the devices at once."""
        async for message in client.messages:
            if str(message.topic) == self.topics.ha_status and message.payload == b"online":
                await self._announce(client)

    async def _publish_loop(self, client: Any) -> None:
        loop = asyncio.get_running_loop()
        await self._known.wait()  # the first start's count (the retained states of the last run stay meanwhile)
        last_energy = -math.inf
        while True:
            if loop.time() - last_energy >= self.energy_every_s:
                self._energy = dict(await asyncio.to_thread(self.totals))
                last_energy = loop.time()
            await self._publish_states(client)
            await asyncio.sleep(self.cfg.interval_s)

    async def _publish_states(self, client: Any) -> None:
        if not self._known.is_set():  # an energy of 0 would be a meter reset to Home Assistant
            return
        for app, (power_mw, function) in self.appliances().items():
            body = state_payload(power_mw, function, self._energy.get(app, 0))
            await client.publish(self.topics.state(app), json.dumps(body, sort_keys=True).encode(), qos=0,
                                 retain=True)
            self.published += 1

    def _final_totals(self) -> None:
        """Once, at the stop (after the gateway's last records: it stops this task after its final batch)."""
        if self.on_stop is not None and not self._stopped:
            self._stopped = True
            with contextlib.suppress(Exception):
                self._energy = dict(self.on_stop())


def tls_for(cfg: HomeAssistantConfig, file: str) -> ssl.SSLContext:
    """The TLS context for the household's broker, built at the start: a missing or bad `ca` stops the start with
    one line naming the key, rather than a retry in the journal for ever."""
    from koto.net import tls_context

    try:
        return tls_context(cfg.ca)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(file, "home_assistant.ca", f"cannot load {cfg.ca or 'the system CAs'}: "
                          f"{getattr(e, 'strerror', None) or e}") from e


def for_gateway(gw: Gateway) -> HomeAssistant | None:
    """The link for a gateway whose config has `[home_assistant]` (enabled), its totals started now — before the
    gateway appends — from the ledger and the state folder."""
    cfg = gw.cfg.home_assistant
    if cfg is None or not cfg.enabled:
        return None
    tls = tls_for(cfg, gw.cfg.file) if cfg.tls else None
    totals = EnergyTotals(gw.cfg.state_dir)
    totals.start(gw.ledger)  # a restart adds the few records since its base; a first start leaves them to catch_up
    return HomeAssistant(cfg, gw.cfg.id, {aid: m.profile.name for aid, m in gw.meters.items()},
                         appliances=lambda: {aid: (m.power_mw, m.function) for aid, m in gw.meters.items()},
                         totals=lambda: totals.refresh(gw.ledger),
                         on_stop=lambda: totals.refresh(gw.ledger, save=True), tls=tls, gone=totals.base,
                         first_totals=totals.catch_up if totals.pending else None)
