"""`koto provision`: the device key, a certificate request for the operator's CA, the operator's key pinned, and
the first koto.toml, from flags (scripts, first boot) or from questions (an installer at a terminal).

    koto provision --config /etc/koto/koto.toml                       # config exists: key, request, fingerprints
    koto provision --config /etc/koto/koto.toml --id gw-0042 --timezone Europe/Berlin \\
        --broker mqtts://broker.example.net:8883 --ca ca.pem --operator-key operator.pub.pem
    koto provision                                                    # on a terminal, no config yet: asks

stdout is the device's public key (PEM), as before, so `koto provision > gw.pub.pem` still works; everything said
to the installer goes to stderr. A new config is only written where none exists: a config with appliances in it is
never overwritten by a re-run. Details: docs/provisioning.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from koto.errors import FieldError
from koto.net import parse_broker_url
from koto.signing import KeyError_

from .cli_common import DEFAULT_CONFIG, config_option, resolve, state_option
from .config import ID_RE
from .errors import StateError
from .provision_config import NewConfig, render, validate, write_config
from .provision_keys import csr_path, fingerprint, hand_over, pin_operator_key, read_public_key, write_csr
from .state import StateDir

DEFAULT_STATE = "/var/lib/koto"


@click.command()
@config_option
@state_option
@click.option("--force", is_flag=True, help="Make a new device key even though one exists.")
@click.option("--new-epoch", is_flag=True,
              help="With --force while a ledger exists: archive it as ledger-EPOCH.db and start a new epoch.")
@click.option("--id", "gateway_id", default=None,
              help="Write a new config with this gateway id (also the certificate CN); needs --config FILE to be new.")
@click.option("--timezone", default=None, help="For a new config: IANA time zone (default: this machine's, or UTC).")
@click.option("--broker", default=None, help="For a new config: mqtts://host:port of the billing cloud's broker.")
@click.option("--ca", type=click.Path(dir_okay=False, exists=True), default=None,
              help="For a new config: the CA file that signed the broker's certificate (copied beside the config).")
@click.option("--operator-key", type=click.Path(dir_okay=False), default=None,
              help="Pin the operator's command-signing public key (PEM) beside the config.")
@click.option("--replace-operator-key", is_flag=True, help="Let --operator-key replace a different pinned key.")
@click.option("--no-input", is_flag=True, help="Never ask questions, even on a terminal.")
@click.option("--set-pin", is_flag=True,
              help="Set the installer PIN (4-12 digits) that unlocks changes on the status page; asked twice at a "
                   "terminal, else read from stdin: the PIN on two lines (a bad or differing one is an error, exit "
                   "2). Only a salted hash is stored.")
def provision(config_path: str | None, state_dir: str | None, force: bool, new_epoch: bool, gateway_id: str | None,
              timezone: str | None, broker: str | None, ca: str | None, operator_key: str | None,
              replace_operator_key: bool, no_input: bool, set_pin: bool) -> None:
    """Make the device key and a certificate request (CN = gateway id), pin the operator's key, write koto.toml."""
    # A script's PIN (stdin not a terminal) is read and checked first, so a bad one changes nothing.
    piped_pin = _pin_from_stdin() if set_pin and not sys.stdin.isatty() else None
    target = Path(config_path or DEFAULT_CONFIG)
    flags = {"--id": gateway_id, "--timezone": timezone, "--broker": broker, "--ca": ca}
    writing = any(v is not None for v in flags.values())
    if not writing and not target.exists() and state_dir is None and not no_input and _terminal():
        gateway_id, timezone, state_dir, broker, ca, operator_key = _ask(target, operator_key)
        writing = True
    if writing:
        given = ", ".join(k for k, v in flags.items() if v is not None)
        if target.exists():
            raise StateError(str(target), f"exists; {given} only apply to a new config: edit this one (then "
                             "`koto check`), or move it away first")
        if gateway_id is None:
            raise click.UsageError(f"{given} write a new config, which needs --id (the gateway id, also the CN of "
                                   "its certificate)")
        _write_new(target, gateway_id, timezone, state_dir, broker, ca, operator_key, replace_operator_key)
        config_path = str(target)
    cfg, sd, gid = resolve(config_path, state_dir)
    if operator_key is not None and not writing:
        if cfg is None:
            raise click.UsageError("--operator-key pins the key beside the config: pass --config FILE (an existing "
                                   "config, or a new one with --id)")
        _pin_for_existing(cfg, target, Path(operator_key), replace_operator_key)
    elif cfg is not None and not writing:
        _say_pinned_again(cfg, target)
    pem = _provision_state(sd, gid, force=force, new_epoch=new_epoch)
    if set_pin:
        _set_pin(sd, piped_pin)
    # The service reads its key and its 0600 config as the state folder's owner; the CA and the pinned operator
    # key stay root's (0644, readable): the service's user must not be able to change whom it trusts.
    hand_over([*_root_owned(sd.root), *([target] if writing else [])], owner_of=sd.root)
    if writing:
        click.echo(f"next: `koto discover` for the meters, paste its blocks into {target}, then "
                   f"`koto check --config {target}`", err=True)
    click.echo("register this public key at the billing cloud:", err=True)
    click.echo(pem, nl=False)


