"""`koto-cloud`: run the reference receiver, register gateways, sign and send commands, verify and summarise.

Every option can also come from the environment as KOTO_CLOUD_<COMMAND>_<OPTION> (click's auto_envvar_prefix),
e.g. KOTO_CLOUD_SERVE_DB. One meaning per option name in every subcommand: `--ca`, `--tls-cert`, `--tls-key` are the
broker connection's TLS files, `--operator-key` is the operator's command-signing key, `--wait` is how long to wait
for the gateway's reply. The old spellings (`--cert`, `--key`, `--cert-key`, a subcommand's `--version`) still
work, hidden, with a warning: `--key` meant the TLS key in `serve` and the signing key elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

from koto.errors import FieldError, KotoError
from koto.loop import install_exception_handler
from koto.net import parse_broker_url
from koto.signing import (
    KeyError_,
    PrivateKey,
    generate_key,
    load_private_key,
    load_public_key,
    public_pem,
    save_private_key,
)

from . import commands as cmds
from .errors import CommandRejected, NotRegistered, NotSent, ReplyTimeout, UnknownGateway
from .store import Store, open_store
from .store_commands import NOT_SENT, SENDING, SENT, UNCONFIRMED, UNKNOWN, CommandRecord

F = TypeVar("F", bound=Callable[..., Any])
DB_HELP = "SQLite file (default) or postgresql:// DSN"
EXIT_APPLIED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # 3 and 4: CommandRejected and ReplyTimeout (cloud/errors.py)
EPILOG = """\b
Exit codes:
  0  done; for a command sent with --wait: the gateway applied it (or had already: duplicate)
  1  failed, said in one line (a file, the broker, the database); a command the broker did not
     take is recorded as not sent (koto-cloud commands): re-run it, it takes the next dseq
  2  usage error (an unknown option, a bad value, a --db with no database, a gateway not registered)
  3  the gateway rejected the command (its reason is printed)
  4  no reply from the gateway within --wait seconds (it may apply the command later: it is queued)
"""
CONTEXT = {"help_option_names": ["-h", "--help"]}
_warned: set[str] = set()


def _renamed(old: str, new: str, dest: str, **kw: Any) -> Callable[[F], F]:
    """A hidden, deprecated spelling of option `new` (parameter `dest`): it still works, and says once to use `new`.

    Click handles the options given on the command line first, so the old spelling's value lands in `dest` before
    the new option's callback (`_keep`) runs and keeps it when the new one was not given.
    """
    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None:
            return
        if old not in _warned:
            _warned.add(old)
            click.echo(f"koto-cloud: {old} is deprecated here; use {new} (same meaning)", err=True)
        if ctx.params.get(dest) is not None:
            raise click.UsageError(f"give {new} or {old}, not both")
        ctx.params[dest] = value

    return click.option(old, f"deprecated_{dest}", hidden=True, expose_value=False, callback=store, **kw)


def _keep(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback of a renamed option: its value, or the deprecated spelling's when only that was given."""
    if value is not None and param.name and ctx.params.get(param.name) is not None:
        raise click.UsageError(f"--{param.name.replace('_', '-')} was given twice (once by its old spelling)")
    return value if value is not None else ctx.params.get(param.name or "")


def _file(**kw: Any) -> click.Path:
    return click.Path(path_type=Path, exists=True, dir_okay=False, **kw)


def _store(db: str, *, create: bool = True) -> Store:
    """The receiver's database. Only `register` and the receivers (`serve`, `serve-amqp`) create a SQLite file; the
    other commands pass `create=False`, so a mistyped `--db` is a usage error (NoDatabase, exit 2), not an empty
    database left behind that then reads as "not registered" or as no usage."""
    return open_store(db, create=create)


def _not_registered(gateway: str, db: str) -> NotRegistered:
    return NotRegistered(gateway, _db_name(db))


def _db_name(db: str) -> str:
    """`--db` as it may be printed: a PostgreSQL DSN's password (in the user part or as `password=`) replaced."""
    if not db.startswith(("postgresql://", "postgres://")):
        return db
    parts = urlsplit(db)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _broker(url: str) -> str:
    """`--broker` checked by koto.net's one rule; a bad one is a plain one-line error naming the option."""
    try:
        parse_broker_url(url, file="command line", key="--broker")
    except FieldError as e:
        raise click.ClickException(f"--broker: {e.problem}") from None
    return url


