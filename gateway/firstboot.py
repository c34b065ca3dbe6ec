"""First boot from the boot partition: import `koto.toml` (and the files it names) into /etc/koto, once.

An installer flashes a card, drops `koto.toml` on its FAT boot partition (and, if the config names them, the
operator's public key, the CA and the client certificate and key, by the same file names), and boots.
`koto-firstboot.service` runs `koto firstboot` before `koto.service`:

1. the config and every file it names under /etc/koto whose name is on the partition are put in place: the config
   and private keys mode 0600 and the service user's, certificates and public keys 0644 and root's (the gateway
   reads them but cannot replace what it trusts); a file already there is kept aside, put back if refused;
2. the config is checked as `koto check` does (every problem, and every file it names);
3. refused: everything from step 1 is undone, the files stay on the card for support with the reasons beside them
   in `koto.toml.rejected.txt`, and the command exits 1; /etc/koto/koto.toml is then absent (or the earlier, valid
   one), and koto.service does not start on it (its drop-in needs /etc/koto/koto.toml);
4. accepted: each imported file is scrubbed from the card (overwritten in place at the same length, synced, then
   deleted: see gateway/bootfs.py), the device key is made (`koto provision`, as the service user) and its public
   key is left on the card as `koto-<gateway id>.pub.pem` for registration (public, not a secret). The card's
   free space is overwritten as well: an editor that replaced koto.toml on the laptop left the old copies there;
5. on a Raspberry Pi's boot partition, what the sources need is switched on (the UART on GPIO 14/15 for a source on
   /dev/serial0, with the kernel's console taken off it; SPI for an MCP3008: gateway/boot_hardware.py), and the
   command reboots the Pi once for the firmware to read it.

The import runs whenever `koto.toml` is on the partition, so a refused card fixed on a laptop is imported at its
next boot, and a new config dropped on a running gateway's card replaces the old one at the next reboot.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koto.files import fsync_dir, write_atomic

from .boot_hardware import switch_on
from .bootfs import BootPartition
from .config_check import check_config

log = logging.getLogger("koto.firstboot")

CONFIG_NAME = "koto.toml"
REJECTED_NAME = "koto.toml.rejected.txt"


@dataclass
class ImportResult:
    """What happened: nothing to do, imported (and which files), or refused with the problems."""

    status: str  # "nothing", "imported", "refused"
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    gateway_id: str | None = None
    public_pem: str | None = None
    switched_on: list[str] = field(default_factory=list)  # boot-file changes for the sources: a reboot applies them


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def named_files(data: Any, etc: Path) -> list[Path]:
    """Every path under `etc` that the config names anywhere (cloud.ca/cert/key, operator_keys, register maps...)."""
    found: list[Path] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.startswith(f"{etc}/") and "/" not in v[len(str(etc)) + 1:]:
            p = Path(v)
            if p not in found:
                found.append(p)

    walk(data)
    return found


def is_secret(data: bytes) -> bool:
    """A private key (any PEM "... PRIVATE KEY"). Certificates and public keys are meant to be shared."""
    return b"PRIVATE KEY-----" in data


def _put(path: Path, data: bytes, owner: Owner | None, *, secret: bool = True) -> None:
    """A secret (the config, a private key): mode 0600, the service user's (it must read it). Public material (the
    CA, a certificate, the operator's public key): 0644 and root's, so the service can read but never replace the
    keys it trusts (as `koto provision` leaves them)."""
    write_atomic(path, data, mode=0o600 if secret else 0o644)
    if owner is not None and secret:
        os.chown(path, owner.uid, owner.gid)


def import_from_boot(boot: BootPartition, *, etc: Path, owner: Owner | None,
                     provision: Callable[[Path], str]) -> ImportResult:
    """Import `koto.toml` from `boot` into `etc` (see the module's docstring). `provision(config)` makes the device
    key for the imported config and returns its public key PEM."""
    if not boot.exists(CONFIG_NAME):
        return ImportResult("nothing")
    raw = boot.read(CONFIG_NAME)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return _refuse(boot, [f"{boot.where}/{CONFIG_NAME}: not valid TOML: {e}"], [], {})
    etc.mkdir(parents=True, exist_ok=True)
    imports = [(p, p.name) for p in named_files(data, etc) if boot.exists(p.name)]
    kept: dict[Path, tuple[bytes, os.stat_result] | None] = {}  # what was there before, to put back on refusal
    target = etc / CONFIG_NAME
    staged = etc / f".{CONFIG_NAME}.import"
    try:
        for path, name in imports:
            kept[path] = (path.read_bytes(), path.stat()) if path.exists() else None
            named = boot.read(name)
            _put(path, named, owner, secret=is_secret(named))
        _put(staged, raw, owner)
        report = check_config(staged)
    except OSError as e:
        return _refuse(boot, [f"{etc}: cannot write the imported files: {e}"], imports, kept, staged)
    if report.problems:
        problems = [str(p).replace(str(staged), f"{boot.where}/{CONFIG_NAME}") for p in report.problems]
        return _refuse(boot, problems, imports, kept, staged)
    os.replace(staged, target)
    fsync_dir(etc)
    log.info("imported %s from %s into %s", CONFIG_NAME,
             boot.where, ", ".join([str(target), *(str(p) for p, _ in imports)]))
    # The secrets are on the root file system now: scrub them from the card before anything else can fail.
    names = [CONFIG_NAME, *(n for _, n in imports)]
    for name in names:
        boot.scrub(name)
    if boot.exists(REJECTED_NAME):
        boot.scrub(REJECTED_NAME)
    wiped = boot.wipe_free()  # earlier copies an editor left behind when it replaced koto.toml
    log.info("scrubbed %s from %s (overwritten in place, synced, deleted) and overwrote its %.0f MB of free space",
             ", ".join(names), boot.where, wiped / 1e6)
    cfg = report.config
    assert cfg is not None
    if not cfg.state_dir.exists():  # a state_dir other than /var/lib/koto: made here, the service user's from the start
        cfg.state_dir.mkdir(mode=0o700, parents=True)
        if owner is not None:
            os.chown(cfg.state_dir, owner.uid, owner.gid)
    pem = provision(target)
    boot.write(f"koto-{cfg.id}.pub.pem", pem.encode())
    log.info("gateway %s provisioned; its public key is on the boot partition as koto-%s.pub.pem: register it "
             "at the billing cloud", cfg.id, cfg.id)
    switched = switch_on(boot, cfg)
    return ImportResult("imported", [str(target), *(str(p) for p, _ in imports)], gateway_id=cfg.id,
                        public_pem=pem, switched_on=switched)


def _refuse(boot: BootPartition, problems: list[str], imports: list[tuple[Path, str]],
            kept: dict[Path, tuple[bytes, os.stat_result] | None], staged: Path | None = None) -> ImportResult:
    """Undo what was put in /etc/koto, leave the card's files as they are with the reasons beside them."""
    for path, before in kept.items():
        if before is None:
            path.unlink(missing_ok=True)
        else:
            data, st = before
            write_atomic(path, data, mode=st.st_mode & 0o777)
            if os.geteuid() == 0:
                os.chown(path, st.st_uid, st.st_gid)
    if staged is not None:
        staged.unlink(missing_ok=True)
    note = (f"Koto did not import {CONFIG_NAME} from this card: {len(problems)} problem(s).\n"
            "Fix each line below in koto.toml on this card (any computer can edit it), put it back in the Pi and\n"
            "boot again; `koto check --config koto.toml` on a computer with Koto says the same. The gateway\n"
            "service does not start until the card's config is accepted.\n\n" + "\n".join(problems) + "\n")
    try:
        boot.write(REJECTED_NAME, note.encode())
    except Exception as e:  # the reason still goes to the journal
        log.error("could not write %s on %s: %s", REJECTED_NAME, boot.where, e)
    for p in problems:
        log.error("refused %s: %s", CONFIG_NAME, p)
    log.error("%s on %s was NOT imported (%d problem(s), kept with the reasons in %s); koto.service will not start "
              "on it", CONFIG_NAME, boot.where, len(problems), REJECTED_NAME)
    return ImportResult("refused", [n for _, n in imports], problems)
