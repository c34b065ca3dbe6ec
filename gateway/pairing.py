"""Pairing: adding an appliance to a running gateway, and taking it back out, without a restart.

Three pieces, each small:

- `PairingMode`: a flag with an expiry that the daemon owns and hands to both the status page and the GPIO button
  (a long press enters it). While it is active the page opens on "add an appliance". It is only a hint to the page:
  every change still needs the installer's PIN.
- `append_block` / `remove_block`: `STATE_DIR/household.toml` edited as *text* (gateway/config_household.py): the
  service owns its state folder, while the installer's config in /etc/koto is never written by the daemon (the
  folder is root's, mounted read-only for the service, and holds the pinned operator key and CA). A new
  `[[appliance]]` with its `[appliance.sources.NAME]` table is appended at the end (TOML lets an array of tables
  continue after other tables), the whole config (the installer's file and household.toml) is validated by the one
  parser *before* anything is written, and household.toml is replaced atomically (a temp file in the same folder,
  fsync, rename, fsync of the folder: `koto.files.write_atomic`), keeping the rest of it. Undo removes exactly the
  text that was appended, validated and written the same way.
- `HotAdd`: the new appliance's meter and source started inside the running gateway through its supervisor
  (`Gateway.start_source`): the other sources run on untouched. Undo closes the meter's open segment (what it
  metered stays in the ledger: records are never deleted), stops exactly that source and forgets it.

Errors are `PairingError`: one plain sentence a person at the page can act on.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from koto.errors import KotoError
from koto.files import write_atomic

from .config import ApplianceConfig, GatewayConfig, parse_config, read_toml
from .config_household import household_path, with_household
from .errors import ConfigError, ConfigErrors

if TYPE_CHECKING:
    from .daemon import Gateway

log = logging.getLogger("koto.pairing")

PAIRING_S = 600.0  # how long a long press (or the page's button) keeps pairing mode on


class PairingError(KotoError):
    """A pairing step that cannot be done, said as one sentence for the person at the page."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class PairingMode:
    """"Add an appliance" is being offered: on until `leave()` or until `expires_at` (monotonic seconds).

    Times come in as arguments (`now`, from `time.monotonic()` at the caller), so the button's thread and the page
    agree without a clock of their own here."""

    def __init__(self, *, duration_s: float = PAIRING_S) -> None:
        self.duration_s = duration_s
        self.expires_at: float | None = None

    def enter(self, now: float) -> None:
        self.expires_at = now + self.duration_s
        log.info("pairing mode on for %d minutes: open the status page to add an appliance", self.duration_s // 60)

    def leave(self) -> None:
        if self.expires_at is not None:
            log.info("pairing mode off")
        self.expires_at = None

    def active_at(self, now: float) -> bool:
        return self.expires_at is not None and now < self.expires_at

    @property
    def active(self) -> bool:
        import time

        return self.active_at(time.monotonic())


# ------------------------------------------------------------------------------------------------ the file


def _q(text: str) -> str:
    import json

    return json.dumps(text)  # a TOML basic string is a JSON string for what ids, paths and names hold


def appliance_block(aid: str, profile: str, source: str, source_cfg: dict[str, Any], *, when: float) -> str:
    """The text appended for one appliance: a comment saying where it came from, then its two tables."""
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Added on the status page on {stamp}. Undo there, or delete from here to the end of {source}'s table.",
             "[[appliance]]", f"id = {_q(aid)}", f"profile = {_q(profile)}", f"energy = {_q(source)}", "",
             f"[appliance.sources.{source}]"]
    for k, v in source_cfg.items():
        lines.append(f"{k} = {_q(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}")
    return "\n".join(lines) + "\n"


def _main_config(config_path: Path) -> GatewayConfig:
    """The installer's config alone (never written here): where the state folder is, what is there already."""
    try:
        return parse_config(read_toml(config_path), file=str(config_path), base=config_path.resolve().parent)
    except (ConfigError, ConfigErrors) as e:
        raise PairingError(f"the config {config_path} is not valid ({e}); fix it first (koto check)") from e


def _validate(text: str, main: GatewayConfig) -> GatewayConfig:
    """The whole config with household.toml as `text`, its profiles loaded: what the gateway would run on."""
    path = household_path(main.state_dir)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PairingError(f"{path} would not be valid TOML with this appliance added ({e}); nothing was "
                           "changed") from e
    from metering.errors import ProfileError

    from .daemon import load_appliance_profile

    try:
        cfg = with_household(main, text=text)
        for app in cfg.appliances:  # the parser leaves profiles to the daemon's start; a bad one must not get in
            load_appliance_profile(app, str(path))
    except (ConfigError, ConfigErrors, ProfileError) as e:
        raise PairingError(f"the config would not be valid with this appliance ({e}); nothing was changed") from e
    return cfg


def _write(path: Path, text: str) -> None:
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644  # no secrets: the support bundle carries it
        write_atomic(path, text.encode(), mode=mode)
    except OSError as e:
        raise PairingError(f"cannot write {path} ({e.strerror or e}); nothing was changed. The service must own its "
                           f"state folder {path.parent} (sudo chown -R koto:koto {path.parent})") from e


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise PairingError(f"cannot read {path} ({e.strerror or e})") from e