@click.group(context_settings=CONTEXT, epilog=EPILOG)
@click.version_option(package_name="koto-gateway", prog_name="koto-cloud", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def cli(verbose: bool) -> None:
    """Koto's reference billing receiver and operator tools."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- receiver --------------------------------------------------------------------------------------------------
@cli.command(epilog=EPILOG)
@click.option("--broker", required=True, help="mqtt://host:1883 or mqtts://host:8883")
@click.option("--ca", type=_file(), help="CA that signed the broker's certificate")
@click.option("--tls-cert", type=_file(), callback=_keep, help="the receiver's client certificate (CN koto-receiver)")
@_renamed("--cert", "--tls-cert", "tls_cert", type=_file())
@click.option("--tls-key", type=_file(), callback=_keep, help="the receiver's client certificate's key")
@_renamed("--key", "--tls-key", "tls_key", type=_file())
@click.option("--db", required=True, help=DB_HELP)
@click.option("--prefix", default="koto/v1", show_default=True)
@click.option("--group", default="koto", show_default=True, help="shared-subscription group")
@click.option("--client-id", default=None,
              help="fixed client id = persistent session (default: random, clean); a broker that binds the client "
                   "id to the certificate (deploy/mosquitto) uses the certificate's CN instead")
@click.option("--max-batch", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--linger-ms", default=4.0, show_default=True, type=click.FloatRange(0, 1000))
@click.option("--openmeter", default=None, help="OpenMeter ingest URL (…/api/v1/events) to forward usage to")
@click.option("--openmeter-token", default=None, envvar="KOTO_CLOUD_OPENMETER_TOKEN", help="bearer token")
@click.option("--protocol", type=click.Choice(["311", "5"]), default="311", show_default=True,
              help="MQTT version of the receiver's own connection (gateways use 5 either way)")
def serve(broker: str, ca: Path | None, tls_cert: Path | None, tls_key: Path | None, db: str, prefix: str, group: str,
          client_id: str | None, max_batch: int, linger_ms: float, openmeter: str | None,
          openmeter_token: str | None, protocol: str) -> None:
    """Receive, verify, store and ack usage; store replies; re-send acks on births."""
    from .openmeter import Forwarder
    from .receiver import Receiver, ReceiverConfig

    _broker(broker)
    store = _store(db)
    config = ReceiverConfig(broker=broker, ca=ca, cert=tls_cert, key=tls_key, prefix=prefix, group=group,
                            client_id=client_id, max_batch=max_batch, linger_s=linger_ms / 1000,
                            protocol=int(protocol))
    fwd = Forwarder(openmeter, token=openmeter_token) if openmeter else None

    async def main() -> None:
        install_exception_handler(asyncio.get_running_loop())
        rx = Receiver(store, config, forwarder=fwd)
        task = asyncio.create_task(rx.run())
        try:
            await rx.ready.wait()
            click.echo(f"koto-cloud: ready, receiving on {broker}", err=False)
            sys.stdout.flush()
            await task
        finally:
            logging.getLogger("koto.cloud.receiver").info("stopping: %s", rx.summary())

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


# -- keys and gateways -----------------------------------------------------------------------------------------
@cli.command(epilog=EPILOG)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="overwrite an existing key")
def keygen(out: Path, force: bool) -> None:
    """Make the operator's signing key; prints the public PEM to pin on gateways."""
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists; use --force to replace it (gateways pin the old public key!)")
    key = generate_key()
    save_private_key(key, out)
    pub = public_pem(key)
    out.with_suffix(".pub.pem").write_text(pub)
    click.echo(pub, nl=False)


@cli.command(epilog=EPILOG)
@click.argument("gateway")
@click.option("--pubkey", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="the gateway's public key PEM (printed by `koto provision`)")
@click.option("--db", required=True, help=DB_HELP)
def register(gateway: str, pubkey: Path, db: str) -> None:
    """Register (or re-key) a gateway so its records verify."""
    pem = pubkey.read_text()
    try:
        load_public_key(pem)
    except KeyError_ as e:
        raise click.ClickException(f"{pubkey}: {e}") from e
    with _store(db) as store:
        store.register(gateway, pem)
    click.echo(f"registered {gateway}")


# -- commands --------------------------------------------------------------------------------------------------
def _send_options(*, wait: float | None = None) -> Callable[[F], F]:
    """The options every command sender shares; `wait` is the default of --wait (None: do not wait)."""
    wait_help = ("seconds to wait for the gateway's reply (exit 3 rejected, 4 no reply)" if wait is not None else
                 "wait this many seconds for the gateway's reply (exit 3 rejected, 4 no reply); default: do not "
                 "wait, the broker queues the command for an offline gateway")
    opts = [
        click.option("--operator-key", type=_file(), callback=_keep, help="the operator's signing key (keygen)"),
        _renamed("--key", "--operator-key", "operator_key", type=_file()),
        click.option("--db", required=True, help=DB_HELP + " (tracks dseq and what was sent)"),
        click.option("--broker", required=True, help="mqtt://host:1883 or mqtts://host:8883"),
        click.option("--ca", type=_file(), help="CA that signed the broker's certificate"),
        click.option("--tls-cert", type=_file(), callback=_keep, help="the operator's client certificate"),
        _renamed("--cert", "--tls-cert", "tls_cert", type=_file()),
        click.option("--tls-key", type=_file(), callback=_keep, help="the operator's client certificate's key"),
        _renamed("--cert-key", "--tls-key", "tls_key", type=_file()),
        click.option("--prefix", default="koto/v1", show_default=True),
        click.option("--operator", default="operator", show_default=True, help="name in urn:koto:operator:<name>"),
        click.option("--expires-in", default="1d", show_default=True, help="e.g. 90s, 30m, 12h, 7d"),
        click.option("--wait", type=click.FloatRange(0, min_open=True), default=wait, show_default=wait is not None,
                     help=wait_help),
    ]

    def decorate(f: F) -> F:
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


OPERATOR_KEY_NEEDED = "--operator-key needs the operator's private key, the PEM `koto-cloud keygen --out` wrote"


def _operator_key(path: Path) -> PrivateKey:
    """The operator's signing key. koto.signing words a bad key file for the gateway's device key (restore it, start
    a new epoch); an operator is told what the file is and which one to give instead."""
    try:
        return load_private_key(path)
    except KeyError_ as e:
        problem = {
            "public_key": f"{path} is a public key",
            "empty": f"{path} is empty",
            "unreadable": f"cannot read {path}: {e.detail}",
            "not_pem": f"{path} is not a PEM private key ({e.detail})",
            "not_p256": f"{path} is not an ECDSA P-256 private key",
        }.get(e.kind, f"{path}: {e}")
        raise KeyError_(f"{problem}; {OPERATOR_KEY_NEEDED}", kind=e.kind, path=path, detail=e.detail) from e


def _duration_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{text!r}: use a number with s, m, h or d, e.g. 1d") from None


def _send(gateway: str, type_: str, data: dict[str, Any], o: dict[str, Any], *, again: str = "") -> dict[str, Any]:
    """Sign, record and publish the command; with --wait, wait for the reply and turn it into the exit code."""
    if o["operator_key"] is None:
        raise click.UsageError("missing option --operator-key (the operator's signing key, made by keygen)")
    key = _operator_key(o["operator_key"])  # a bad key file is a KotoError: one plain line from main()
    wait_s = o["wait"]
    # Everything that can be refused here is, before a dseq is taken: the broker URL, its TLS files.
    broker = cmds.BrokerOptions(_broker(o["broker"]), o["ca"], o["tls_cert"], o["tls_key"], o["prefix"])
    ssl_context = cmds.broker_tls(broker)
    with _store(o["db"], create=False) as store:
        if store.pubkey(gateway) is None:  # a mistyped id, or a gateway never registered: nothing to send it
            raise UnknownGateway(gateway, _db_name(o["db"]))
        dseq = store.next_dseq(gateway)
        command = cmds.build_command(key, gateway, type_, data, dseq, operator=o["operator"], now=time.time(),
                                     expires_in_s=_duration_s(o["expires_in"]))
        # Recorded before the publish (state `sending`), so the dseq is never used twice whatever happens next; the
        # record then says what did: `sent` at the broker's PUBACK, else `not_sent` or `unconfirmed` (NotSent).
        store.add_command(gateway, dseq, command)
        click.echo(f"sending {type_} to {gateway}: id {command['id']} dseq {dseq}", err=True)
        try:
            reply = asyncio.run(cmds.send_command(broker, gateway, command, wait_reply_s=wait_s,
                                                  ssl_context=ssl_context,
                                                  on_sent=lambda: store.command_state(gateway, dseq, SENT)))
        except NotSent as e:
            store.command_state(gateway, dseq, UNCONFIRMED if e.unconfirmed else NOT_SENT, e.problem)
            if again:  # (`again`: how to re-run it so that it is the same command, not a second one)
                raise e.with_hint(again) from None
            raise
        except ReplyTimeout as e:
            raise ReplyTimeout(f"{e}; the command stays queued for the gateway") from None
        if reply is not None:
            store.add_reply(gateway, reply)
    if reply is None:
        return {}
    status = reply.get("status")
    if status not in ("applied", "duplicate"):
        click.echo(json.dumps(reply, indent=2, sort_keys=True))
        raise CommandRejected(f"{gateway} {status or 'did not apply'} the command: "
                              f"{reply.get('reason') or 'no reason given'}", reply)
    click.echo(f"{gateway} {status} it", err=True)
    return reply


@cli.command(epilog=EPILOG)
@click.argument("gateway")
@click.option("--file", "file_", required=True, type=_file(), help="tariff as TOML or JSON (metering.tariff form)")
@_send_options()
def tariff(gateway: str, file_: Path, **o: Any) -> None:
    """Send a tariff."""
    _send(gateway, cmds.TARIFF, cmds.tariff_data(cmds.load_document(file_), file=str(file_)), o)


def _when(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a date (2026-12-31) or an RFC 3339 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@cli.command(epilog=EPILOG)
@click.argument("gateway")
@click.option("--appliance", required=True)
@click.option("--function", default="*", show_default=True)
@click.option("--uses", type=click.IntRange(1), help="grant N uses")
@click.option("--kwh", help="grant X kWh (decimal, e.g. 12.5)")
@click.option("--until", help="grant unlimited use until DATE")
@click.option("--valid-from")
@click.option("--valid-until")
@click.option("--id", "ent_id", default=None, help="entitlement id (default: a new one)")
@click.option("--entitlement-version", "version", type=click.IntRange(1), callback=_keep,
              help="the entitlement's version  [default: 1]")
@_renamed("--version", "--entitlement-version", "version", type=click.IntRange(1))
@_send_options()
def grant(gateway: str, appliance: str, function: str, uses: int | None, kwh: str | None, until: str | None,
          valid_from: str | None, valid_until: str | None, ent_id: str | None, version: int | None,
          **o: Any) -> None:
    """Grant the use of a function: --uses N | --kwh X | --until DATE."""
    if sum(x is not None for x in (uses, kwh, until)) != 1:
        raise click.UsageError("give exactly one of --uses, --kwh, --until")
    doc: dict[str, Any] = {"id": ent_id or f"ent-{appliance}-{int(time.time())}", "version": version or 1,
                           "action": "grant", "appliance": appliance, "function": function}
    if uses is not None:
        doc.update(kind="uses", limit=uses)
    elif kwh is not None:
        doc.update(kind="kwh", limit=kwh)
    else:
        doc.update(kind="until")
        valid_until = until
    for k, v in (("valid_from", _when(valid_from)), ("valid_until", _when(valid_until))):
        if v is not None:
            doc[k] = v
    data = cmds.entitlement_data(doc)
    # A grant without --id gets a new id each run: re-run so after one that may have arrived, it would grant twice.
    again = "" if ent_id else f"to send this same grant again, not a second one, re-run it with --id {data['id']}"
    _send(gateway, cmds.ENTITLEMENT, data, o, again=again)
    click.echo(json.dumps(data, sort_keys=True))


@cli.command(epilog=EPILOG)
@click.argument("gateway")
@click.option("--id", "ent_id", required=True, help="the entitlement to withdraw")
@click.option("--entitlement-version", "version", type=click.IntRange(1), callback=_keep,
              help="above the granted version (required)")
@_renamed("--version", "--entitlement-version", "version", type=click.IntRange(1))
@_send_options()
def revoke(gateway: str, ent_id: str, version: int | None, **o: Any) -> None:
    """Withdraw an entitlement (a revoked function stays gated; it does not become free)."""
    if version is None:
        raise click.UsageError("missing option --entitlement-version (above the granted version)")
    data = cmds.entitlement_data({"id": ent_id, "version": version, "action": "revoke"})
    _send(gateway, cmds.ENTITLEMENT, data, o)


@cli.command(epilog=EPILOG)
@click.argument("gateway")
@click.option("--file", "file_", required=True, type=_file(), help="the profile as TOML")
@click.option("--name", required=True, help="the appliance profile name")
@click.option("--profile-version", "version", type=click.IntRange(1), callback=_keep,
              help="the profile's version (required)")
@_renamed("--version", "--profile-version", "version", type=click.IntRange(1))
@_send_options()
def profile(gateway: str, file_: Path, name: str, version: int | None, **o: Any) -> None:
    """Send a new or updated appliance profile (TOML)."""
    if version is None:
        raise click.UsageError("missing option --profile-version")
    _send(gateway, cmds.PROFILE, cmds.profile_data(file_, name, version), o)


@cli.command(epilog=EPILOG)
@click.argument("gateway")
@_send_options(wait=15.0)
def diagnose(gateway: str, **o: Any) -> None:
    """Ask the gateway for a (redacted) status report; waits for the reply and prints it (exit 3 when the gateway
    rejects the request, 4 when it does not answer within --wait seconds)."""
    reply = _send(gateway, cmds.DIAGNOSTICS, {}, o)
    click.echo(json.dumps(reply, indent=2, sort_keys=True))


@cli.command("commands", epilog=EPILOG)
@click.argument("gateway")
@click.option("--db", required=True, help=DB_HELP)
@click.option("--json", "as_json", is_flag=True)
def commands_(gateway: str, db: str, as_json: bool) -> None:
    """List the commands recorded for GATEWAY, by dseq: whether the broker took each (sent, not sent, not
    confirmed) and the gateway's reply when the receiver has stored one."""
    with _store(db, create=False) as store:
        if store.pubkey(gateway) is None:
            raise _not_registered(gateway, db)
        records = store.commands(gateway)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], sort_keys=True))
        return
    if not records:
        click.echo(f"no commands recorded for {gateway} yet")
    for r in records:
        click.echo(f"dseq {r.dseq}  {cmds.short_type(r.type)}  {r.recorded_at or '-'}  {_command_state(r)}  "
                   f"(id {r.id})")


