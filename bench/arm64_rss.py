"""The three-kinds daemon's RSS on 64-bit ARM, measured by an arm64 kernel: Debian 12 arm64 under qemu-system-aarch64.

    sudo .venv/bin/python -m bench.arm64_rss [--seconds 120] [--settle 60] [--ready 900] [--keep DIR] [--json]
    sudo make bench-arm64

Issue 15's RSS target (45 MB) is for a Pi. On the x86-64 build machine section 2 of bench/daemon_cost.py measures
about 57 MiB, of which about 24 MiB is file-backed, and that part depends on the kernel: a kernel whose page cache
holds large folios maps a shared library's pages whole (cryptography's Rust .so: 7.3 MiB resident of 7.4), while a
Pi 4's arm64 kernel (4 KiB pages, ext4 without large folios) faults them in around what is touched.
bench/foreign_rss.py cannot answer that for arm64: qemu-user uses the host kernel's page cache. Here the arm64
kernel is the guest's own: full-system emulation, no KVM.

**What runs.** The arm64 root of `make image-test` (tests/support/vm.py: a debootstrapped Debian 12 with systemd and
the distribution's kernel, made once under qemu-user, 15-20 minutes, and cached in ~/.cache/koto-tests) gets, in an
overlay (tests/support/rootfs.py), Koto installed by deploy/install.sh from a wheel of this checkout and the aarch64
wheels of the same versions as the build machine's wheelhouse (/opt/koto/.venv, as on a Pi; see
`tests/support/vm.arm64_wheelhouse`), and a copy of this checkout in /opt/koto-src (bench/ and tests/support/ are
not in the wheel; PYTHONPATH). koto.service and koto-firstboot are disabled (the bench starts its own daemon); a
unit runs `python -m bench.arm64_rss --guest` once the boot is done. That is section 2 of bench/daemon_cost.py
(`three_kinds`: `koto run` with an SDM120 on a pty served by the bench, an S0 kettle and a BTHome plug with its GPIO
contact on the daemon's loop, the page on, MALLOC_ARENA_MAX=1 as the unit sets it), with the guest venv's
interpreter. Every 5 s after the settle it reads the daemon's /proc/PID/status (VmRSS, RssAnon, RssFile, RssShmem)
and smaps_rollup (Pss, Pss_Anon, Pss_File); at the end VmHWM. The guest prints the figures between markers on its
serial console with `uname -r` and the page size, and powers off; this side parses them.

Emulation is slower (on a 2-core x86-64 host READY came about 10 s after the start, the guest's whole run took 3.5
minutes, `--ready` allows 15): only the memory figures mean anything, not CPU or times. The ext4 image
is made with `mkfs.ext4 -d` (nothing mounted on the host); the guest has 1 GiB and 2 CPUs (tests/support/vm.boot).
Needs root, qemu-system-aarch64, qemu-user-static registered for aarch64 and debootstrap (`make bench-arm64`
installs them when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "koto-tests"
BEGIN, END, LINE = "KOTO-ARM64-RSS-BEGIN", "KOTO-ARM64-RSS-END", "KOTO-ARM64-RSS-JSON "
GUEST_SRC = "/opt/koto-src"
GUEST_RESULT = "/var/tmp/koto-arm64-rss.json"  # also kept in the image, read with debugfs if the console garbles
DISTS = ("cryptography", "bthome-ble", "habluetooth", "dbus-fast", "bleak", "pymodbus", "orjson", "gpiozero")
STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")
ROLLUP_KEYS = ("Pss", "Pss_Anon", "Pss_File")


# ------------------------------------------------------------------------------------------------ inside the guest

def _kib(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            out[key] = int(rest.split()[0])
    return out


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in DISTS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"
    return out


def _file_rss(pid: int, top: int = 8) -> list[tuple[str, int, int]]:
    """The files mapped with the most resident pages: (name, Rss KiB, mapped size KiB), from /proc/PID/smaps."""
    rss: dict[str, list[int]] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and not head[0].endswith(":"):
            name = head[5] if len(head) == 6 and head[5].startswith("/") else ""
            if name:
                size = int(head[0].split("-")[1], 16) - int(head[0].split("-")[0], 16)
                rss.setdefault(name, [0, 0])[1] += size // 1024
        elif name and line.startswith("Rss:"):
            rss[name][0] += int(line.split()[1])
    ranked = sorted(rss.items(), key=lambda kv: -kv[1][0])[:top]
    return [(Path(n).name, r, size) for n, (r, size) in ranked]


def guest(seconds: float, settle_s: float, ready_s: float) -> dict[str, Any]:
    """Section 2 of bench/daemon_cost.py on this (guest) machine, with the split of every RSS sample."""
    from bench import daemon_cost

    samples: list[dict[str, int]] = []
    files: list[list[tuple[str, int, int]]] = []  # each sample's largest file-backed mappings

    def sample(pid: int) -> int:
        s = _kib(Path(f"/proc/{pid}/status"), STATUS_KEYS) | _kib(Path(f"/proc/{pid}/smaps_rollup"), ROLLUP_KEYS)
        s["t"] = round(time.monotonic() - t0)
        samples.append(s)
        files.append(_file_rss(pid))
        return s["VmRSS"]

    ready_at: list[float] = []
    ready = daemon_cost.Notify.ready

    async def timed_ready(self: daemon_cost.Notify, proc: asyncio.subprocess.Process, limit_s: float) -> float:
        at = await ready(self, proc, limit_s)
        ready_at.append(at - t0)
        return at

    daemon_cost.Notify.ready = timed_ready  # type: ignore[method-assign]
    bare = subprocess.run([sys.executable, "-c", "print(next(line.split()[1] for line in open('/proc/self/status') "
                           "if line.startswith('VmHWM')))"], capture_output=True, text=True, check=True)
    t0 = time.monotonic()
    k = asyncio.run(daemon_cost.three_kinds(seconds, settle_s=settle_s, ready_s=ready_s, rss_kib=sample))
    at = max(range(len(samples)), key=lambda i: samples[i]["VmRSS"])
    peak = samples[at]
    mib = 1024.0
    return {"kernel": platform.release(), "machine": platform.machine(), "page_size": os.sysconf("SC_PAGE_SIZE"),
            "python": platform.python_version(), "interpreter": sys.executable,
            "mem_total_mib": _kib(Path("/proc/meminfo"), ("MemTotal",))["MemTotal"] / mib, "cpus": os.cpu_count(),
            "crypto": daemon_cost._crypto(sys.executable), "dists": _versions(),
            "hwm_mib": k["hwm_mib"], "rss_mib": k["rss_mib"], "pss_mib": k["pss_mib"],
            "anon_mib": peak["RssAnon"] / mib, "file_mib": peak["RssFile"] / mib, "shmem_mib": peak["RssShmem"] / mib,
            "pss_anon_mib": peak.get("Pss_Anon", 0) / mib, "pss_file_mib": peak.get("Pss_File", 0) / mib,
            "files_at_peak": files[at],
            "bare_hwm_mib": int(bare.stdout) / mib, "ready_s": ready_at[0] if ready_at else -1.0,
            "emulated_cpu_pct": k["cpu_pct"], "seconds": seconds, "settle_s": settle_s, "samples": samples}


GUEST_UNIT = """[Unit]
Description=bench/arm64_rss.py: section 2 of bench/daemon_cost.py, figures on the console, then power off

