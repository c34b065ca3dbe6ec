"""The two files learn mode writes, both in the state folder: the appliance's profile, and its override.

`save_learned` writes the learned profile to `STATE_DIR/profiles/APPLIANCE.toml` and points the appliance at it with
`[override."APPLIANCE"] profile = "profiles/APPLIANCE.toml"` in `STATE_DIR/household.toml`
(gateway/config_household.py). The installer's config (/etc/koto/koto.toml) is never written: the service may not
write /etc/koto (it also holds the pinned operator key and CA), and one place for everyone is simpler than a second
behaviour for a developer's writable folder. When the appliance used a built-in profile, the new file is named
`BUILTIN-APPLIANCE` (a local customisation, which a cloud-sent update of the built-in no longer replaces); when it
used a profile file, that file's leading comments are kept. A line is added saying what was learned and when.

Both files are checked before anything is written (the profile read back, the whole config with the new override
parsed) and written atomically (`koto.files.write_atomic`: temp file, fsync, rename, fsync of the folder). `koto
learn` may run as root (sudo): what it writes in the state folder is then given to the folder's owner (koto), so the
service can still read and replace it.
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


def _make_folder(folder: Path, *, like: Path) -> None:
    """Create `folder` (profiles/) owned like the state folder `like` when root creates it."""
    if folder.is_dir():
        return
    try:
        folder.mkdir(mode=0o755)
    except FileExistsError:
        return
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(folder)) from e
    st = like.stat()
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(folder, st.st_uid, st.st_gid)


def set_override(text: str, appliance: str, rel: str) -> str:
    """household.toml's `text` with `[override."APPLIANCE"] profile = rel`: an existing table's profile line replaced
    (the rest kept as it is), else the table appended."""
    header = f"[override.{json.dumps(appliance)}]"
    line = f"profile = {json.dumps(rel)}"
    lines = text.splitlines(keepends=True)
    for i, ln in enumerate(lines):
        if ln.split("#", 1)[0].strip() == header:  # ids have no "#" (ID_RE)
            for j in range(i + 1, len(lines)):
                if _HEADER.match(lines[j]):
                    break
                if _PROFILE.match(lines[j]):
                    lines[j] = line + "\n"
                    return "".join(lines)
            lines.insert(i + 1, line + "\n")
            return "".join(lines)
    sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{sep}{header}  # learned by `koto learn` or the status page\n{line}\n"


@dataclass(frozen=True)
class Saved:
    profile_path: Path
    config_edited: bool  # household.toml changed: the appliance now points at the profile (it did not before)
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
    """Write the learned profile to STATE_DIR/profiles/APPLIANCE.toml and point `appliance` at it in
    STATE_DIR/household.toml. Both are written atomically (all or nothing); the whole config with the new override is
    checked by the one config parser before household.toml is replaced. The installer's config is only read."""
    from .config import load_config, parse_config, read_toml
    from .config_household import PROFILES_DIR, household_path, profiles_dir, with_household

    cfg = load_config(config_path)
    app = next((a for a in cfg.appliances if a.id == appliance), None)
    if app is None:
        raise UnknownName("appliance", appliance, sorted(a.id for a in cfg.appliances))
    state = cfg.state_dir
    rel = f"{PROFILES_DIR}/{appliance}.toml"
    target = profiles_dir(state) / f"{appliance}.toml"
    custom = app.profile.endswith(".toml") or "/" in app.profile
    if custom:
        name = learned.base.name
        text = learned_toml(learned, name=name, header=_header(Path(app.profile)), when=when)
    else:
        name = f"{app.profile}-{appliance}"
        text = learned_toml(learned, name=name, when=when, header=[
            f"# {appliance}'s own profile: the built-in {app.profile!r} with what `koto learn` learned.",
            "# The built-in's notes on where its numbers come from: metering/profiles/"
            f"{app.profile}.toml (docs/profiles.md)."])
    load_check = parse_profile(tomllib.loads(text), file=str(target))  # what the daemon will read
    if load_check.function_names() != learned.profile.function_names():
        raise ConfigError(str(target), "function", "the learned profile would not read back the same; not saved")
    hh_path = household_path(state)
    try:
        old = hh_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = ""
    new = set_override(old, appliance, rel)
    main = parse_config(read_toml(config_path), file=str(config_path), base=config_path.resolve().parent)
    got = next(a.profile for a in with_household(main, text=new).appliances if a.id == appliance)
    if Path(got).resolve() != target.resolve():
        raise ConfigError(str(hh_path), f"override.{appliance}.profile",
                          f"the edit did not take (reads {got!r}); set it by hand to {rel}")
    _make_folder(target.parent, like=state)
    write_keeping_owner(target, text, like=state, mode=0o644)
    load_profile(target)
    changed = new != old
    if changed:
        write_keeping_owner(hh_path, new, like=state, mode=0o644)
    return Saved(target, changed, name)