def _command_state(r: CommandRecord) -> str:
    """A recorded command's state in words, with the gateway's reply when there is one."""
    text = {
        SENT: f"sent: the broker took it at {r.sent_at}",
        NOT_SENT: f"not sent: {r.problem}",
        UNCONFIRMED: f"not confirmed: {r.problem}; it may have reached the broker",
        SENDING: "not confirmed: no answer from the broker was recorded (the sender stopped, or is still sending)",
        UNKNOWN: "unknown: recorded before koto-cloud tracked whether the broker took a command",
    }.get(r.state, r.state)
    if r.reply is not None:
        reason = r.reply.get("reason")
        text += f"; the gateway replied {r.reply.get('status')}" + (f" ({reason})" if reason else "")
    return text


# -- audit -----------------------------------------------------------------------------------------------------
@cli.command(epilog=EPILOG)
@click.argument("gateway")
@click.option("--db", required=True, help=DB_HELP)
def verify(gateway: str, db: str) -> None:
    """Re-verify every stored record of GATEWAY offline (signatures, chain links, gaps). Exit 1 on a problem."""
    from .verify import verify_chain

    with _store(db, create=False) as store:
        pem = store.pubkey(gateway)
        if pem is None:
            raise _not_registered(gateway, db)
        n, problems = verify_chain(store.bodies(gateway), load_public_key(pem))
        alarms = store.alarms(gateway)
    for p in problems:
        click.echo(f"epoch {p.epoch} seq {p.seq}: {p.reason}")
    for _, epoch, seq, kind, detail in alarms:
        click.echo(f"alarm epoch {epoch} seq {seq} {kind}: {detail}")
    click.echo(f"{gateway}: {n} records, {len(problems)} problems, {len(alarms)} alarms")
    if problems:
        raise click.exceptions.Exit(1)