[Service]
Type=exec
ExecStart=/usr/local/sbin/koto-arm64-rss
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyAMA0

[Install]
WantedBy=multi-user.target
"""

GUEST_SCRIPT = f"""#!/bin/sh
echo 1 > /proc/sys/kernel/printk  # no kernel lines in the middle of the report
timeout 900 systemctl is-system-running --wait >/dev/null 2>&1  # the boot's own jobs done first (Type=exec)
cd {GUEST_SRC}
echo {BEGIN}
PYTHONPATH={GUEST_SRC} /opt/koto/.venv/bin/python -m bench.arm64_rss --guest "$@" 2>&1
echo "exit=$?"
echo {END}
sync
systemctl poweroff
"""


# ------------------------------------------------------------------------------------------------ on this machine

def build_images(work: Path, args: list[str]) -> dict[str, Path]:
    """The arm64 root with Koto installed and this checkout in it, as an ext4 image (module docstring)."""
    from tests.support.rootfs import OverlayRoot, build_wheel
    from tests.support.vm import arm64_root, arm64_wheelhouse

    t = time.monotonic()
    lower = arm64_root(CACHE)
    print(f"arm64 root: {lower} ({time.monotonic() - t:.0f} s)", flush=True)
    wheel = build_wheel(work / "dist")
    wheels = arm64_wheelhouse(CACHE)
    extra = work / "extra"
    extra.mkdir()
    (extra / "koto-arm64-rss.service").write_text(GUEST_UNIT)
    (extra / "koto-arm64-rss").write_text(GUEST_SCRIPT.replace('"$@"', " ".join(args)))
    r = OverlayRoot(work / "root", {"/mnt/koto-src": REPO, "/mnt/wheels": wheels, "/mnt/dist": wheel.parent,
                                    "/mnt/extra": extra}, lower=lower,
                    read_only=frozenset({"/mnt/koto-src", "/mnt/wheels"}))
    t = time.monotonic()
    r.run(f"sh /mnt/koto-src/deploy/install.sh --wheel /mnt/dist/{wheel.name} --wheels /mnt/wheels", timeout=3600)
    print(f"deploy/install.sh in the arm64 overlay (qemu-user): {time.monotonic() - t:.0f} s", flush=True)
    excludes = " ".join(f"--exclude={x}" for x in ("./.venv", "./.git", "./build", "*.egg-info", "__pycache__",
                                                   ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"))
    r.run_host(f"mkdir -p $ROOT{GUEST_SRC} && tar -C {REPO} {excludes} -cf - . | tar -C $ROOT{GUEST_SRC} -xf -")
    r.run(f"""
        echo koto-arm64 > /etc/hostname
        printf 'LABEL=kotoroot / ext4 defaults 0 1\\n' > /etc/fstab
        install -m 0644 /mnt/extra/koto-arm64-rss.service /etc/systemd/system/
        install -m 0755 /mnt/extra/koto-arm64-rss /usr/local/sbin/
        systemctl enable koto-arm64-rss.service
        systemctl disable -q koto.service koto-firstboot.service
        systemctl mask serial-getty@ttyAMA0.service getty@tty1.service
        cd {GUEST_SRC} && PYTHONPATH={GUEST_SRC} /opt/koto/.venv/bin/python -c 'import bench.daemon_cost, \
            tests.support.sim_gateway, drivers.modbus_sim, drivers.ble_backend, drivers.gpio.sim'
    """, timeout=1800)  # the import: fails here, in minutes, what would fail in the guest after a long boot
    root_img = work / "root.img"
    r.run_host(f"mkfs.ext4 -q -F -L kotoroot -d $ROOT {root_img} 3G", timeout=1800)
    boot_img = work / "boot.img"  # vm.boot attaches a second disk; the guest leaves it blank and unmounted
    with boot_img.open("wb") as f:
        f.truncate(1 << 20)
    return {"root": root_img, "boot": boot_img, "kernel": max((lower / "boot").glob("vmlinuz-*")),
            "initrd": max((lower / "boot").glob("initrd.img-*"))}


def parse(console: str, root_img: Path | None = None) -> dict[str, Any]:
    """The guest's figures: its JSON line between the markers, or the file it left in the image."""
    m = re.search(rf"{BEGIN}\r?\n(.*?){END}", console, re.S)
    if m:
        for line in m.group(1).replace("\r", "").splitlines():
            if line.startswith(LINE):
                try:
                    return dict(json.loads(line[len(LINE):]))
                except ValueError:
                    break  # a console line broken by another writer: the copy in the image
    if root_img is not None:
        out = subprocess.run(["debugfs", "-R", f"cat {GUEST_RESULT}", str(root_img)], capture_output=True, text=True)
        if out.stdout.strip().startswith("{"):
            return dict(json.loads(out.stdout))
    raise RuntimeError(f"no figures from the guest; the console ends:\n{console[-6000:]}")


