#!/usr/bin/env bash
# `make test-arm64`: the test suite inside a Debian 12 arm64 root under qemu-user emulation (binfmt_misc), the
# nearest this x86 machine gets to a Raspberry Pi 3/4 without one: every binary in the root, Python, SQLite,
# Mosquitto, PostgreSQL and the wheels pip picks, is the aarch64 build, run about 5-10x slower than natively.
#
# The root is made once with debootstrap and kept in $KOTO_ARM64_ROOT (default /var/cache/koto-arm64/bookworm);
# the venv inside it is kept too, so a second run only copies the source and runs the tests. Runs as root
# (debootstrap, chroot, mounts). Environment:
#   KOTO_ARM64_ROOT     where the root lives                 KOTO_ARM64_MIRROR   a Debian mirror for debootstrap
#   KOTO_ARM64_TARGET   the make target run inside (pytest)  KOTO_TEST_SLOWDOWN  how much longer tests wait (8)
#   PYTEST_ARGS         extra arguments to pytest, e.g. "tests/koto -x"
set -euo pipefail

ROOT=${KOTO_ARM64_ROOT:-/var/cache/koto-arm64/bookworm}
TARGET=${KOTO_ARM64_TARGET:-pytest}
SLOWDOWN=${KOTO_TEST_SLOWDOWN:-8}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PACKAGES=python3,python3-venv,python3-pip,python3-dev,mosquitto,postgresql,systemd,systemd-journal-remote,ca-certificates,make,git,procps,gcc,libc6-dev,libmodbus-dev

say() { printf 'test-arm64: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts); run: sudo make test-arm64"
apt_install() { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; }

if [ "$(uname -m)" != aarch64 ]; then
    # binfmt_misc lets the kernel hand every aarch64 binary in the root to qemu; the F flag (qemu-user-static's
    # registration) opens the interpreter once, so it works inside the chroot without being in it.
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc (a container without it?); aarch64 binaries cannot run here"
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        command -v qemu-aarch64-static >/dev/null || apt_install qemu-user-static binfmt-support
        update-binfmts --enable qemu-aarch64 2>/dev/null || true
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
        || die "qemu-aarch64 is not registered with binfmt_misc (apt install qemu-user-static binfmt-support)"
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || die "qemu-aarch64 is registered without the F flag: chrooted binaries cannot find qemu; use qemu-user-static"
fi

if [ ! -e "$ROOT/.koto-root-ok" ]; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    say "making a Debian 12 arm64 root in $ROOT (once; about 10-20 minutes under emulation)"
    t0=$(date +%s)
    mkdir -p "$(dirname "$ROOT")"
    # shellcheck disable=SC2086  # an empty mirror means debootstrap's default
    debootstrap --arch=arm64 --variant=minbase --include="$PACKAGES" bookworm "$ROOT" ${KOTO_ARM64_MIRROR:-}
    touch "$ROOT/.koto-root-ok"
    say "root made in $(( $(date +%s) - t0 )) s"
fi

# The source as git sees it (tracked and new files, nothing ignored); the root's venv is kept between runs.
mkdir -p "$ROOT/koto"
find "$ROOT/koto" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$ROOT/koto" -xf -

mounted=()
bind() { mkdir -p "$ROOT$2"; mount "${@:3}" "$1" "$ROOT$2"; mounted=("$ROOT$2" "${mounted[@]}"); }
cleanup() { for m in "${mounted[@]}"; do umount -R -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
bind proc /proc -t proc
bind sysfs /sys -t sysfs
bind /dev /dev --rbind    # the host's ptys too: the serial tests open pty pairs
bind tmpfs /tmp -t tmpfs
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# pip in the root trusts what pip here trusts: this machine's CA bundle includes any local CA (a proxy's).
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"

say "running 'make $TARGET' in the arm64 root (KOTO_TEST_SLOWDOWN=$SLOWDOWN)"
t0=$(date +%s)
rc=0
chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    KOTO_TEST_SLOWDOWN="$SLOWDOWN" PYTEST_ADDOPTS="${PYTEST_ARGS:-}" PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} ${no_proxy:+no_proxy=$no_proxy} \
    sh -c "cd /koto && uname -m && make $TARGET" || rc=$?
say "make $TARGET in the arm64 root: exit $rc after $(( $(date +%s) - t0 )) s"
exit $rc
