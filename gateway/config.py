"""The gateway's TOML configuration: one file, validated up front, every error naming the file and the key.

    [gateway]                      # who we are and where we keep state
    id = "gw-0001"                 # also the MQTT client id and the certificate CN
    state_dir = "/var/lib/koto"
    timezone = "Europe/Berlin"     # tariffs' time-of-use windows are in local time

    [cloud]                        # optional; without it the gateway meters locally only (see docs/sync.md)
    broker = "mqtts://broker.example.net:8883"
    ...

    [[appliance]]
    id = "washer"
    profile = "washing_machine"    # a built-in profile name, or a path to a profile TOML
    subject = "household-42/washer"
    energy = "washer-meter"        # the source whose readings carry the energy (register, pulses or power)

    [appliance.sources.washer-meter]
    driver = "modbus"              # any driver in drivers.base.REGISTRY, with that driver's own keys
    ...

Every problem is found in one pass (`parse_config_all`, used by `koto check --config`): a wrong value is recorded
and a stand-in used, so the pass goes on; `parse_config` then raises one problem as itself, several as
`gateway.errors.ConfigErrors` (docs/support.md).

This module is the one parser of the file, `[cloud]` included (into the `SyncConfig` the uplink runs on), with one
set of limits. Sources are validated by their drivers when built (`drivers.base.build_source`), so this module
checks only the gateway's own keys, the shape, and that each source names a known driver; a driver's error still
names this file.

`web_port` in `[gateway]` is where the household status page listens (gateway/web/, docs/household.md; 0 = off),
`web_host` the address it binds (default every interface of the LAN). `retain_days` is how long records stay in
the ledger (gateway/housekeeping.py says what leaves when).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.base import driver_class
from koto.errors import FieldError, explain_os_error
from koto.net import BrokerURL, parse_broker_url
from metering.energy import Kind

from .config_hardware import check_hardware
from .errors import ConfigError, Problems

if TYPE_CHECKING:
    from .homeassistant import HomeAssistantConfig
    from .indicator import ButtonConfig, LedConfig

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENERGY_KINDS: tuple[Kind, ...] = ("register", "pulses", "power")
CHECKPOINT_S = 300.0  # default `[gateway] checkpoint_s`
RETAIN_DAYS = 90.0  # default `[gateway] retain_days`
HOLD_S = 3600.0  # default `[gateway] hold_s`: how long a segment or slice record may wait (gateway/checkpointing.py)
HOLD_USE_S = 60.0  # default `[gateway] hold_use_s`: how long a closed use's, lifecycle or clock record may wait
IDLE_INTERIM_S = 21_600  # default `[[appliance]] idle_interim_s`: an idle appliance's standby slice (6 h)
WEB_PORT = 8080  # default `[gateway] web_port`: the household status page


class _Table:
    """Reads one TOML table, remembering where it is, so every error names file and dotted key.

    Problems are collected (`problems`, shared by a file's tables), not raised: a wrong value is recorded and a
    stand-in (the default, or an empty value of the expected type) is returned, so one pass finds every problem.
    `parse_config` raises them all at the end."""

    def __init__(self, data: dict[str, Any], file: str, path: str, problems: Problems | None = None) -> None:
        self.data = data
        self.file = file
        self.path = path
        self.seen: set[str] = set()
        self.problems = Problems() if problems is None else problems

    def key(self, name: str) -> str:
        name = name or '""'  # TOML allows an empty key (`"" = 1`); name it as written
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def fail(self, name: str, problem: str) -> None:
        """Record a problem at this table's key `name`; parsing goes on."""
        self.problems.add(self.error(name, problem))

    def sub(self, data: dict[str, Any], path: str) -> _Table:
        return _Table(data, self.file, path, self.problems)

    def get(self, name: str, typ: type | tuple[type, ...], default: Any = ..., *, what: str = "") -> Any:
        self.seen.add(name)
        types = typ if isinstance(typ, tuple) else (typ,)
        stand_in = default if default is not ... else types[0]()
        if name not in self.data:
            if default is ...:
                self.fail(name, f"missing; {what or 'required'}")
            return stand_in
        value = self.data[name]
        if isinstance(value, bool) and bool not in types:
            self.fail(name, f"expected {what or _tname(typ)}, got a boolean")
            return stand_in
        if not isinstance(value, typ):
            self.fail(name, f"expected {what or _tname(typ)}, got {type(value).__name__} {value!r}")
            return stand_in
        return value

    def number(self, name: str, default: float, *, lo: float, hi: float) -> float:
        v = self.get(name, (int, float), default, what=f"a number from {lo:g} to {hi:g}")
        if not lo <= v <= hi:
            self.fail(name, f"{v!r} is out of range; allowed {lo:g} to {hi:g}")
            return float(default)
        return float(v)

    def table(self, name: str) -> _Table | None:
        v = self.get(name, dict, None, what="a table")
        return None if v is None else self.sub(v, self.key(name))

    def reject_unknown(self, allowed_extra: tuple[str, ...] = ()) -> None:
        allowed = ", ".join(sorted(self.seen | set(allowed_extra)))
        for name in sorted(set(self.data) - self.seen - set(allowed_extra)):
            self.fail(name, f"unknown key; allowed here: {allowed}")


def _tname(typ: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table",
             list: "a list"}
    ts = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join(names.get(t, t.__name__) for t in ts)


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """What the uplink (`gateway.sync.Sync`) runs on: the `[cloud]` table and the gateway id, its MQTT client id.

    `parse_config` builds it from the file and is where every value is checked (docs/sync.md has the keys). Tests
    and benches build one directly; `batch`, `stale_ack_resend_s` and the reconnect backoff are not file keys, only
    their tuning knobs.
    """

    gateway_id: str
    broker: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    topic_prefix: str = "koto/v1"
    protocol: int = 5
    keepalive_s: int = 30
    window: int = 256
    batch: int = 64
    ack_timeout_s: float = 15.0
    stale_ack_resend_s: float = 2.0
    live_interval_s: float = 0.0  # 0 = the live topic is off
    operator_keys: tuple[Path, ...] = ()
    backoff_initial_s: float = 0.5
    backoff_cap_s: float = 5.0

    @property
    def url(self) -> BrokerURL:
        return parse_broker_url(self.broker)


@dataclass(frozen=True)
class ApplianceConfig:
    id: str
    profile: str
    subject: str
    energy: str
    energy_kind: Kind
    imp_per_kwh: int = 0
    max_gap_s: float = 60.0
    interim_s: int = 900
    channel: str = ""
    idle_interim_s: int = IDLE_INTERIM_S
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    relay: dict[str, Any] | None = None


@dataclass(frozen=True)
class GatewayConfig:
    file: str
    id: str
    state_dir: Path
    timezone: str
    subject: str
    batch_ms: int
    checkpoint_s: float
    cloud: SyncConfig | None
    tariff: dict[str, Any] | None
    appliances: tuple[ApplianceConfig, ...]
    led: LedConfig | None = None  # [gateway.led], [gateway.button]: gateway/indicator.py
    button: ButtonConfig | None = None
    home_assistant: HomeAssistantConfig | None = None  # [home_assistant]: gateway/homeassistant.py
    stop_timeout_s: float = 10.0  # `koto run` exits this long after a stop request, whatever still runs
    retain_days: float = RETAIN_DAYS
    hold_s: float = HOLD_S
    hold_use_s: float = HOLD_USE_S
    web_port: int = WEB_PORT  # the household status page (gateway/web/); 0 = off
    web_host: str = "0.0.0.0"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def source_owner(self) -> dict[str, str]:
        """Source name -> appliance id (a source feeds exactly one appliance)."""
        return {s: a.id for a in self.appliances for s in a.sources}


def _path(t: _Table, name: str, base: Path) -> Path | None:
    v = t.get(name, str, None, what="a file path")
    if v is None:
        return None
    p = Path(v)
    return p if p.is_absolute() else (base / p)


def parse_config(data: dict[str, Any], *, file: str = "<config>", base: Path | None = None) -> GatewayConfig:
    """Validate a parsed TOML document. `base` resolves relative paths (the config file's folder).

    Every problem is found in one pass: one is raised as itself, several as `ConfigErrors`."""
    cfg, problems = parse_config_all(data, file=file, base=base)
    problems.raise_if_any()
    return cfg


def parse_config_all(data: dict[str, Any], *, file: str = "<config>",
                     base: Path | None = None) -> tuple[GatewayConfig, Problems]:
    """The config as far as it can be read, and every problem found. With problems, the config holds stand-ins
    for the bad values: good enough for `koto check` to go on checking the files and profiles it names, never to
    run on."""
    base = base or Path.cwd()
    root = _Table(data, file, "")
    gw = root.table("gateway")
    if gw is None:
        root.fail("gateway", "missing; a [gateway] table with at least `id` is required")
        gw = root.sub({"id": "gateway"}, "gateway")
    from .household import parse_household  # the LED, button and Home Assistant tables

    household, household_claims = parse_household(root, gw, base)
    gateway = _parse_gateway(gw, base)
    ct = root.table("cloud")
    cloud = None if ct is None else _parse_cloud(ct, gateway.id, base)
    tariff = root.get("tariff", dict, None, what="a table describing the local default tariff")
    if tariff is not None:
        _check_tariff(tariff, root)
    appliances = _parse_appliances(root, gateway.id, base)
    root.reject_unknown()
    check_hardware(appliances, root.problems, file, household_claims)
    cfg = GatewayConfig(**household, file=file, id=gateway.id, state_dir=gateway.state_dir, timezone=gateway.timezone,
                        subject=gateway.subject, batch_ms=gateway.batch_ms, checkpoint_s=gateway.checkpoint_s,
                        cloud=cloud, tariff=tariff, appliances=appliances, stop_timeout_s=gateway.stop_timeout_s,
                        retain_days=gateway.retain_days, hold_s=gateway.hold_s, hold_use_s=gateway.hold_use_s,
                        web_port=gateway.web_port, web_host=gateway.web_host)
    return cfg, root.problems


def _check_tariff(tariff: dict[str, Any], root: _Table) -> None:
    """The `[tariff]` is checked when the file is read (not first when the gateway starts), by the tariff's own
    parser, its keys named under `tariff.`."""
    from metering.errors import TariffError
    from metering.tariff import Tariff

    try:
        Tariff.from_dict(tariff, file=root.file)
    except TariffError as e:
        key = "tariff" if e.key == "$" else f"tariff.{e.key}"
        root.problems.add(ConfigError(root.file, key, e.problem))


class _Gateway(NamedTuple):
    """The `[gateway]` table's keys that are used."""

    id: str
    state_dir: Path
    timezone: str
    subject: str
    batch_ms: int
    checkpoint_s: float
    stop_timeout_s: float
    retain_days: float
    hold_s: float
    hold_use_s: float
    web_port: int
    web_host: str


def _parse_gateway(gw: _Table, base: Path) -> _Gateway:
    gid = gw.get("id", str, what="the gateway id (letters, digits, _ . -; also the certificate CN)")
    if gid and not ID_RE.match(gid):
        gw.fail("id", f"{gid!r} is not allowed; use 1-64 letters, digits, '_', '.', '-'")
    state_dir = _path(gw, "state_dir", base) or Path("/var/lib/koto")
    tzname = gw.get("timezone", str, "UTC", what="an IANA time zone such as Europe/Berlin")
    try:
        ZoneInfo(tzname)
    except (ZoneInfoNotFoundError, ValueError):
        gw.fail("timezone", f"unknown time zone {tzname!r}; use an IANA name such as Europe/Berlin")
        tzname = "UTC"
    subject = gw.get("subject", str, f"urn:koto:gw:{gid}")
    batch_ms = int(gw.number("batch_ms", 500, lo=10, hi=60_000))
    # How often a pulse or power meter's state is saved between records: what a power cut can lose at most
    # (a register meter needs none; see gateway/checkpointing.py). 300 s keeps an idle-time write budget tiny.
    checkpoint_s = gw.number("checkpoint_s", CHECKPOINT_S, lo=0.1, hi=3600)
    retain_days = gw.number("retain_days", RETAIN_DAYS, lo=1, hi=3650)
    # How long records may wait in memory to share one transaction (gateway/checkpointing.py): a function segment's,
    # an interim slice's or a gap's record at most `hold_s`; a closed use's (cycle), lifecycle or clock record at
    # most `hold_use_s` (never longer than `hold_s`). `hold_s = 0` commits every batch.
    hold_s = gw.number("hold_s", HOLD_S, lo=0, hi=3600)
    hold_use_s = gw.number("hold_use_s", HOLD_USE_S, lo=0, hi=3600)
    web_port = int(gw.number("web_port", WEB_PORT, lo=0, hi=65535))  # the status page; 0 = off
    web_host = gw.get("web_host", str, "0.0.0.0", what="an address to listen on, e.g. 0.0.0.0 or 127.0.0.1")
    # Below the unit's TimeoutStopSec=20 with room to spare: systemd's SIGKILL should never be what ends a stop.
    stop_timeout_s = gw.number("stop_timeout_s", 10, lo=0.5, hi=600)
    gw.reject_unknown()
    return _Gateway(gid or "gateway", state_dir, tzname, subject, batch_ms, checkpoint_s, stop_timeout_s,
                    retain_days, hold_s, hold_use_s, web_port, web_host)


def _parse_cloud(ct: _Table, gateway_id: str, base: Path) -> SyncConfig:
    """The `[cloud]` table, with the one set of limits the uplink runs within."""
    broker = ct.get("broker", str, what="a broker URL, mqtt://host:port or mqtts://host:port")
    if broker:
        try:
            parse_broker_url(broker, file=ct.file, key=ct.key("broker"))
        except FieldError as e:  # the URL rule's own error, said as this file's ConfigError
            ct.fail("broker", e.problem)
    protocol = ct.get("protocol", int, 5, what="5 (MQTT 5) or 311 (MQTT 3.1.1)")
    if protocol not in (5, 311):
        ct.fail("protocol", f"{protocol} is not allowed; use 5 or 311")
    prefix = ct.get("topic_prefix", str, "koto/v1", what="a topic prefix such as koto/v1")
    if not prefix or prefix.endswith("/") or any(c in prefix for c in "#+"):
        ct.fail("topic_prefix", f"{prefix!r} is not allowed; a topic like koto/v1 without wildcards or a trailing /")
    cloud = SyncConfig(
        gateway_id=gateway_id,
        broker=broker,
        ca=_path(ct, "ca", base),
        cert=_path(ct, "cert", base),
        key=_path(ct, "key", base),
        topic_prefix=prefix,
        protocol=protocol,
        keepalive_s=int(ct.number("keepalive_s", 30, lo=5, hi=3600)),
        window=int(ct.number("window", 256, lo=1, hi=10_000)),
        ack_timeout_s=ct.number("ack_timeout_s", 15, lo=0.5, hi=3600),
        live_interval_s=ct.number("live_interval_s", 0, lo=0, hi=3600),
        operator_keys=_operator_keys(ct, base),
    )
    if (cloud.cert is None) != (cloud.key is None):
        ct.fail("cert", "give both `cert` and `key` (the client certificate and its key) or neither")
    ct.reject_unknown()
    return cloud


def _operator_keys(ct: _Table, base: Path) -> tuple[Path, ...]:
    keys = ct.get("operator_keys", list, [], what="a list of PEM file paths")
    paths: list[Path] = []
    for i, k in enumerate(keys):
        if not isinstance(k, str):
            ct.fail(f"operator_keys[{i}]", "expected a file path string")
            continue
        paths.append(Path(k) if Path(k).is_absolute() else base / k)
    if len(paths) > 2:
        ct.fail("operator_keys", "at most two keys (current and next, for rotation)")
    return tuple(paths)


def _parse_appliances(root: _Table, gateway_id: str, base: Path) -> tuple[ApplianceConfig, ...]:
    raw_list = root.get("appliance", list, [], what="an array of [[appliance]] tables")
    appliances: list[ApplianceConfig] = []
    owners: dict[str, str] = {}  # source name -> appliance id: source names are unique across the gateway
    for i, raw in enumerate(raw_list):
        if not isinstance(raw, dict):
            root.fail(f"appliance[{i}]", "expected a table ([[appliance]])")
            continue
        at = root.sub(raw, f"appliance[{i}]")
        aid = at.get("id", str, what="the appliance id")
        if not aid:
            continue  # named as appliance[i].id; its other keys are told once it has a name
        if not ID_RE.match(aid):
            at.fail("id", f"{aid!r} is not allowed; use 1-64 letters, digits, '_', '.', '-'")
            continue
        if any(a.id == aid for a in appliances):
            at.fail("id", f"{aid!r} is used by another appliance; ids must be unique")
            continue
        at.path = f"appliance.{aid}"
        app = _parse_appliance(at, aid, gateway_id, base, owners)
        if app is not None:
            appliances.append(app)
    return tuple(appliances)


def _parse_appliance(at: _Table, aid: str, gateway_id: str, base: Path,
                     owners: dict[str, str]) -> ApplianceConfig | None:
    """One `[[appliance]]`; None when it has no usable source (the problems are recorded)."""
    profile = at.get("profile", str, what="a built-in profile name or a path to a profile TOML")
    if "/" in profile or profile.endswith(".toml"):
        p = Path(profile)
        profile = str(p if p.is_absolute() else base / p)
    sources = _parse_sources(at, aid, owners)
    energy = at.get("energy", str, next(iter(sources), ""), what="the name of the source that meters energy")
    default_kind: Kind = "power"
    raw_sources = at.data.get("sources")
    declared: dict[str, Any] = raw_sources if isinstance(raw_sources, dict) else {}
    if energy not in sources:
        if sources and energy not in declared:  # a declared source that failed is named already
            at.fail("energy", f"{energy!r} is not one of this appliance's sources: {', '.join(sources)}")
    else:
        default_kind = driver_class(sources[energy]["driver"], source=energy, file=at.file).energy_kind
    kind_name = at.get("energy_kind", str, default_kind, what="register, pulses or power")
    kind = next((k for k in ENERGY_KINDS if k == kind_name), None)
    if kind is None:
        at.fail("energy_kind", f"{kind_name!r} is not allowed; use register, pulses or power")
        kind = default_kind
    imp = 0
    if kind == "pulses" and energy in sources:
        try:
            imp = int(sources[energy].get("imp_per_kwh", 0))
        except (TypeError, ValueError, OverflowError):  # a list, "abc", inf (found by fuzzing): the driver names it
            imp = 0
        imp = imp or int(at.get("imp_per_kwh", int, 0))
        if imp <= 0 and "imp_per_kwh" not in sources[energy]:  # a source's own bad value is named by its driver
            at.fail("imp_per_kwh", "pulse sources need imp_per_kwh > 0 (on the meter's label)")
    else:
        at.get("imp_per_kwh", int, 0)
    relay = at.get("relay", dict, None, what="a table: pin, active_high")
    app = ApplianceConfig(
        id=aid,
        profile=profile,
        subject=at.get("subject", str, f"urn:koto:gw:{gateway_id}:{aid}"),
        energy=energy,
        energy_kind=kind,
        imp_per_kwh=imp,
        max_gap_s=at.number("max_gap_s", 60, lo=1, hi=86_400),
        interim_s=int(at.number("interim_s", 900, lo=1, hi=86_400)),
        idle_interim_s=int(at.number("idle_interim_s", IDLE_INTERIM_S, lo=1, hi=7 * 86_400)),
        channel=at.get("channel", str, "", what='the energy source\'s channel: "" (total), "L1", "L2", "L3"'),
        sources=sources,
        relay=relay,
    )
    at.reject_unknown()
    return app if sources else None


def _parse_sources(at: _Table, aid: str, owners: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The appliance's `[appliance.sources.NAME]` tables: names unique across the gateway, each naming a known
    driver (the driver checks its own keys when the source is built). A bad one is recorded and left out."""
    from drivers.errors import DriverConfigError

    sources_t = at.table("sources")
    if sources_t is None or not sources_t.data:
        at.fail("sources", "missing; at least one [appliance.sources.NAME] table with a `driver`")
        return {}
    sources: dict[str, dict[str, Any]] = {}
    for sname, scfg in sources_t.data.items():
        sources_t.seen.add(sname)
        if not isinstance(scfg, dict):
            sources_t.fail(sname, "expected a table with a `driver` key")
        elif not ID_RE.match(sname):
            sources_t.fail(sname, "source names use letters, digits, '_', '.', '-'")
        elif sname in owners:
            sources_t.fail(sname, f"already used by appliance {owners[sname]!r}; names are global")
        elif not isinstance(scfg.get("driver"), str):
            sources_t.problems.add(ConfigError(at.file, f"{sources_t.key(sname)}.driver",
                                               "missing; name the driver that reads it"))
        else:
            try:
                driver_class(scfg["driver"], source=sname, file=at.file)  # an unknown driver is named now
            except DriverConfigError as e:
                at.problems.add(e)
                continue
            owners[sname] = aid
            sources[sname] = dict(scfg)
    return sources


def read_toml(path: str | Path) -> dict[str, Any]:
    """The file's TOML document; a missing, unreadable or broken file is one `ConfigError` naming it."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(str(p), "", "file not found") from e
    except OSError as e:
        raise ConfigError(str(p), "", f"cannot read: {explain_os_error(e).removeprefix(f'{p}: ')}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), "", f"not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), "", f"not valid TOML: {e}") from e


def load_config(path: str | Path) -> GatewayConfig:
    p = Path(path)
    cfg = parse_config(read_toml(p), file=str(p), base=p.resolve().parent)
    from .config_household import with_household  # pairing's and learn mode's additions (STATE_DIR/household.toml)

    return with_household(cfg)