def append_block(config_path: Path, block: str) -> tuple[GatewayConfig, str]:
    """Append `block` to STATE_DIR/household.toml of the gateway configured at `config_path` (the installer's file
    is only read); validate the whole config first; write atomically.

    Returns the new config and the exact text added (what `remove_block` takes back out)."""
    main = _main_config(config_path)
    path = household_path(main.state_dir)
    old = _read(path)
    added = ("" if old.endswith("\n") or not old else "\n") + ("\n" if old else "") + block
    cfg = _validate(old + added, main)
    _write(path, old + added)
    return cfg, added


def remove_block(config_path: Path, added: str) -> GatewayConfig:
    """Take `added` (as `append_block` returned it) back out of household.toml; validate; write atomically."""
    main = _main_config(config_path)
    path = household_path(main.state_dir)
    text = _read(path)
    at = text.rfind(added)
    if at < 0:
        raise PairingError(f"{path} was changed since the appliance was added; remove its block by hand")
    new = text[:at] + text[at + len(added):]
    cfg = _validate(new, main)
    _write(path, new)
    return cfg


# ------------------------------------------------------------------------------------------------ the gateway


@dataclass
class Added:
    """What one pairing added: enough to undo exactly that."""

    appliance: str
    sources: list[str]
    text: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class HotAdd:
    """Adds appliances to a running `Gateway` and removes them again (one click on the page)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.added: dict[str, Added] = {}

    @property
    def path(self) -> Path:
        """The installer's config (read, never written: pairing writes household.toml in the state folder)."""
        return Path(self.gw.cfg.file)

    def add(self, aid: str, profile: str, source: str, source_cfg: dict[str, Any]) -> Added:
        gw = self.gw
        if aid in gw.meters:
            raise PairingError(f"there is already an appliance called {aid!r}; choose another name")
        if source in gw.sources:
            raise PairingError(f"there is already a source called {source!r}")
        if not Path(gw.cfg.file).is_file():
            raise PairingError(f"this gateway runs without a config file ({gw.cfg.file}); nothing to add to")
        block = appliance_block(aid, profile, source, source_cfg, when=gw.clock.now().wall)
        cfg, text = append_block(self.path, block)
        app = next(a for a in cfg.appliances if a.id == aid)
        self._start(cfg, app)
        added = Added(aid, list(app.sources), text)
        added.tasks = [gw.start_source(name) for name in app.sources]
        self.added[aid] = added
        log.info("%s: added on the status page (profile %s, source %s); metering now", aid, profile, source,
                 extra={"appliance": aid})
        return added

    def _start(self, cfg: GatewayConfig, app: ApplianceConfig) -> None:
        from metering.energy import EnergySpec
        from metering.meter import ApplianceMeter

        from .daemon import load_appliance_profile, meter_checkpoint_name
        from .supervisor import SourceState

        gw = self.gw
        profile = load_appliance_profile(app, cfg.file)
        spec = EnergySpec(kind=app.energy_kind, source=app.energy, imp_per_kwh=app.imp_per_kwh or 1000,
                          max_gap_s=app.max_gap_s, channel=app.channel)
        gw.meters[app.id] = ApplianceMeter(app.id, profile, energy=spec, policy=gw.pricing, interim_s=app.interim_s,
                                           state=gw.ledger.checkpoint(meter_checkpoint_name(app.id)))
        gw.subjects[app.id] = app.subject
        for name, scfg in app.sources.items():
            gw.owner[name] = app.id
            gw.sources[name] = SourceState(name, app.id, str(scfg["driver"]))
        gw.cfg = cfg
        if gw.power_log is not None:
            gw.power_log.track(app.id, spec)

    async def undo(self, aid: str) -> None:
        """Remove exactly what `add` added: the config text first (so a crash now cannot bring it back), then the
        source's task and the meter (its open segment closed into the ledger)."""
        gw = self.gw
        added = self.added.get(aid)
        if added is None:
            raise PairingError(f"{aid!r} was not added on this page since the gateway started; remove it from the "
                               "config by hand")
        cfg = remove_block(self.path, added.text)
        from .supervisor import stop_tasks

        # Not one cancel and a wait: pymodbus' wait_for can swallow a cancellation, and the page's request then hung
        # for good (tests/web/test_pairing.py under load); stop_tasks asks again until the task has ended.
        await stop_tasks(added.tasks)
        for name in added.sources:
            gw.owner.pop(name, None)  # a reading still queued from it is not routed any more
        # The meter's last records and its closed state go to the ledger in one batch (the meter loop writes it
        # within batch_ms); only then is the meter forgotten, so the batch still finds it.
        gw._take(aid, gw.meters[aid].close(gw.clock.now()))
        gw._ckpt.owe_all()
        for _ in range(200):
            if not gw._ckpt.owes(aid):
                break
            await asyncio.sleep(0.05)
        gw.meters.pop(aid)
        for name in added.sources:
            gw.owner.pop(name, None)
            gw.sources.pop(name, None)
        gw.subjects.pop(aid, None)
        gw.cfg = cfg
        if gw.power_log is not None:
            gw.power_log.forget(aid)
        del self.added[aid]
        log.info("%s: removed again on the status page; what it metered stays in the ledger", aid,
                 extra={"appliance": aid})
