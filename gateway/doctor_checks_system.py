"""Doctor checks of the machine: the config, the state folder, the service user and its groups, the clock, disk.

Permissions are judged for the service user (owner, group and mode bits against its groups), not for whoever runs
doctor, because a state folder made by root is the crash loop in the README whatever root itself may do there.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from .doctor import Check, Context

MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------ users


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    gids: frozenset[int]  # the primary group and every group listing the user

    def in_group(self, gid: int) -> bool:
        return gid in self.gids

    @property
    def owner(self) -> str:
        """`user:group` for chown: the user and its primary group."""
        try:
            return f"{self.name}:{grp.getgrgid(self.gid).gr_name}"
        except KeyError:
            return f"{self.name}:{self.gid}"


def lookup_user(name: str) -> User | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    gids = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {pw.pw_gid}
    return User(name, pw.pw_uid, pw.pw_gid, frozenset(gids))


def can(user: User, st: os.stat_result, *, read: bool = False, write: bool = False, search: bool = False) -> bool:
    """Whether `user` may read / write / search (enter a folder) a file with this stat, by owner, group and mode."""
    if user.uid == 0:
        return True
    if st.st_uid == user.uid:
        bits = (st.st_mode >> 6) & 7
    elif user.in_group(st.st_gid):
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    need = (4 if read else 0) | (2 if write else 0) | (1 if search else 0)
    return bits & need == need


def owner_group(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def describe(path: Path, st: os.stat_result) -> str:
    return f"{path} ({stat.filemode(st.st_mode)} {owner_group(st)})"


def no_user(ctx: Context, name: str) -> Check:
    """The service user's own check fails when it is missing; the checks judged for it are skipped."""
    if name != "service user":
        return Check(name, "skip", f"no user {ctx.user!r} to judge it for (see the service user check)")
    return Check(name, "fail", f"there is no user {ctx.user!r} on this machine (the service runs as it)",
                 f"create it: sudo useradd --system --home-dir /var/lib/koto --shell /usr/sbin/nologin {ctx.user} "
                 "(or pass --user NAME if the service runs as another user)")


# ------------------------------------------------------------------------------------------------ config


def check_config_file(ctx: Context) -> Check:
    report = ctx.report
    if report.problems:
        n = len(report.problems)
        return Check("config", "fail", f"{report.file}: {n} problem{'s' if n != 1 else ''}",
                     f"fix each line above in {report.file}, then `koto check --config {report.file}` must say ok",
                     tuple(str(e) for e in report.problems))
    cfg = report.config
    assert cfg is not None
    sources = sum(len(a.sources) for a in cfg.appliances)
    return Check("config", "ok", f"{report.file}: gateway {cfg.id}, {len(cfg.appliances)} appliance(s), "
                                 f"{sources} source(s)", details=tuple(f"note: {n}" for n in report.notes)
                 + tuple(f"household: {line}" for line in report.additions))  # added by pairing / learn mode


# ------------------------------------------------------------------------------------------------ state folder


def check_state_folder(ctx: Context) -> Check:
    name = "state folder"
    sd = ctx.state_dir
    if sd is None:
        return Check(name, "skip", "no state folder known (the config could not be read)")
    user = lookup_user(ctx.user)
    if user is None:
        return no_user(ctx, name)
    try:
        st = sd.stat()
    except FileNotFoundError:
        return Check(name, "fail", f"{sd} does not exist",
                     f"create it and the device key: sudo -u {user.name} koto provision --config {ctx.config_path}")
    except PermissionError:
        return Check(name, "warn", f"{sd}: cannot look at it as this user",
                     "run doctor as root to check it: sudo koto doctor")
    if st.st_uid != user.uid:
        return Check(name, "fail", f"{describe(sd, st)} is owned by {owner_group(st).split(':')[0]}, not "
                                   f"{user.name}: the service cannot write its ledger and restarts in a loop",
                     f"give it to the service user: sudo chown -R {user.owner} {sd}")
    if not can(user, st, read=True, write=True, search=True):
        return Check(name, "fail", f"{describe(sd, st)} is not readable and writable by {user.name}",
                     f"sudo chmod 0750 {sd}")
    bad: list[str] = []
    try:
        inside = [sd / "ledger.db", sd / "ledger.db-wal", sd / "ledger.db-shm", sd / "ledger.db.readers", sd / "keys",
                  *sorted((sd / "keys").glob("*"))]
        for p in inside:
            try:
                pst = p.lstat()
            except FileNotFoundError:
                continue
            if pst.st_uid != user.uid or not can(user, pst, read=True, write=not p.name.endswith(".pub.pem")):
                bad.append(describe(p, pst))
    except PermissionError:
        return Check(name, "warn", f"{describe(sd, st)}: cannot look inside as this user",
                     "run doctor as root to check the files inside: sudo koto doctor")
    if bad:
        return Check(name, "fail", f"{len(bad)} file(s) in {sd} not owned by or not writable for {user.name}",
                     f"sudo chown -R {user.owner} {sd}", tuple(bad))
    # Private keys only: the public key and the certificate request (device.csr.pem) are meant to be shared.
    keys = [p for p in sorted((sd / "keys").glob("device*.pem")) if not p.name.endswith((".pub.pem", ".csr.pem"))]
    if not keys:
        return Check(name, "fail", f"{sd}: no device key (keys/device*.pem): the gateway is not provisioned",
                     f"sudo -u {user.name} koto provision --config {ctx.config_path}")
    for key in keys:
        if key.stat().st_mode & 0o077:
            return Check(name, "fail", f"{describe(key, key.stat())}: the device key is readable by others",
                         f"sudo chmod 0600 {key}")
    if st.st_mode & 0o002:
        return Check(name, "warn", f"{describe(sd, st)} is writable by everyone", f"sudo chmod 0750 {sd}")
    return Check(name, "ok", f"{describe(sd, st)}: owned by and writable for {user.name}, device key private")


