#!/bin/sh
# Install (or update) Koto on a Raspberry Pi OS / Debian machine: the one script that the README's installer
# section, the cloud-init user-data and the image recipe all run.
#
#   sudo deploy/install.sh                      # from this checkout (builds a wheel from it)
#   sudo deploy/install.sh --wheel koto_gateway-0.1.0-py3-none-any.whl
#   sudo deploy/install.sh --wheel W --wheels DIR --no-apt     # offline: dependencies from a folder of wheels
#
# What it does, in an order that works (nothing writes to /var/lib/koto before its owner exists):
#   1. the distribution's packages Koto needs (python3-venv; python3-lgpio where the archive has it, i.e. on
#      Raspberry Pi OS), only when missing;
#   2. the groups the service uses (gpio, dialout, spi; made as system groups where the OS has none, because
#      systemd refuses to start a unit naming a missing group) and the `koto` system user in them;
#   3. the state folder /var/lib/koto (koto:koto 0700; files inside another owner left by an earlier install are
#      given back to koto) and /etc/koto (root:koto 0750);
#   4. a venv in /opt/koto/.venv that sees the system's packages (python3-lgpio), with Koto from the wheel;
#   5. the units (koto.service as it is in the repository, koto-firstboot.service, a koto.service drop-in that
#      waits for the first-boot import and does not start without a config) and the journald drop-in;
#   6. enables both services (starts nothing: koto.service starts at the next boot, or now with
#      `systemctl start koto` once /etc/koto/koto.toml exists).
#
# Idempotent: every step compares first and changes only what differs, printing one "changed:" line per change;
# a second run prints "nothing changed" and writes nothing. Exit status 0, or 1 with one plain line on error.
set -eu

PREFIX=/opt/koto
VENV=$PREFIX/.venv
USER_NAME=koto
GROUPS_WANTED="gpio dialout spi"
STATE=/var/lib/koto
ETC=/etc/koto
UNITS=/etc/systemd/system
JOURNALD=/etc/systemd/journald.conf.d
EXTRAS=gpio,serial,ble,sync,web
SRC=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
WHEEL=
WHEELS=
APT=yes
ENABLE=yes
PYTHON=/usr/bin/python3
CHANGES=0

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --wheel FILE  --wheels DIR (no index: dependencies from DIR)  --no-apt  --no-enable  --python PATH"
}

die() { echo "install.sh: $*" >&2; exit 1; }
changed() { CHANGES=$((CHANGES + 1)); echo "changed: $*"; }

while [ $# -gt 0 ]; do
    case $1 in
        --wheel) WHEEL=${2:?--wheel needs a file}; shift 2 ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
        --no-apt) APT=no; shift ;;
        --no-enable) ENABLE=no; shift ;;
        --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run it as root (sudo $0): it creates the koto user and writes /opt, /etc and /var/lib"
[ -z "$WHEEL" ] || [ -f "$WHEEL" ] || die "$WHEEL: no such wheel"
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "$WHEELS: no such folder"
[ -n "$WHEEL" ] || [ -f "$SRC/pyproject.toml" ] || die "no --wheel given and $SRC is not a Koto checkout"
[ -f "$SRC/systemd/koto.service" ] || die "$SRC/systemd/koto.service missing: run the script from a Koto checkout (or release archive)"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

# ---------------------------------------------------------------------------------------------- 1. packages

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
in_archive() { apt-cache show "$1" >/dev/null 2>&1; }

if [ "$APT" = yes ]; then
    want=
    installed python3-venv || want="$want python3-venv"
    # gpiozero's pin factory on every Pi (Pi 5 included). Raspberry Pi OS packages it; plain Debian does not.
    if ! installed python3-lgpio; then
        if in_archive python3-lgpio; then want="$want python3-lgpio"
        else echo "note: python3-lgpio is not in this system's archive (not Raspberry Pi OS?): GPIO sources need it"
        fi
    fi
    if [ -n "$want" ]; then
        # shellcheck disable=SC2086  # $want is a list of package names, split on purpose
        apt-get install -y -q $want >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $want >/dev/null; } \
            || die "apt-get install$want failed"
        changed "installed$want"
    fi
