"""An arm64 Debian gateway booted under qemu-system-aarch64 (full-system emulation, no KVM), for `make image-test`.

The root is a debootstrapped Debian 12 arm64 (systemd, the distribution's kernel and initramfs), made once under
qemu-user and cached; deploy/install.sh is applied to an overlay of it in a chroot (emulated too), the merged tree
becomes an ext4 image (`mkfs.ext4 -d`, nothing mounted on the host), and the card's boot partition is a separate
FAT image mounted by the guest at /boot/firmware, as Raspberry Pi OS does. The guest reports on its serial console
between markers and powers itself off.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.rootfs import DEBOOTSTRAP_PACKAGES

ARM64_PACKAGES = f"{DEBOOTSTRAP_PACKAGES},systemd-sysv,udev,kmod,linux-image-arm64,dosfstools"
QEMU = "qemu-system-aarch64"


def why_not() -> str | None:
    if shutil.which(QEMU) is None:
        return "needs qemu-system-aarch64 (apt-get install qemu-system-arm)"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "needs qemu-user-static registered for aarch64 (binfmt_misc) to build the arm64 root"
    return None


def arm64_root(cache: Path, suite: str = "bookworm", mirror: str = "http://deb.debian.org/debian") -> Path:
    """A Debian arm64 root with systemd and a kernel, made once (about 15 minutes under qemu-user) and cached."""
    done = cache / f"debootstrap-{suite}-arm64"
    if done.is_dir():
        return done
    partial = cache / f"debootstrap-{suite}-arm64.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={ARM64_PACKAGES}", suite,
                    str(partial), mirror], check=True, capture_output=True, timeout=3600)
    partial.rename(done)
    return done


def arm64_wheelhouse(cache: Path) -> Path:
    """aarch64 wheels of exactly the versions in the build machine's wheelhouse (`rootfs.wheelhouse`, what the tests
    install): its pure wheels as they are, the others downloaded for aarch64 and Debian 12's CPython 3.11; cached.

    Not a binary-only resolve of Koto's requirements for aarch64 (`pip download --only-binary=:all:`), as before
    2026-12-07: habluetooth's chain needs PyRIC (under bluetooth-auto-recovery), which PyPI has as source only, so
    that resolve backtracked to bthome-ble 3.9.1 without habluetooth: the image ran an older BTHome parser than the
    tests, and a smaller daemon (bench/arm64_rss.py found it). pyproject.toml's floor refuses that chain now."""
    from tests.support.rootfs import wheelhouse

    host = wheelhouse(cache)
    folder = cache / host.name.replace("wheels-", "wheels-aarch64-pinned-")
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    binary = []
    for w in sorted(host.glob("*.whl")):
        if w.name.endswith("-none-any.whl"):
            shutil.copy2(w, folder)
        else:
            binary.append("==".join(w.name.split("-")[:2]))
    platforms = [a for p in ("manylinux_2_36_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
                             "manylinux2014_aarch64", "linux_aarch64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(folder),
                    "--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                    "--abi", "cp311", "--abi", "abi3", "--abi", "none", *platforms, *binary],
                   check=True, capture_output=True, timeout=900)
    (folder / ".complete").touch()
    return folder


def boot(root_img: Path, boot_img: Path, kernel: Path, initrd: Path, *, timeout: float = 1800) -> str:
    """Boot the images; return the serial console's output once the guest powers off (or the timeout hits)."""
    cmd = [QEMU, "-M", "virt", "-cpu", "cortex-a57", "-smp", "2", "-m", "1024", "-nographic", "-no-reboot",
           "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", "root=LABEL=kotoroot rw console=ttyAMA0 panic=-1 systemd.show_status=1",
           "-drive", f"if=none,file={root_img},format=raw,id=root", "-device", "virtio-blk-pci,drive=root",
           "-drive", f"if=none,file={boot_img},format=raw,id=boot", "-device", "virtio-blk-pci,drive=boot",
           "-nic", "none"]  # no network: the clock stays unsynchronised, the gateway meters locally
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        return (e.stdout or b"").decode(errors="replace") + "\n[timeout]"