def report(f: dict[str, Any]) -> None:
    target = 45e6 / 1024 / 1024
    print(f"guest: Linux {f['kernel']} {f['machine']}, page size {f['page_size']} B, {f['cpus']} CPUs, "
          f"{f['mem_total_mib']:.0f} MiB; Python {f['python']} ({f['interpreter']}), {f['crypto']}")
    print("guest venv: " + ", ".join(f"{k} {v}" for k, v in f["dists"].items()))
    print(f"koto run, all three driver kinds (SDM120 on a pty, S0 kettle, BTHome plug + GPIO contact), READY "
          f"{f['ready_s']:.0f} s after the start (emulated), settle {f['settle_s']:.0f} s, "
          f"{f['seconds']:.0f} s sampled:")
    print(f"  peak RSS (VmHWM) {f['hwm_mib']:.1f} MiB (target <= 45 MB = {target:.1f} MiB: "
          f"{'met' if f['hwm_mib'] <= target else 'missed'} by {abs(f['hwm_mib'] - target):.1f} MiB); "
          f"RSS {f['rss_mib']:.1f} MiB (peak of the samples), PSS {f['pss_mib']:.1f} MiB")
    print(f"  at the peak sample: RssAnon {f['anon_mib']:.1f} MiB, RssFile {f['file_mib']:.1f} MiB, "
          f"RssShmem {f['shmem_mib']:.1f} MiB (Pss_Anon {f['pss_anon_mib']:.1f}, Pss_File {f['pss_file_mib']:.1f})")
    print("  largest file-backed at the peak sample (resident / mapped MiB): " + ", ".join(
        f"{n} {r / 1024:.1f}/{size / 1024:.1f}" for n, r, size in f.get("files_at_peak", [])))
    print("  VmRSS samples (MiB): " + " ".join(f"{s['VmRSS'] / 1024:.1f}" for s in f["samples"]))
    print(f"  bare interpreter VmHWM {f['bare_hwm_mib']:.1f} MiB; CPU {f['emulated_cpu_pct']:.1f} % of an "
          f"emulated core (meaningless under TCG)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="window of RSS samples after the settle")
    ap.add_argument("--settle", type=float, default=60.0, help="seconds after READY before sampling")
    ap.add_argument("--ready", type=float, default=900.0, help="seconds the guest allows the daemon to reach READY")
    ap.add_argument("--keep", type=Path, help="folder for the images and console.log (default: a temporary one)")
    ap.add_argument("--guest", action="store_true", help="(inside the guest) run the measurement, print the figures")
    ap.add_argument("--json", action="store_true", help="also print the figure as one JSON line (bench/report.py)")
    a = ap.parse_args(argv)
    if a.guest:
        f = guest(a.seconds, a.settle, a.ready)
        Path(GUEST_RESULT).write_text(json.dumps(f))
        print(LINE + json.dumps(f), flush=True)
        return 0
    from tests.support.rootfs import why_not
    from tests.support.vm import boot
    from tests.support.vm import why_not as vm_why_not

    missing = why_not() or vm_why_not()
    if missing:
        print(f"arm64_rss: {missing} (`sudo make bench-arm64` installs what is missing)", file=sys.stderr)
        return 2
    work = a.keep or Path(tempfile.mkdtemp(prefix="koto-arm64-rss-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    images = build_images(work, [f"--seconds {a.seconds:g}", f"--settle {a.settle:g}", f"--ready {a.ready:g}"])
    t1 = time.monotonic()
    print(f"images ready in {t1 - t0:.0f} s ({work}); booting under qemu-system-aarch64 (minutes)", flush=True)
    console = boot(images["root"], images["boot"], images["kernel"], images["initrd"],
                   timeout=1200 + a.ready + a.settle + a.seconds)
    (work / "console.log").write_text(console)
    print(f"guest run {time.monotonic() - t1:.0f} s; console in {work / 'console.log'}", flush=True)
    f = parse(console, images["root"])
    report(f)
    if not a.keep:
        for name in ("root.img", "boot.img"):
            (work / name).unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(work / "root")], check=False)
    from bench.figures import Figure, emit

    emit("arm64_rss", [Figure("peak RSS, koto run with all three driver kinds, 64-bit ARM (arm64 kernel, emulated)",
                              f["hwm_mib"], "MiB", target="<= 45 MB",
                              note=f"Linux {f['kernel']}, {f['page_size']} B pages; RssAnon {f['anon_mib']:.1f}, "
                                   f"RssFile {f['file_mib']:.1f} MiB; docs/performance.md")], argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
