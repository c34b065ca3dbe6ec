"""Build, sign and send downlink commands (tariff, entitlement, profile, diagnostics) to one gateway.

A command is a CloudEvent signed with the operator's key by the same canonical/sig rule as records. `subject`
names the target gateway (so a command cannot be replayed to another one), `dseq` is one above the highest the
store has sent or the gateway reported in its birth, and `expirytime` bounds how long a queued command stays valid
(a gateway that comes back after a month must not apply a month-old price). The data bodies are validated with the
gateway's own parsers (metering.tariff / metering.entitlement / metering.profile), so a command the gateway would
reject is refused here, before it is sent.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from koto.canonical import CanonicalError, canonical_bytes, rfc3339
from koto.net import parse_broker_url, tls_context
from koto.signing import PrivateKey, sign_event

from . import intake
from .errors import CommandError, ConfigError, NotSent, Rejected, ReplyTimeout
from .mqtt import BrokerError, Connection, PublishRefused

TARIFF = "io.koto.cmd.tariff.v1"
ENTITLEMENT = "io.koto.cmd.entitlement.v1"
PROFILE = "io.koto.cmd.profile.v1"
DIAGNOSTICS = "io.koto.cmd.diagnostics.v1"
COMMAND_TYPES = (TARIFF, ENTITLEMENT, PROFILE, DIAGNOSTICS)
MAX_COMMAND_BYTES = 64 * 1024
DEFAULT_EXPIRES_S = 86_400


def build_command(key: PrivateKey, gateway: str, type_: str, data: dict[str, Any], dseq: int, *,
                  operator: str = "operator", now: float, expires_in_s: float = DEFAULT_EXPIRES_S,
                  id_: str | None = None) -> dict[str, Any]:
    """The signed command event. Raises CommandError when it has no canonical form or is above 64 KiB."""
    if type_ not in COMMAND_TYPES:
        raise CommandError(f"command type {type_!r} is not one of {', '.join(COMMAND_TYPES)}")
    if dseq < 1:
        raise CommandError(f"dseq {dseq} must be >= 1")
    event = {
        "specversion": "1.0", "id": id_ or str(uuid.uuid4()), "source": f"urn:koto:operator:{operator}",
        "type": type_, "subject": f"urn:koto:gw:{gateway}", "time": rfc3339(now),
        "datacontenttype": "application/json", "dseq": str(dseq), "expirytime": rfc3339(now + expires_in_s),
        "data": data,
    }
    try:
        signed = sign_event(key, event)
        size = len(canonical_bytes(signed))
    except CanonicalError as e:
        raise CommandError(f"the command data has no canonical form: {e}") from e
    if size > MAX_COMMAND_BYTES:
        raise CommandError(f"the command is {size} bytes; the limit is {MAX_COMMAND_BYTES}")
    return signed


def load_document(path: Path) -> dict[str, Any]:
    """A tariff or entitlement document from TOML (by suffix) or JSON."""
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as e:
        raise CommandError(f"{path}: cannot read it as {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from e
    if not isinstance(doc, dict):
        raise CommandError(f"{path}: the document must be an object/table")
    return doc


def tariff_data(doc: dict[str, Any], *, file: str = "tariff") -> dict[str, Any]:
    """Validated tariff command data (metering.tariff.Tariff's dict form)."""
    from metering.errors import TariffError
    from metering.tariff import Tariff

    try:
        return Tariff.from_dict(doc, file=file).to_dict()
    except TariffError as e:
        raise CommandError(str(e)) from e


def entitlement_data(doc: dict[str, Any], *, file: str = "entitlement") -> dict[str, Any]:
    """Validated entitlement command data (metering.entitlement.Entitlement's dict form, with `action`)."""
    from metering.entitlement import Entitlement
    from metering.errors import EntitlementError

    try:
        return Entitlement.from_dict(doc, file=file).to_dict()
    except EntitlementError as e:
        raise CommandError(str(e)) from e


def profile_data(path: Path, name: str, version: int) -> dict[str, Any]:
    """{"name", "version", "toml"}: the profile's TOML text travels as written (comments and all)."""
    try:
        text = path.read_text(encoding="utf-8")
        tomllib.loads(text)
    except (OSError, ValueError) as e:
        raise CommandError(f"{path}: not a readable TOML profile ({e})") from e
    try:
        from metering.errors import ProfileError
        from metering.profile import parse_profile

        parse_profile(tomllib.loads(text), file=str(path))
    except ProfileError as e:
        raise CommandError(str(e)) from e
    if version < 1:
        raise CommandError(f"--version {version} must be >= 1")
    return {"name": name, "version": version, "toml": text}


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    url: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    prefix: str = "koto/v1"


def broker_tls(broker: BrokerOptions) -> ssl.SSLContext | None:
    """The TLS context of an `mqtts://` broker (None for `mqtt://`), from --ca/--tls-cert/--tls-key: a file that
    cannot be used is a ConfigError, said before a dseq is taken or anything recorded."""
    url = parse_broker_url(broker.url, file="command line", key="--broker")
    if not url.tls:
        return None
    try:
        return tls_context(broker.ca, broker.cert, broker.key)
    except (OSError, ssl.SSLError) as e:
        files = ", ".join(f"{opt} {path}" for opt, path in (("--ca", broker.ca), ("--tls-cert", broker.cert),
                                                             ("--tls-key", broker.key)) if path is not None)
        raise ConfigError(f"cannot use the broker's TLS files ({files or 'the system CAs'}): {e}") from e


def short_type(type_: str) -> str:
    """`io.koto.cmd.tariff.v1` -> `tariff`, as operators name commands."""
    parts = type_.split(".")
    return parts[3] if len(parts) == 5 else type_


async def send_command(broker: BrokerOptions, gateway: str, command: dict[str, Any], *,
                       wait_reply_s: float | None = None, ssl_context: ssl.SSLContext | None = None,
                       on_sent: Callable[[], None] | None = None) -> dict[str, Any] | None:
    """Publish the command (QoS 1) on the gateway's down/cmd; optionally wait for its reply on up/reply.

    The gateway's persistent session means the broker queues the command while the gateway is offline; waiting
    for a reply only makes sense when it is online (`koto-cloud diagnose`). `on_sent` is called as soon as the
    broker has acknowledged the publish (its PUBACK), before any wait for the reply.

    Raises NotSent when the broker did not take the command: it could not be reached or refused the publish, or the
    publish went out and no PUBACK came (`unconfirmed`). A connection lost while waiting for the reply, after the
    PUBACK, is a BrokerError: the command was sent.
    """
    url = parse_broker_url(broker.url, file="command line", key="--broker")
    if url.tls and ssl_context is None:
        ssl_context = broker_tls(broker)
    payload = canonical_bytes(command)
    stage = "connect"  # -> "publish" once the PUBLISH may have left -> "sent" once the broker acknowledged it
    try:
        async with Connection(url, client_id=f"koto-cloud-{uuid.uuid4().hex[:12]}", ssl_context=ssl_context) as conn:
            if wait_reply_s is not None:
                await conn.subscribe(f"{broker.prefix}/{gateway}/up/reply", qos=1)
            conn.check()
            stage = "publish"
            await conn.deliver(f"{broker.prefix}/{gateway}/down/cmd", payload, qos=1)
            stage = "sent"
            if on_sent is not None:
                on_sent()
            if wait_reply_s is None:
                return None
            try:
                async with asyncio.timeout(wait_reply_s):
                    while True:
                        for message in await conn.receive():
                            try:  # the same checks as the receiver's: a gateway's reply is untrusted input
                                reply = intake.reply(gateway, message.payload)
                            except Rejected:
                                continue
                            if reply.ack_of == command["id"]:
                                return reply.body
            except TimeoutError:
                raise ReplyTimeout(f"no reply from {gateway} within {wait_reply_s:g} s (is it online?)") from None
    except BrokerError as e:
        if stage == "sent":
            raise
        refused = isinstance(e, PublishRefused)
        raise NotSent(gateway, int(command["dseq"]), short_type(str(command["type"])), str(e), refused=refused,
                      unconfirmed=stage == "publish" and not refused) from e