fi
[ -x "$PYTHON" ] || die "$PYTHON: no Python (install python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Koto needs Python >= 3.11 ($PYTHON is older)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || die "$PYTHON has no venv module: apt-get install python3-venv"

# ---------------------------------------------------------------------------------------------- 2. user, groups

for g in $GROUPS_WANTED; do
    getent group "$g" >/dev/null || { groupadd --system "$g"; changed "created system group $g"; }
done
if ! getent passwd "$USER_NAME" >/dev/null; then
    getent group "$USER_NAME" >/dev/null || groupadd --system "$USER_NAME"
    useradd --system --gid "$USER_NAME" --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
        --comment "Koto gateway" "$USER_NAME"
    changed "created system user $USER_NAME"
fi
for g in $GROUPS_WANTED; do
    id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx "$g" || { usermod -aG "$g" "$USER_NAME"; changed "added $USER_NAME to group $g"; }
done

# ---------------------------------------------------------------------------------------------- 3. folders

# ensure_dir PATH OWNER:GROUP MODE
ensure_dir() {
    if [ ! -d "$1" ]; then
        install -d -o "${2%%:*}" -g "${2##*:}" -m "$3" "$1"; changed "created $1 ($2 $3)"; return
    fi
    if [ "$(stat -c '%U:%G %a' "$1")" != "$2 $(echo "$3" | sed 's/^0*//')" ]; then
        chown "$2" "$1"; chmod "$3" "$1"; changed "set $1 to $2 $3"
    fi
}
ensure_dir "$STATE" "$USER_NAME:$USER_NAME" 0700
# The README's old order (provision or run with sudo before the user existed) left root-owned keys/ and
# ledger.db here, which crash-loop the service: give them back.
if [ -n "$(find "$STATE" ! -user "$USER_NAME" -print -quit)" ]; then
    chown -R "$USER_NAME:$USER_NAME" "$STATE"; changed "gave the files in $STATE back to $USER_NAME"
fi
ensure_dir "$ETC" "root:$USER_NAME" 0750
ensure_dir "$PREFIX" root:root 0755

# ---------------------------------------------------------------------------------------------- 4. venv, wheel

if [ ! -x "$VENV/bin/python" ] || ! grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg"; then
    rm -rf "$VENV"
    "$PYTHON" -m venv --system-site-packages "$VENV"
    changed "created $VENV (sees the system's python3-lgpio)"
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ -z "$WHEEL" ]; then
    # A wheel from this checkout, built from a copy so that root leaves no build/ or *.egg-info in the installer's
    # clone. An unchanged checkout gives a wheel with the same RECORD, recognised below and not reinstalled.
    mkdir "$TMP/src"
    tar -C "$SRC" --exclude=./.venv --exclude=./build --exclude='*.egg-info' --exclude=.git -cf - . \
        | tar -C "$TMP/src" -xf - || die "cannot copy $SRC"
    "$VENV/bin/pip" wheel -q --no-deps -w "$TMP" "$TMP/src" >/dev/null || die "building a wheel from $SRC failed"
    WHEEL=$(ls "$TMP"/koto_gateway-*.whl)
fi
# The wheel's RECORD lists every file with its hash: the same RECORD is the same Koto, whatever the zip's dates.
fingerprint=$("$PYTHON" - "$WHEEL" <<'EOF'
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    print(hashlib.sha256(z.read(record)).hexdigest())
EOF
) || die "$WHEEL: not a wheel"
if [ "$(cat "$PREFIX/.installed-wheel" 2>/dev/null)" != "$fingerprint" ]; then
    # From a wheelhouse: wheels only. From the index: wheels wherever one exists (nothing compiled on the Pi), and the
    # source of a pure-Python package that PyPI has only as source: PyRIC, under habluetooth (bthome-ble needs it).
    # --only-binary=:all: there made pip fall back to bthome-ble 3.9.1 without it: an older parser than the tests'.
    set -- --prefer-binary
    [ -z "$WHEELS" ] || set -- --only-binary=:all: --no-index --find-links "$WHEELS"
    "$VENV/bin/pip" install -q "$@" "${WHEEL}[$EXTRAS]" || die "pip install $WHEEL failed (see above)"
    "$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEEL" || die "pip install $WHEEL failed (see above)"
    echo "$fingerprint" > "$PREFIX/.installed-wheel"
    changed "installed $(basename "$WHEEL") into $VENV"