@cli.command(epilog=EPILOG)
@click.argument("gateway")
@click.option("--db", required=True, help=DB_HELP)
@click.option("--json", "as_json", is_flag=True)
def usage(gateway: str, db: str, as_json: bool) -> None:
    """Summarise stored usage per subject and function."""
    with _store(db, create=False) as store:
        if store.pubkey(gateway) is None:  # a mistyped id printed nothing and exited 0, as if it had no usage
            raise _not_registered(gateway, db)
        summary = store.usage_summary(gateway)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    if not summary:
        click.echo(f"no usage stored for {gateway} yet")
    for key, s in sorted(summary.items()):
        click.echo(f"{key}: {s['records']} records, {s['uses']} uses, {s['energy_mwh'] / 1e6:.6f} kWh, "
                   f"{s['duration_ms'] / 60000:.1f} min")


from . import cli_amqp  # noqa: E402, F401 - registers `serve-amqp` (the RabbitMQ transport) on the group


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (EPILOG: 0 ok, 1 a failure said in plain words, 2 a usage error,
    3 the gateway rejected the command, 4 it did not reply in time)."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="koto-cloud",
                      standalone_mode=False, auto_envvar_prefix="KOTO_CLOUD")
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        return 1
    except KotoError as e:
        click.echo(f"koto-cloud: {e}", err=True)
        return int(getattr(e, "exit_code", EXIT_FAILED))
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
