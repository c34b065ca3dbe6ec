"""The three-kinds daemon's RSS on 32-bit Raspberry Pi OS (armhf), measured under qemu-user emulation.

    .venv/bin/python -m bench.foreign_rss --root /var/cache/koto-armhf/bookworm [--seconds 120] [--settle 60]

Issue 15's RSS target is for a Pi; `bench/daemon_cost.py` measures on the build machine (x86-64), which is what a
64-bit Pi OS gives within a few per cent (the same pointer size, the same Python objects). Many Pi gateways run the
32-bit OS (a Pi Zero 2 W, a 3 with 1 GB), where every pointer, and so every Python object, is half the size. This
runs section 2 of bench/daemon_cost.py (`koto run` with an SDM120 on a pty, an S0 kettle and a BTHome plug with a
GPIO contact, the page on) with the daemon on an armhf Debian 12 (the base of Raspberry Pi OS bookworm) and its
armv7l wheels, emulated by qemu-arm through binfmt_misc, and reads its RSS from the guest's own pages.

**How the guest's RSS is read.** Under qemu-user the daemon is the qemu process: its VmRSS also holds qemu itself
(its binary, its heap, the translated code). A 32-bit guest's address space is mapped 1:1 at host address 0
(`guest_base` 0, checked: the guest's python3.11 must be mapped below 4 GiB), so the guest's pages are exactly the
host mappings below 4 GiB: their `Rss` in /proc/PID/smaps is what the daemon's VmRSS would be on the Pi (the same
4 KiB pages, the same files mapped, the same heap), sampled every 5 s after the settle; the peak of the samples is
the figure. Emulation is 5-10x slower, so READY may take a minute or two; CPU is not a figure here.

**The root** (`--make-root`, once, 15-25 min, most of it pip building cffi under emulation): `debootstrap
--arch=armhf --variant=minbase` of Debian 12 with python3, venv, pip, gcc and libffi-dev, then in it `python3 -m venv
/opt/koto-armhf` and `pip install` of the versions this checkout's venv has of Koto's runtime dependencies (PyPI has
armv7l wheels for cryptography, habluetooth, orjson; dbus-fast is built without Cython, SKIP_CYTHON=1, where
piwheels would give a Pi a compiled one). The host's CA bundle is copied in, so a TLS-inspecting proxy pip works
through here works there too. It needs qemu-user-static and binfmt-support (Debian packages; installed when
missing), root (debootstrap, chroot, bind mounts), and bind-mounts /proc, /sys, /dev, /tmp, /var/tmp and this
checkout at the same paths inside the root (done here, and undone at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import daemon_cost

REPO = Path(__file__).resolve().parent.parent
GUEST_TOP = 1 << 32
VENV = "/opt/koto-armhf"
MOUNTS = ("proc", "sys", "dev", "tmp", "var/tmp")


def guest_rss_kib(pid: int) -> int:
    """The Rss of every host mapping below 4 GiB: the 32-bit guest's own pages (module docstring)."""
    total, top, saw_python = 0, 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            end = int(head[0].split("-")[1], 16)
            top = end
            if end <= GUEST_TOP and len(head) == 6 and head[5].endswith("/python3.11"):
                saw_python = True
        elif line.startswith("Rss:") and top <= GUEST_TOP:
            total += int(line.split()[1])
    if not saw_python:
        raise RuntimeError(f"pid {pid}: no guest python3.11 mapped below 4 GiB; is guest_base not 0 (a 64-bit guest, "
                           "or a qemu that chose another base)? This reader only knows 32-bit guests at base 0")
    return total


def _mount(root: Path) -> list[Path]:
    done = []
    for m in (*MOUNTS, str(REPO).lstrip("/")):
        target = root / m
        target.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mountpoint", "-q", str(target)]).returncode == 0:
            continue
        flag = "--rbind" if m in ("dev", "sys") else "--bind"
        subprocess.run(["mount", flag, f"/{m}", str(target)], check=True)
        if flag == "--rbind":
            subprocess.run(["mount", "--make-rslave", str(target)], check=True)
        done.append(target)
    return done


def _umount(done: list[Path]) -> None:
    for target in reversed(done):
        subprocess.run(["umount", "-R", str(target)], check=False)


RUNTIME = ("click", "cryptography", "orjson", "gpiozero", "pyserial", "pyserial-asyncio-fast", "pymodbus", "bleak",
           "bthome-ble", "aiomqtt", "microdot")


def _pins() -> list[str]:
    """`name==version` of Koto's runtime dependencies and everything they need, as this checkout's venv has them."""
    import importlib.metadata as md
    import re

    from packaging.markers import Marker

    seen: dict[str, str] = {}
    todo = list(RUNTIME)
    while todo:
        name = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen[key] = f"{dist.metadata['Name']}=={dist.version}"
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            if marker and ("extra" in marker or not Marker(marker).evaluate()):
                continue
            todo.append(re.split(r"[ <>=!~\[(]", spec.strip(), maxsplit=1)[0])
    seen.pop("setuptools", None)
    return sorted(seen.values())