# ------------------------------------------------------------------------------------------------ groups


def needed_groups(ctx: Context) -> dict[str, list[str]]:
    """Group -> why it is needed, from the configured drivers: GPIO pins (gpio), the MCP3008 on SPI (spi, gpio),
    serial ports (dialout). BLE needs none: BlueZ is reached over the system D-Bus (docs/ble.md)."""
    from drivers.base import driver_class

    cfg = ctx.cfg
    need: dict[str, list[str]] = {}
    if cfg is None:
        return need
    for app in cfg.appliances:
        for sname, scfg in app.sources.items():
            drv = str(scfg.get("driver"))
            try:
                cls = driver_class(drv)
            except Exception:  # named by the config check
                continue
            if "pin_factory" in cls.needs:
                need.setdefault("gpio", []).append(f"source {sname} ({drv})")
            if drv == "mcp3008":
                need.setdefault("spi", []).append(f"source {sname} (mcp3008)")
            if "port" in scfg:
                need.setdefault("dialout", []).append(f"source {sname} ({scfg['port']})")
        if app.relay:
            need.setdefault("gpio", []).append(f"appliance {app.id} relay")
    return need


def unit_groups(ctx: Context) -> set[str]:
    """The groups systemd gives the service on top of the user's own (`SupplementaryGroups=` of the unit)."""
    out: set[str] = set()
    for f in ctx.unit_files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.strip().startswith("SupplementaryGroups="):
                out.update(line.split("=", 1)[1].split())
        break
    return out


def check_user_groups(ctx: Context) -> Check:
    name = "service user"
    user = lookup_user(ctx.user)
    if user is None:
        return no_user(ctx, name)
    need = needed_groups(ctx)
    if user.uid == 0:  # root opens ports and pins whatever their group (as `can` says for files)
        return Check(name, "ok", f"{user.name} (uid 0) needs no group for its drivers: "
                                 f"{', '.join(sorted(need)) or 'none needed'}")
    from_unit = unit_groups(ctx)
    missing: list[str] = []
    no_such: list[str] = []
    for group, why in sorted(need.items()):
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            no_such.append(f"group {group} does not exist (needed by {', '.join(why)})")
            continue
        if not user.in_group(gid) and group not in from_unit:
            missing.append(f"{user.name} is not in group {group} (needed by {', '.join(why)})")
    if no_such:
        return Check(name, "fail", no_such[0], "install the package that makes it (raspi-gpio / the Pi OS image), "
                                               "or remove the source; a unit naming a missing group does not start",
                     tuple(no_such[1:] + missing))
    if missing:
        groups = ",".join(m.split("group ")[1].split()[0] for m in missing)
        return Check(name, "fail", missing[0], f"sudo usermod -aG {groups} {user.name} && sudo systemctl restart koto",
                     tuple(missing[1:]))
    has = sorted(g for g in need)
    return Check(name, "ok", f"{user.name} (uid {user.uid}) has the groups its drivers need: "
                             f"{', '.join(has) or 'none needed'}")


# ------------------------------------------------------------------------------------------------ clock, disk


def check_clock(ctx: Context) -> Check:
    from koto import clock

    if clock.kernel_clock_synced():
        return Check("clock", "ok", "the kernel says the wall clock is synchronised (NTP)")
    return Check("clock", "fail", "the wall clock is NOT synchronised: records carry time status U until it is",
                 "check NTP: timedatectl status; sudo systemctl enable --now systemd-timesyncd; is the network up?")


def check_disk(ctx: Context) -> Check:
    sd = ctx.state_dir
    if sd is None:
        return Check("disk", "skip", "no state folder known")
    where = sd
    while not where.exists() and where != where.parent:
        where = where.parent
    du = shutil.disk_usage(where)
    free_mb = du.free / MB
    text = f"{free_mb:,.0f} MB free of {du.total / MB:,.0f} MB on the state folder's file system ({where})"
    if free_mb < 100:
        return Check("disk", "fail", text, "free space: sudo journalctl --vacuum-size=50M, remove old files; "
                                           "below this the gateway stops writing records")
    if free_mb < 1024 or du.free < du.total * 0.1:
        return Check("disk", "warn", text, "free some space soon (sudo journalctl --vacuum-size=50M, old files)")
    return Check("disk", "ok", text)
