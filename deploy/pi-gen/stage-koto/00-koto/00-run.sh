#!/bin/bash -e
# Install Koto into the image with the same script every other path uses (deploy/install.sh), run inside the
# image's root. Nothing device-specific goes into the image: no config, no key. koto-firstboot imports koto.toml
# from the boot partition on each card's first boot and `koto provision` makes that device's key there.
#
# KOTO_SRC   the Koto checkout (default: the one this stage lives in, three folders up)
# KOTO_WHEEL a wheel to install instead of building one from KOTO_SRC inside the image (faster under emulation)

KOTO_SRC="${KOTO_SRC:-$(cd "${STAGE_DIR}/../../.." && pwd)}"
[ -x "${KOTO_SRC}/deploy/install.sh" ] || [ -f "${KOTO_SRC}/deploy/install.sh" ] || {
	echo "stage-koto: ${KOTO_SRC}/deploy/install.sh not found; set KOTO_SRC to a Koto checkout" >&2
	exit 1
}

# Not /tmp: pi-gen's on_chroot mounts a fresh tmpfs on the root's /tmp (and /run) before it chroots, which would
# hide a copy put there beforehand.
DEST="${ROOTFS_DIR}/var/tmp/koto-src"
rm -rf "${DEST}"
mkdir -p "${DEST}"
# The source as git knows it (no .venv, no build output); a plain copy when it is not a git checkout.
if git -C "${KOTO_SRC}" rev-parse --git-dir >/dev/null 2>&1; then
	git -C "${KOTO_SRC}" ls-files -z --cached --others --exclude-standard \
		| (cd "${KOTO_SRC}" && tar --null --ignore-failed-read -T - -cf -) | tar -C "${DEST}" -xf -
else
	(cd "${KOTO_SRC}" && tar --exclude=./.venv --exclude=./build -cf - .) | tar -C "${DEST}" -xf -
fi

ARGS=""
if [ -n "${KOTO_WHEEL:-}" ]; then
	cp "${KOTO_WHEEL}" "${DEST}/"
	ARGS="--wheel /var/tmp/koto-src/$(basename "${KOTO_WHEEL}")"
fi

on_chroot << CHROOT
set -e
sh /var/tmp/koto-src/deploy/install.sh ${ARGS}
/opt/koto/.venv/bin/koto --version
CHROOT

rm -rf "${DEST}"