def _set_pin(sd: StateDir, pin: str | None) -> None:
    """Store the installer PIN: `pin` as read from a script's stdin, or else asked twice at the terminal."""
    from .web.pin import PinError, check_pin_text, save_pin

    def checked(text: str) -> str:
        try:
            return check_pin_text(text.strip())
        except PinError as e:
            raise click.BadParameter(str(e)) from None

    if pin is None:
        pin = click.prompt("Installer PIN for the status page (4-12 digits)", hide_input=True,
                           confirmation_prompt=True, err=True, value_proc=checked)
    path = save_pin(sd.root, pin)
    click.echo(f"installer PIN set ({path}, a salted scrypt hash, mode 0600)", err=True)


def _pin_from_stdin() -> str:
    """The PIN from stdin that is not a terminal, read as plain lines: getpass would warn that it cannot hide it
    (there is nothing to hide) and click's prompt would ask again after a bad one until stdin ends."""
    from .web.pin import pin_from_lines

    return pin_from_lines(sys.stdin)


def _terminal() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def _write_new(target: Path, gateway_id: str, timezone: str | None, state_dir: str | None, broker: str | None,
               ca: str | None, operator_key: str | None, replace: bool) -> None:
    """Validate the whole new config first, then copy the CA, pin the operator key and write the file."""
    folder = target.absolute().parent
    sd = StateDir(Path(state_dir or DEFAULT_STATE).absolute())
    tls = broker is not None and broker.startswith("mqtts://")
    ca_dest = None if ca is None else folder / "ca.pem"
    op_dest = None if operator_key is None else folder / "operator.pub.pem"
    new = NewConfig(gateway_id=gateway_id, state_dir=sd.root, timezone=timezone or _local_timezone(), broker=broker,
                    ca=ca_dest, cert=folder / f"{gateway_id}.crt" if tls else None,
                    key=sd.private_key_path if tls else None, operator_key=op_dest)
    text = render(new)
    validate(text, target)  # one line naming the key, before any file is touched
    if operator_key is not None:
        read_public_key(Path(operator_key))  # a wrong file is refused before the CA is copied
    folder.mkdir(parents=True, exist_ok=True)
    if ca is not None and ca_dest is not None:
        _copy_ca(Path(ca), ca_dest)
    if operator_key is not None and op_dest is not None:
        _say_pinned(Path(operator_key), op_dest, replace)
    write_config(target, text)
    click.echo(f"wrote {target} (mode 0600) for gateway {gateway_id}", err=True)
    if tls:
        click.echo(f"the broker needs this gateway's client certificate at {new.cert}", err=True)


def _copy_ca(source: Path, dest: Path) -> None:
    from cryptography import x509

    from koto.files import write_atomic

    data = source.read_bytes()
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise click.BadParameter(f"{source}: not a PEM certificate ({e})", param_hint="--ca") from None
    if source.resolve() != dest.resolve():
        write_atomic(dest, data, mode=0o644)


def _say_pinned(source: Path, dest: Path, replace: bool) -> None:
    pinned = pin_operator_key(source, dest, replace=replace)
    said = "pinned" if pinned.changed else "already pinned"
    click.echo(f"operator key {said} at {pinned.path}, fingerprint {pinned.fingerprint}; compare it with the "
               "operator's", err=True)


def _pin_for_existing(cfg: object, target: Path, source: Path, replace: bool) -> None:
    """Pin where the config already looks ([cloud] operator_keys' first file), else beside the config and say so."""
    cloud = getattr(cfg, "cloud", None)
    keys = cloud.operator_keys if cloud is not None else ()
    dest = keys[0] if keys else target.absolute().parent / "operator.pub.pem"
    _say_pinned(source, dest, replace)
    if not keys:
        click.echo(f"{target}: add operator_keys = [\"{dest}\"] under [cloud] so the gateway trusts it", err=True)