fi
"$VENV/bin/koto" --version >/dev/null || die "$VENV/bin/koto does not run"
# `koto` on every PATH, for installers and support (sudo koto doctor, koto status).
if [ "$(readlink /usr/local/bin/koto 2>/dev/null)" != "$VENV/bin/koto" ]; then
    ln -sfn "$VENV/bin/koto" /usr/local/bin/koto; changed "linked /usr/local/bin/koto"
fi

# ---------------------------------------------------------------------------------------------- 5. files, units

# put SRC DST MODE: copy when missing or different.
put() {
    if [ ! -f "$2" ] || ! cmp -s "$1" "$2" || [ "$(stat -c %a "$2")" != "$(echo "$3" | sed 's/^0*//')" ]; then
        install -D -o root -g root -m "$3" "$1" "$2"; changed "installed $2"
        return 0
    fi
    return 1
}
UNITS_CHANGED=no
JOURNALD_CHANGED=no
[ -f "$SRC/README.md" ] && { put "$SRC/README.md" "$PREFIX/README.md" 0644 || true; }
[ -f "$SRC/deploy/koto.example.toml" ] && { put "$SRC/deploy/koto.example.toml" "$PREFIX/koto.example.toml" 0644 || true; }
put "$SRC/systemd/koto.service" "$UNITS/koto.service" 0644 && UNITS_CHANGED=yes
put "$SRC/systemd/koto-firstboot.service" "$UNITS/koto-firstboot.service" 0644 && UNITS_CHANGED=yes
put "$SRC/systemd/koto.service.d/10-firstboot.conf" "$UNITS/koto.service.d/10-firstboot.conf" 0644 && UNITS_CHANGED=yes
put "$SRC/systemd/journald.conf.d/60-koto.conf" "$JOURNALD/60-koto.conf" 0644 && JOURNALD_CHANGED=yes

# ---------------------------------------------------------------------------------------------- 6. systemd

booted=no
[ -d /run/systemd/system ] && booted=yes  # a running systemd (not a chroot, not an image being built)
if [ "$booted" = yes ]; then
    [ "$UNITS_CHANGED" = no ] || systemctl daemon-reload
    [ "$JOURNALD_CHANGED" = no ] || systemctl restart systemd-journald
fi
if [ "$ENABLE" = yes ] && command -v systemctl >/dev/null; then
    for u in koto-firstboot.service koto.service; do
        [ "$(systemctl is-enabled "$u" 2>/dev/null || true)" = enabled ] || {
            systemctl enable -q "$u" 2>/dev/null; changed "enabled $u"; }
    done
    # A running gateway picks up a new version or unit now (a clean stop: its records are kept).
    if [ "$booted" = yes ] && [ "$CHANGES" -gt 0 ]; then systemctl try-restart koto.service; fi
fi

if [ "$CHANGES" = 0 ]; then
    echo "nothing changed: Koto $("$VENV/bin/koto" --version | awk '{print $NF}') is installed as it should be"
else
    echo "done: $CHANGES change(s); Koto $("$VENV/bin/koto" --version | awk '{print $NF}') in $VENV"
fi
if [ ! -f "$ETC/koto.toml" ]; then
    echo "next: put koto.toml on the boot partition and reboot (docs/install.md), or write $ETC/koto.toml" \
         "(from $PREFIX/koto.example.toml), check it with 'koto check', then: sudo systemctl start koto"
fi
