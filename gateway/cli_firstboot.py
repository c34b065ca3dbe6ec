"""`koto firstboot`: import koto.toml from the boot partition (run by koto-firstboot.service, as root)."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .bootfs import BootPartition, ImageBoot, MountedBoot, fat_offset, find_boot
from .firstboot import Owner, import_from_boot


def _provisioner(owner: Owner | None, user: str) -> Callable[[Path], str]:
    def provision(config: Path) -> str:
        """Make the device key as the service user, so everything in the state folder is its own from the start."""
        if owner is not None:
            koto = str(Path(sys.executable).with_name("koto"))  # the venv's own koto, beside its python
            out = subprocess.run([koto, "provision", "--config", str(config)], capture_output=True, text=True,
                                 user=owner.uid, group=owner.gid, extra_groups=[], check=False)
            if out.returncode != 0:
                raise click.ClickException(f"koto provision as {user} failed: {out.stderr.strip()}")
            return out.stdout
        from .cli_common import resolve

        _cfg, sd, _gid = resolve(str(config), None)
        return sd.provision().public_pem

    return provision


@click.command()
@click.option("--boot", "boot_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="The mounted boot partition. Default: /boot/firmware, else /boot.")
@click.option("--image", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A FAT file system in an image file or an unmounted block device instead (mtools).")
@click.option("--offset", type=int, default=None,
              help="With --image: where the FAT starts, in bytes. Default: 0 for a bare FAT, else the first FAT "
                   "partition of a whole card's partition table.")
@click.option("--etc", "etc_dir", type=click.Path(file_okay=False), default="/etc/koto", show_default=True,
              help="Where the config and the files it names go.")
@click.option("--user", default="koto", show_default=True,
              help="The service user: owns the imported files and the device key (when run as root).")
@click.option("--reboot/--no-reboot", default=True, show_default=True,
              help="Reboot when the Pi's boot files were changed for the config's sources (UART, SPI); only for "
                   "this machine's own boot partition (neither --boot nor --image given).")
def firstboot(boot_dir: str | None, image: str | None, offset: int | None, etc_dir: str, user: str,
              reboot: bool) -> None:
    """Import koto.toml (and the key and certificate files it names) from the boot partition into /etc/koto,
    check it, scrub the secrets from the card and provision. A refused config stays on the card with the reasons
    in koto.toml.rejected.txt; exit 1."""
    boot: BootPartition
    if image:
        boot = ImageBoot(Path(image), fat_offset(Path(image)) if offset is None else offset)
    else:
        boot = MountedBoot(Path(boot_dir)) if boot_dir else find_boot()
    owner: Owner | None = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise click.ClickException(f"there is no user {user!r}: run deploy/install.sh first") from None
        owner = Owner(pw.pw_uid, pw.pw_gid)
    result = import_from_boot(boot, etc=Path(etc_dir), owner=owner,
                              provision=_provisioner(owner, user))
    if result.status == "nothing":
        click.echo(f"nothing to import: no koto.toml on {boot.where}")
    elif result.status == "refused":
        for p in result.problems:
            click.echo(p)
        click.echo(f"koto.toml on {boot.where} was not imported ({len(result.problems)} problem(s)); the reasons "
                   f"are beside it in koto.toml.rejected.txt", err=True)
        raise SystemExit(1)
    else:
        click.echo(f"imported {', '.join(result.files)}; gateway {result.gateway_id} provisioned; the card's copies "
                   f"are scrubbed. Register this public key at the billing cloud:", err=True)
        click.echo(result.public_pem or "", nl=False)
        if result.switched_on:
            click.echo(f"switched on in {boot.where} for the config's sources: {'; '.join(result.switched_on)}",
                       err=True)
            if reboot and not image and not boot_dir:  # this machine's own boot partition (never a laptop's card)
                click.echo("rebooting once for the firmware to read them", err=True)
                # The reboot job stops koto-firstboot.service at once, while this process is still its main process:
                # its SIGTERM would fail the unit ('signal') after a good import. Nothing is left to do but exit 0.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                try:
                    done = subprocess.run(["systemctl", "--no-block", "reboot"], check=False).returncode
                except OSError as e:
                    done = e.errno or 1
                if done != 0:
                    click.echo("could not ask systemd to reboot: reboot the Pi for them to take effect", err=True)
            else:
                click.echo("they take effect when the Pi next boots from this card", err=True)