def _say_pinned_again(cfg: object, target: Path) -> None:
    """A re-run prints the operator key's fingerprint again, beside the device key's: the installer reads both."""
    cloud = getattr(cfg, "cloud", None)
    keys = cloud.operator_keys if cloud is not None else ()
    beside = target.absolute().parent / "operator.pub.pem"  # a config without [cloud] names it in a comment
    for path in keys or ((beside,) if beside.is_file() else ()):
        try:
            key = read_public_key(path)
        except KeyError_ as e:  # not provision's to refuse: the device key is made; koto check and run say it too
            click.echo(f"{e} (the gateway will not start until it is there: koto provision --operator-key FILE)",
                       err=True)
            continue
        click.echo(f"operator key pinned at {path}, fingerprint {fingerprint(key)}; compare it with the operator's",
                   err=True)


def _provision_state(sd: StateDir, gid: str | None, *, force: bool, new_epoch: bool) -> str:
    """Make or keep the device key, say where everything is; return the public key's PEM."""
    done = sd.provision(force=force, new_epoch=new_epoch)
    old = done.archived
    if old is not None:
        click.echo(f"archived epoch {old.epoch} (seq 1..{old.head_seq}) as {old.path}; its public key is "
                   f"{sd.keys / f'device-{old.epoch}.pub.pem'}", err=True)
        if old.unacked:
            click.echo(f"warning: {old.unacked} record(s) of epoch {old.epoch} were never acknowledged by the cloud; "
                       f"they stay in {old.path}", err=True)
    key = sd.private_key()
    click.echo(f"{'created' if done.created else 'kept existing'} device key {sd.private_key_path} (mode 0600)",
               err=True)
    click.echo(f"public key {sd.public_key_path}, fingerprint {fingerprint(key.public_key())}", err=True)
    if gid is None:
        click.echo("no gateway id (no --config): no certificate request written", err=True)
    else:
        req = write_csr(key, gid, csr_path(sd.keys))
        click.echo(f"certificate request {req.path} (CN={gid}, {'new' if req.created else 'unchanged'}): have the "
                   "operator's CA sign it", err=True)
    return done.public_pem


def _root_owned(root: Path) -> list[Path]:
    """What root just made in the state folder (keys, a new epoch's ledger): `hand_over` gives it to the owner."""
    if os.geteuid() != 0 or not root.exists():
        return []
    out = [root / name for name in os.listdir(root)]
    keys = root / "keys"
    if keys.is_dir():
        out += [keys / name for name in os.listdir(keys)]
    return [p for p in out if p.lstat().st_uid == 0]


def _local_timezone() -> str:
    """This machine's IANA zone (/etc/timezone, or where /etc/localtime points), else UTC."""
    try:
        name = Path("/etc/timezone").read_text().strip()
        if name:
            return name
    except OSError:
        pass
    link = os.path.realpath("/etc/localtime")
    return link.split("/zoneinfo/", 1)[1] if "/zoneinfo/" in link else "UTC"


def _check_id(text: str) -> str:
    if not ID_RE.match(text):
        raise click.BadParameter(f"{text!r}: use 1-64 letters, digits, '_', '.', '-'")
    return text


def _check_timezone(text: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone {text!r}; use an IANA name such as Europe/Berlin") from None
    return text


def _check_broker(text: str) -> str:
    if text:
        try:
            parse_broker_url(text)
        except FieldError as e:
            raise click.BadParameter(e.problem) from None
    return text


def _check_file(text: str) -> str:
    if text and not Path(text).is_file():
        raise click.BadParameter(f"{text}: no such file")
    return text


def _ask(target: Path, operator_key: str | None) -> tuple[str, str, str, str | None, str | None, str | None]:
    """The questions an installer answers at a terminal; each answer is checked as it is given."""
    click.echo(f"No config at {target} yet: a few questions to write one (Ctrl-C stops; nothing is written "
               "before the last answer).", err=True)
    host = os.uname().nodename
    gid = click.prompt("Gateway id (letters, digits, _ . -; the CN of its certificate)", err=True,
                       default=host if ID_RE.match(host) else None, value_proc=_check_id)
    tz = click.prompt("Time zone", default=_local_timezone(), err=True, value_proc=_check_timezone)
    state = click.prompt("State folder (ledger and keys)", default=DEFAULT_STATE, err=True)
    broker = click.prompt("Broker URL, mqtts://host:8883 (empty: meter locally only)", default="", err=True,
                          show_default=False, value_proc=_check_broker)
    ca = None
    if broker:
        ca = click.prompt("CA file that signed the broker's certificate (empty: the system's CAs)", default="",
                          err=True, show_default=False, value_proc=_check_file) or None
    op = operator_key or click.prompt("Operator's command-signing public key file (empty: accept no commands)",
                                      default="", err=True, show_default=False, value_proc=_check_file) or None
    return gid, tz, state, broker or None, ca, op
