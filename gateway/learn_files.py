"""The two files learn mode writes: the appliance's profile, and one line of the gateway config.

`save_learned` writes the profile atomically where the appliance's config points (`profile = "path"`); when the
appliance uses a built-in profile it writes a copy beside the config (`APPLIANCE.profile.toml`, named
`BUILTIN-APPLIANCE`: a local customisation, which a cloud-sent update of the built-in no longer replaces) and points
the config at it. A custom file keeps its leading comments; a line is added saying what was learned and when.

The config is edited as text, not re-serialised, so the installer's comments, order and layout stay exactly as they
were: only the value of `profile = ...` in the `[[appliance]]` table whose `id` matches changes (a comment after it
stays). The result is read by the one config parser before anything is written, and written atomically
(`koto.files.write_atomic`: temp file, fsync, rename, fsync of the folder), keeping the file's mode and owner — `koto
learn` runs with sudo, and a config the `koto` service can no longer read would stop the gateway at its next start.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from koto.files import write_atomic
from metering.profile import load_profile, parse_profile

from .errors import ConfigError, UnknownName
from .profile_suggest import profile_toml

if TYPE_CHECKING:
    from .learn import Learned

_HEADER = re.compile(r"^\s*\[")
_APPLIANCE = re.compile(r"^\s*\[\[\s*appliance\s*\]\]\s*(#.*)?$")
_SUBTABLE = re.compile(r"^\s*\[\s*appliance\.")
_ID = re.compile(r"""^\s*id\s*=\s*(?P<v>"(?:[^"\\]|\\.)*"|'[^']*')""")
_PROFILE = re.compile(r"""^(?P<key>\s*profile\s*=\s*)(?P<v>"(?:[^"\\]|\\.)*"|'[^']*')(?P<rest>.*)$""")


def write_keeping_owner(path: Path, text: str, *, like: Path, mode: int | None = None) -> None:
    """Write `path` atomically with the mode (unless `mode` is given) and owner of `like` (when allowed)."""
    try:
        st = like.stat()
    except OSError:
        st = None
    try:
        write_atomic(path, text.encode(), mode=mode if mode is not None else (st.st_mode & 0o777 if st else 0o644))
    except OSError as e:  # named by the file meant, not the temporary one beside it
        raise OSError(e.errno, e.strerror, str(path)) from e
    if st is not None and os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(path, st.st_uid, st.st_gid)  # root (sudo koto learn) writing for the koto service


def _value(raw: str) -> str:
    v = tomllib.loads(f"v = {raw}")["v"]
    return v if isinstance(v, str) else ""


def replace_profile_line(text: str, appliance: str, profile: str, *, file: str = "<config>") -> str:
    """`text` with the `profile = ...` value of appliance `appliance` set to `profile`; raises ConfigError naming the
    key when the table cannot be found as plain `[[appliance]]` text (an inline table: edit it by hand)."""
    lines = text.splitlines(keepends=True)
    in_app = False
    top = False  # inside the appliance table itself, before its sub-tables
    found: int | None = None
    matched = False
    for i, line in enumerate(lines):
        if _APPLIANCE.match(line):
            if matched:
                break
            in_app, top, found = True, True, None
            continue
        if _HEADER.match(line):
            top = False
            if not _SUBTABLE.match(line):
                if matched:
                    break
                in_app = False
            continue
        if not (in_app and top):
            continue
        m = _ID.match(line)
        if m and _value(m["v"]) == appliance:
            matched = True
        if _PROFILE.match(line):
            found = i
    if not matched or found is None:
        raise ConfigError(file, f"appliance.{appliance}.profile", "not found as a `profile = \"...\"` line in an "
                          f"[[appliance]] table; set it by hand to {profile}")
    m = _PROFILE.match(lines[found])
    assert m is not None
    end = "\n" if lines[found].endswith("\n") else ""
    lines[found] = f"{m['key']}{json.dumps(profile)}{m['rest'].rstrip(chr(10))}{end}"
    return "".join(lines)


def edit_profile_line(config_path: Path, appliance: str, profile: str) -> None:
    """Point `appliance` at `profile` in the config file, checked by the config parser, atomically."""
    from .config import parse_config

    old = config_path.read_text(encoding="utf-8")
    new = replace_profile_line(old, appliance, profile, file=str(config_path))
    cfg = parse_config(tomllib.loads(new), file=str(config_path), base=config_path.resolve().parent)
    got = next(a.profile for a in cfg.appliances if a.id == appliance)
    if Path(got).resolve() != Path(profile).resolve():
        raise ConfigError(str(config_path), f"appliance.{appliance}.profile",
                          f"the edit did not take (reads {got!r}); set it by hand to {profile}")
    write_keeping_owner(config_path, new, like=config_path)


@dataclass(frozen=True)
class Saved:
    profile_path: Path
    config_edited: bool  # the config now points at the profile (it used a built-in before)
    profile_name: str


def learned_toml(learned: Learned, *, name: str, header: Sequence[str] = (), when: float | None = None) -> str:
    """The new profile as TOML: `header` (the old file's leading comments) first, then a line saying what was
    learned, then the whole profile."""
    stamp = datetime.fromtimestamp(when if when is not None else datetime.now(UTC).timestamp(), UTC)
    lv = learned.levels
    note = (f"# {stamp:%Y-%m-%d %H:%M} UTC: `koto learn` {'relearned' if learned.relearned else 'added'} "
            f"{learned.function!r} for {learned.appliance} from {lv.seconds:.0f} s at {lv.p50_mw / 1000:.1f} W median "
            f"(replayed: {100 * learned.detected:.0f} % found)")
    body = profile_toml(learned.profile, [], name=name)
    if learned.profile.version != 1:
        body = body.replace("\n", f"\nversion = {learned.profile.version}\n", 1)
    return "\n".join([*header, note, body])


def _header(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        out.append(line)
    return out


def save_learned(learned: Learned, *, config_path: Path, appliance: str, when: float | None = None) -> Saved:
    """Write the learned profile where `appliance`'s config points; for a built-in, a copy beside the config, and the
    config's `profile = ...` line changed to it. Both files are written atomically (all or nothing) keeping their
    owner and mode; the config is checked by the one config parser before it is replaced."""
    from .config import load_config

    cfg = load_config(config_path)
    app = next((a for a in cfg.appliances if a.id == appliance), None)
    if app is None:
        raise UnknownName("appliance", appliance, sorted(a.id for a in cfg.appliances))
    custom = app.profile.endswith(".toml") or "/" in app.profile
    if custom:
        target = Path(app.profile)
        name = learned.base.name
        text = learned_toml(learned, name=name, header=_header(target), when=when)
    else:
        target = config_path.resolve().parent / f"{appliance}.profile.toml"
        name = f"{app.profile}-{appliance}"
        text = learned_toml(learned, name=name, when=when, header=[
            f"# {appliance}'s own profile: the built-in {app.profile!r} with what `koto learn` learned.",
            "# The built-in's notes on where its numbers come from: metering/profiles/"
            f"{app.profile}.toml (docs/profiles.md)."])
    load_check = parse_profile(tomllib.loads(text), file=str(target))  # what the daemon will read
    if load_check.function_names() != learned.profile.function_names():
        raise ConfigError(str(target), "function", "the learned profile would not read back the same; not saved")
    write_keeping_owner(target, text, like=target if target.exists() else config_path, mode=0o644)
    if custom:
        load_profile(target)
        return Saved(target, False, name)
    edit_profile_line(config_path, appliance, str(target))
    return Saved(target, True, name)
