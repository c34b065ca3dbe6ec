"""Throw-away roots to run deploy/install.sh in, as root, without touching this machine.

`OverlayRoot` is a container-like directory root: this machine's own Debian userland as the read-only lower layer
of an overlay file system, with every write going to an `upper` folder (so the upper folder *is* the list of what
the installer changed, which makes "a second run changes nothing" an exact check). Each command runs in its own
mount namespace (`unshare -m`), where the overlay, /proc, /dev and the bind-mounted inputs are mounted and then
chrooted into; nothing is mounted on the host, and removing the folders removes everything. Setting up costs
nothing (no debootstrap: ~2 minutes and 275 MB per fresh root here, see docs/install.md), so it runs in `make test`.

It needs root (useradd, chown to the koto user) and a kernel that allows overlay mounts in a mount namespace.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def why_not() -> str | None:
    """Why an overlay root cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (the installer creates a user and chowns to it)"
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        return "needs unshare and chroot (util-linux, coreutils)"
    return None


class OverlayRoot:
    def __init__(self, folder: Path, binds: dict[str, Path], lower: Path = Path("/"),
                 read_only: frozenset[str] = frozenset()) -> None:
        self.folder = folder
        self.upper, self.work, self.merged = folder / "upper", folder / "work", folder / "merged"
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True, exist_ok=True)
        self.lower = lower
        self.binds = binds  # path inside the root -> host path
        self.read_only = read_only  # which of them the root may not write to

    def run(self, script: str, *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run `script` (sh) as root inside the root, in a fresh mount namespace."""
        m = str(self.merged)
        setup = [f"mount -t overlay overlay -o lowerdir={self.lower},upperdir={self.upper},workdir={self.work} {m}",
                 f"mount -t proc proc {m}/proc", f"mount --rbind /dev {m}/dev", f"mount -t tmpfs tmpfs {m}/run"]
        for inside, host in self.binds.items():
            setup.append(f"mkdir -p {m}{inside} && mount --bind {host} {m}{inside}")
            if inside in self.read_only:
                setup.append(f"mount -o remount,bind,ro {m}{inside}")
        inner = f"exec chroot {m} /usr/bin/env -i PATH={PATH} HOME=/root LANG=C.UTF-8 /bin/sh -eu -c {_q(script)}"
        out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-eu", "-c",
                              " && ".join(setup) + " && " + inner],
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"in the root, exit {out.returncode}:\n{script}\n--- stdout\n{out.stdout}\n"
                                 f"--- stderr\n{out.stderr}")
        return out

    def run_host(self, script: str, *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run `script` on the host with only the overlay mounted (at $ROOT), e.g. to pack the merged tree."""
        m = str(self.merged)
        mount = f"mount -t overlay overlay -o lowerdir={self.lower},upperdir={self.upper},workdir={self.work} {m}"
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-eu", "-c",
                               f"{mount} && ROOT={m} && {script}"], capture_output=True, text=True,
                              timeout=timeout, check=True)

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        """Every file the root's writes made: type, mode, owner, size, mtime and content hash."""
        snap: dict[str, tuple[object, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.upper):
            for name in [*dirnames, *filenames]:
                p = Path(dirpath) / name
                st = p.lstat()
                rel = str(p.relative_to(self.upper))
                digest: object = None
                if stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    digest = os.readlink(p)
                mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
                snap[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_size, mtime, digest)
        return snap


DEBOOTSTRAP_PACKAGES = "python3,python3-venv,systemd,ca-certificates"


def debootstrap_root(cache: Path, suite: str = "bookworm", mirror: str = "http://deb.debian.org/debian") -> Path:
    """A minimal Debian root made once with debootstrap and kept in `cache` (the overlay's lower layer, so the
    cached root itself is never written). The first one takes minutes and needs the mirror; then it is free."""
    done = cache / f"debootstrap-{suite}"
    if done.is_dir():
        return done
    partial = cache / f"debootstrap-{suite}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", suite, str(partial),
                    mirror], check=True, capture_output=True, timeout=1800)
    partial.rename(done)
    return done


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def wheelhouse(cache: Path) -> Path:
    """Wheels of every runtime dependency, made once per pyproject.toml and kept (the installs run offline)."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    folder = cache / f"wheels-{key}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(folder),
                    f"{REPO}[gpio,serial,ble,sync,web]"], check=True, capture_output=True, timeout=900)
    for own in folder.glob("koto_gateway-*.whl"):
        own.unlink()
    (folder / ".complete").touch()
    return folder


def build_wheel(out: Path) -> Path:
    """This checkout as a wheel, as an installer would get it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, timeout=300)
    return next(out.glob("koto_gateway-*.whl"))
