"""The two files learn mode writes: the appliance's profile, and one line of the gateway config.

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
from pathlib import Path

from koto.files import write_atomic

from .errors import ConfigError

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
    write_atomic(path, text.encode(), mode=mode if mode is not None else (st.st_mode & 0o777 if st else 0o644))
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