def make_root(root: Path) -> None:
    """The armhf Debian 12 root with Koto's dependencies in /opt/koto-armhf (module docstring)."""
    def run(*cmd: str) -> None:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)

    if not Path("/proc/sys/fs/binfmt_misc/qemu-arm").exists():
        os.environ.setdefault("DEBIAN_FRONTEND", "noninteractive")
        run("apt-get", "update", "-q")
        run("apt-get", "install", "-y", "-q", "qemu-user-static", "binfmt-support", "debootstrap")
        if not Path("/proc/sys/fs/binfmt_misc/register").exists():  # a container may not have it mounted
            run("mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc")
        run("update-binfmts", "--enable", "qemu-arm")
    if not (root / "usr/bin/python3").exists():
        run("debootstrap", "--arch=armhf", "--variant=minbase", "--include=python3,python3-venv,python3-pip,"
            "python3-dev,gcc,libffi-dev,pkg-config,ca-certificates,procps", "bookworm", str(root),
            "http://deb.debian.org/debian")
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_ca.exists():
        (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        (root / "etc/ssl/certs/ca-certificates.crt").write_bytes(host_ca.read_bytes())
    (root / "root/koto-reqs.txt").write_text("\n".join(_pins()) + "\n")
    run("chroot", str(root), "python3", "-m", "venv", VENV)
    run("chroot", str(root), "/usr/bin/env", "SKIP_CYTHON=1", f"{VENV}/bin/pip", "install", "-q", "--prefer-binary",
        "-r", "/root/koto-reqs.txt")


def _wrapper(root: Path) -> Path:
    """An interpreter path for daemon_cost's DAEMON_PYTHON: runs the root's venv python in the same folder."""
    fd, name = tempfile.mkstemp(prefix="koto-armhf-python-", suffix=".sh")
    with os.fdopen(fd, "w") as f:
        f.write(f'#!/bin/sh\nexec chroot {root} /bin/sh -c \'cd "$0" && exec {VENV}/bin/python "$@"\' "$PWD" "$@"\n')
    os.chmod(name, stat.S_IRWXU)
    return Path(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/var/cache/koto-armhf/bookworm"))
    ap.add_argument("--seconds", type=float, default=120.0, help="window of RSS samples after the settle")
    ap.add_argument("--settle", type=float, default=60.0, help="seconds after READY before sampling")
    ap.add_argument("--make-root", action="store_true", help="make the root first when it is missing (15-25 min)")
    ap.add_argument("--json", action="store_true", help="also print the figure as one JSON line (bench/report.py)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("foreign_rss: needs root (chroot and bind mounts)", file=sys.stderr)
        return 2
    if a.make_root and not (a.root / VENV.lstrip("/") / "bin" / "python").exists():
        make_root(a.root)
    if not (a.root / VENV.lstrip("/") / "bin" / "python").exists():
        print(f"foreign_rss: no {VENV} in {a.root}; pass --make-root (or see the module docstring)", file=sys.stderr)
        return 2
    native = asyncio.run(daemon_cost.three_kinds(a.seconds, settle_s=a.settle))  # the baseline, this machine
    print(f"koto run, all three driver kinds, on {os.uname().machine} (this machine): peak RSS of the samples "
          f"{native['rss_mib']:.1f} MiB (VmHWM {native['hwm_mib']:.1f})")
    done = _mount(a.root)
    wrapper = _wrapper(a.root)
    try:
        machine = subprocess.run([str(wrapper), "-c", "import platform, sys; print(platform.machine(), "
                                  "sys.version.split()[0])"], capture_output=True, text=True, cwd=REPO, check=True)
        print(f"koto run, all three driver kinds, on {machine.stdout.strip()} under qemu-user ({a.root})")
        daemon_cost.DAEMON_PYTHON = str(wrapper)
        k = asyncio.run(daemon_cost.three_kinds(a.seconds, settle_s=a.settle, ready_s=600.0, rss_kib=guest_rss_kib))
        print(f"peak RSS of the samples {k['rss_mib']:.1f} MiB (the guest's own pages; target <= 45 MB = "
              f"{45e6 / 1024 / 1024:.1f} MiB)")
    finally:
        wrapper.unlink(missing_ok=True)
        _umount(done)
    from bench.figures import Figure, emit

    emit("foreign_rss", [Figure("peak RSS, koto run with all three driver kinds, 32-bit Pi OS (armhf, qemu-user)",
                                k["rss_mib"], "MiB", baseline=native["rss_mib"],
                                baseline_name=f"the same on this machine ({os.uname().machine})", target="<= 45 MB",
                                note="the guest's own pages, sampled every 5 s; docs/performance.md")],
         argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
