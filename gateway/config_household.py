"""What the household added on the gateway itself, kept apart from the installer's config: `STATE_DIR/household.toml`.

Pairing (the status page) and learn mode (the page and `koto learn`) run as the `koto` service, which may write its
state folder but not `/etc/koto` (`ProtectSystem=strict`, the folder belongs to root, and it also holds the pinned
operator key and CA the service must not be able to replace). So what they add goes to the state folder:

    # STATE_DIR/household.toml, written by the gateway; `koto check` lists what it adds
    [[appliance]]                      # added by pairing: the same shape as in koto.toml
    id = "dryer"
    profile = "tumble_dryer"           # a built-in, or a path under STATE_DIR/profiles/
    energy = "dryer-meter"
    [appliance.sources.dryer-meter]
    driver = "modbus"
    ...

    [override."washer"]                # written by learn mode: use this profile instead of the config's
    profile = "profiles/washer.toml"   # relative to STATE_DIR, always under STATE_DIR/profiles/

The appliance tables are `[[appliance]]` like the installer's (not `[appliance.ID]`: one reader and one shape for
support staff), and overrides are their own `[override.ID]` tables, so an override never looks like an appliance.

Read after the installer's file (`gateway.config.load_config`), it may only *add* appliances with their sources and
*override an appliance's profile*. Everything else is a config error naming `household.toml` and the key: a gateway,
cloud or tariff key, an appliance id or source name the installer's file already uses, a `subject` or `relay`
(billing identity and enforcement stay the installer's), a profile path outside `STATE_DIR/profiles/`. An override for
an appliance no longer in either file is ignored and said by `koto check` (the installer removed it; the gateway must
not stop over that).

A user who cannot read the state folder (an operator running `koto status` without sudo) sees the installer's config
alone; the service, which owns the folder, always reads both.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import GatewayConfig, _parse_appliances, _Table
from .config_hardware import check_hardware
from .errors import ConfigError, Problems

HOUSEHOLD_FILE = "household.toml"
PROFILES_DIR = "profiles"
ALLOWED = ("appliance", "override")
INSTALLER_ONLY = ("subject", "relay")  # an appliance key the household may not set


def household_path(state_dir: Path) -> Path:
    return state_dir / HOUSEHOLD_FILE


def profiles_dir(state_dir: Path) -> Path:
    return state_dir / PROFILES_DIR


@dataclass(frozen=True)
class Addition:
    """One thing household.toml adds, as one line for `koto check` and the support bundle."""

    appliance: str
    what: str  # "appliance" (added by pairing) or "profile" (a learned profile override)
    line: str


@dataclass
class Household:
    """The installer's config with the household's additions, what they are, and what is worth saying."""

    config: GatewayConfig
    file: Path
    additions: list[Addition] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def read_household_text(state_dir: Path) -> str | None:
    """household.toml's text; None when there is none or this user may not read the state folder."""
    try:
        return household_path(state_dir).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError as e:
        raise ConfigError(str(household_path(state_dir)), "", f"cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(household_path(state_dir)), "", f"not UTF-8 text (byte {e.start})") from e


def with_household(cfg: GatewayConfig, *, text: str | None = None) -> GatewayConfig:
    """`cfg` with household.toml (or `text` in its place) merged in; its problems raised (one, or ConfigErrors)."""
    problems = Problems()
    hh = merge_all(cfg, problems, text=text)
    problems.raise_if_any()
    return hh.config


def merge_all(cfg: GatewayConfig, problems: Problems, *, text: str | None = None) -> Household:
    """Merge household.toml into `cfg`, recording every problem (each naming household.toml) in `problems`."""
    path = household_path(cfg.state_dir)
    if text is None:
        try:
            text = read_household_text(cfg.state_dir)
        except ConfigError as e:
            problems.add(e)
            return Household(cfg, path)
    if text is None:
        return Household(cfg, path)
    file = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.add(ConfigError(file, "", f"not valid TOML: {e}"))
        return Household(cfg, path)
    root = _Table(data, file, "", problems)
    for name in sorted(set(data) - set(ALLOWED)):
        root.fail(name, "not allowed in household.toml: it holds only [[appliance]] tables added by pairing and "
                        f"[override.ID] profile overrides from learn mode; the gateway's settings live in {cfg.file}")
    hh = Household(cfg, path)
    added = _appliances(cfg, root, data, hh)
    apps = {a.id: a for a in (*cfg.appliances, *added)}
    _overrides(cfg, root, data, apps, hh)
    hh.config = dataclasses.replace(cfg, appliances=tuple(apps.values()))
    return hh


def _appliances(cfg: GatewayConfig, root: _Table, data: dict[str, Any], hh: Household) -> list[Any]:
    raw_list = data.get("appliance", [])
    if not isinstance(raw_list, list):
        root.fail("appliance", "expected an array of [[appliance]] tables")
        return []
    mine = {a.id for a in cfg.appliances}
    owners = cfg.source_owner()
    keep = []
    for i, raw in enumerate(raw_list):
        if not isinstance(raw, dict):
            keep.append(raw)  # the parser names it
            continue
        aid = raw.get("id")
        where = f"appliance.{aid}" if isinstance(aid, str) else f"appliance[{i}]"
        if isinstance(aid, str) and aid in mine:
            root.fail(f"{where}.id", f"{aid!r} is an appliance of {cfg.file} already; the household cannot "
                                     "redefine it (pair it under another name)")
            continue
        bad = [k for k in INSTALLER_ONLY if k in raw]
        for k in bad:
            root.fail(f"{where}.{k}", f"not allowed in household.toml: the appliance's {k} is set by the installer "
                                      f"in {cfg.file}")
        srcs = raw.get("sources")
        taken = [s for s in srcs if s in owners] if isinstance(srcs, dict) else []
        for s in taken:
            root.fail(f"{where}.sources.{s}", f"{s!r} is a source of {owners[s]!r} in {cfg.file} already; source "
                                              "names are global")
        if not bad and not taken:
            keep.append(raw)
    sub = _Table({"appliance": keep}, root.file, "", root.problems)
    added = list(_parse_appliances(sub, cfg.id, hh.file.parent))
    pdir = profiles_dir(cfg.state_dir).resolve()
    for app in added:
        if ("/" in app.profile or app.profile.endswith(".toml")) and not _under(app.profile, pdir):
            root.fail(f"appliance.{app.id}.profile", f"{app.profile}: a household profile must be a built-in name or "
                                                     f"a file under {pdir}")
    if added:  # its hardware against the installer's, named at the household's keys only
        from .indicator import claims

        found = Problems()
        check_hardware((*cfg.appliances, *added), found, root.file, claims(cfg.led, cfg.button))
        ours = tuple(f"appliance.{a.id}." for a in added)
        for e in found.items:
            if e.key.startswith(ours):
                root.problems.add(ConfigError(root.file, e.key, e.problem))
    for app in added:
        src = ", ".join(f"{n} ({s['driver']})" for n, s in app.sources.items())
        hh.additions.append(Addition(app.id, "appliance", f"appliance {app.id} (profile {app.profile}; source {src}) "
                                                          f"added by pairing, in {hh.file}"))
    return added


def _under(profile: str, folder: Path) -> bool:
    try:
        Path(profile).resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def _overrides(cfg: GatewayConfig, root: _Table, data: dict[str, Any], apps: dict[str, Any], hh: Household) -> None:
    raw = data.get("override", {})
    if not isinstance(raw, dict):
        root.fail("override", "expected [override.ID] tables with one key, profile")
        return
    pdir = profiles_dir(cfg.state_dir).resolve()
    for aid, table in raw.items():
        ot = root.sub(table if isinstance(table, dict) else {}, f"override.{aid}")
        if not isinstance(table, dict):
            root.fail(f"override.{aid}", 'expected a table: [override.ID] profile = "profiles/ID.toml"')
            continue
        for k in sorted(set(table) - {"profile"}):
            ot.fail(k, "not allowed: an override may change only an appliance's profile")
        rel = ot.get("profile", str, what=f'a path under {PROFILES_DIR}/, such as "{PROFILES_DIR}/{aid}.toml"')
        if not rel:
            continue
        p = Path(rel)
        full = p if p.is_absolute() else cfg.state_dir / p
        if not rel.endswith(".toml") or not _under(str(full), pdir):
            ot.fail("profile", f"{rel}: must be a .toml file under {pdir} (learn mode writes them there)")
            continue
        if aid not in apps:
            hh.notes.append(f"{hh.file}: override.{aid} is for an appliance that is in neither file any more; "
                            "ignored (delete its table, or learn again after pairing it)")
            continue
        was = apps[aid].profile
        apps[aid] = dataclasses.replace(apps[aid], profile=str(full))
        hh.additions.append(Addition(aid, "profile", f"appliance {aid} uses the learned profile {full} instead of "
                                                     f"{was}, set in {hh.file}"))


def profile_key(hh: Household | None, aid: str) -> tuple[str, str] | None:
    """(file, key) that names `aid`'s profile when household.toml sets it; None when the installer's file does."""
    if hh is None:
        return None
    for a in reversed(hh.additions):  # an override of a paired appliance wins over its own line
        if a.appliance == aid:
            key = f"override.{aid}.profile" if a.what == "profile" else f"appliance.{aid}.profile"
            return str(hh.file), key
    return None
