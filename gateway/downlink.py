"""Downlink: verify a signed command from the billing cloud, apply it atomically, and say what happened.

Every command gets exactly one reply (`applied`, `duplicate` or `rejected`, with a reason in plain words) and, when
rejected, one plain log line; nothing is applied unless every rule holds. The rules, in the order they are checked:

1. size (<= 64 KiB) and shape (a JSON object with the contract's fields and types) — else `rejected`;
2. signature by one of the pinned operator keys (two during a key rotation) — else `rejected`;
3. subject is this gateway (`urn:koto:gw:{id}`), so a command cannot be replayed to another gateway;
4. `dseq` strictly above the last applied — else `duplicate` when the id is one we applied, `rejected` otherwise;
5. not expired (`expirytime` after now);
6. a known type whose data parses, with a version above the current one for that tariff/entitlement/profile.

An applied command is committed in ONE ledger transaction: the lifecycle record (the audit trail the cloud receives),
the stored document (tariff, entitlement or profile) and the new `last_dseq`. Only after the commit does the
in-memory pricing (or the meter, for a profile) change, so a crash in between re-applies from the ledger at start.
The signature is checked before anything else in the command is believed.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Callable, Collection
from typing import Any, Protocol

from drivers.base import RateLimitedLog
from koto.canonical import RFC3339, parse_rfc3339, rfc3339
from koto.clock import Clock
from koto.errors import KotoError
from koto.signing import PublicKey, verify_event
from metering.records import LIFECYCLE_TYPE, Draft, TimeStatus

log = logging.getLogger("koto.downlink")

MAX_COMMAND_BYTES = 64 * 1024
CMD_TARIFF = "io.koto.cmd.tariff.v1"
CMD_ENTITLEMENT = "io.koto.cmd.entitlement.v1"
CMD_PROFILE = "io.koto.cmd.profile.v1"
CMD_DIAGNOSTICS = "io.koto.cmd.diagnostics.v1"
COMMAND_TYPES = (CMD_TARIFF, CMD_ENTITLEMENT, CMD_PROFILE, CMD_DIAGNOSTICS)

# Ledger doc kinds and kv keys this module owns (the daemon restores pricing and profiles from the docs at start).
DOC_TARIFF = "tariff"
DOC_ENTITLEMENT = "entitlement"
DOC_PROFILE = "profile"
KV_LAST_DSEQ = "downlink.last_dseq"
KV_APPLIED_IDS = "downlink.applied_ids"
RECENT_IDS = 256

# The envelope as common.json's `commandEnvelope` has it: a command outside it is refused before its signature is
# looked at, so that nothing the gateway echoes (ack_of, dseq) or keeps (last_dseq, in every birth) can fall outside
# reply.json and birth.json.
_DSEQ = re.compile(r"0|[1-9][0-9]{0,15}")  # decimal, 0 .. 10**16-1: below 2**63, the cloud's BIGINT
_SOURCE = re.compile(r"urn:koto:operator:.+", re.DOTALL)
MAX_ID_CHARS = 128
_STR_FIELDS = ("specversion", "id", "source", "type", "subject", "dseq", "expirytime", "sig")
_OPTIONAL_STR_FIELDS = ("time", "datacontenttype")  # optional CloudEvents attributes: strings when present
_ENVELOPE = frozenset((*_STR_FIELDS, *_OPTIONAL_STR_FIELDS, "data"))


class DownlinkLedger(Protocol):
    """What the handler needs of metering.ledger.Ledger."""

    epoch: int
    gateway_subject: str

    def append(self, drafts: Any, *, checkpoints: Any = None, docs: Any = None, kv: Any = None) -> list[Any]: ...

    def kv_get(self, key: str, default: str | None = None) -> str | None: ...

    def doc(self, kind: str, id: str) -> Any: ...

    def docs(self, kind: str) -> list[Any]: ...

    def head(self) -> tuple[int, str]: ...

    def acked_through(self) -> int: ...

    def unacked_count(self) -> int: ...


class Rejected(KotoError):
    """A command that breaks a rule; `status` is `rejected` or `duplicate`, `reason` plain words for the reply."""

    def __init__(self, reason: str, status: str = "rejected") -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


class DownlinkHandler:
    """Verifies and applies downlink commands. `handle(payload)` returns the reply to publish on up/reply.

    `pricing` needs `apply_tariff(Tariff)` and `apply_entitlement(Entitlement)` (results with `.status`);
    `on_profile(name, version, toml_text)` is called after a profile is committed, to hand it to the meter.
    """

    def __init__(self, ledger: DownlinkLedger, pricing: Any, operator_keys: list[PublicKey], gateway_id: str,
                 clock: Clock, on_profile: Callable[[str, int, str], None] | None = None, *,
                 max_bytes: int = MAX_COMMAND_BYTES, appliances: Callable[[], Collection[str]] | None = None) -> None:
        if not operator_keys or len(operator_keys) > 2:
            raise ValueError("pin one or two operator public keys (current, and next during a rotation)")
        self.ledger = ledger
        self.pricing = pricing
        self.operator_keys = list(operator_keys)
        self.gateway_id = gateway_id
        self.subject = f"urn:koto:gw:{gateway_id}"
        self.clock = clock
        self.on_profile = on_profile
        self.max_bytes = max_bytes
        self.appliances = appliances  # the gateway's appliance ids now: a grant for another one is applied, and said
        self.counts: dict[str, int] = {"applied": 0, "duplicate": 0, "rejected": 0}
        self._sections: dict[str, Callable[[], dict[str, Any]]] = {}
        # At most one line a minute per outcome (rejected, duplicate): a flood of bad commands is counted (`counts`)
        # and each still gets its reply with the reason, but the journal is not filled with it.
        self._rl = RateLimitedLog(log)

    # -- state --------------------------------------------------------------------------------------------------

    def last_dseq(self) -> int:
        text = self.ledger.kv_get(KV_LAST_DSEQ)
        return int(text) if text else -1

    def last_dseq_text(self) -> str:
        return self.ledger.kv_get(KV_LAST_DSEQ) or ""

    def applied_ids(self) -> list[str]:
        text = self.ledger.kv_get(KV_APPLIED_IDS)
        ids = json.loads(text) if text else []
        return [str(i) for i in ids]

    def tariff_version(self) -> int:
        """The highest tariff version applied (the birth's `tariff_version`; 0 before any tariff)."""
        return max((int(d.version) for d in self.ledger.docs(DOC_TARIFF)), default=0)

    def add_report_section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Add a part to the diagnostics report (e.g. Sync's health). `fn` must return counts, never secrets."""
        self._sections[name] = fn

    # -- the one entry point ------------------------------------------------------------------------------------

    def handle(self, payload: bytes) -> dict[str, Any]:
        """Check and apply one command; always returns the reply (never raises for bad input)."""
        cmd_id, dseq = "", ""
        extra: dict[str, Any] = {}
        try:
            event = self._parse(payload)
            cmd_id, dseq = event["id"], event["dseq"]
            status, reason, extra = self._check_and_apply(event)
        except Rejected as r:
            status, reason = r.status, r.reason
            self._rl.warning(status, "downlink command %s %s: %s", cmd_id or "(unparseable)", status, reason)
        except Exception as e:  # e.g. the ledger could not commit: nothing was applied, say so and carry on
            status, reason = "rejected", f"could not apply the command now ({type(e).__name__}: {e})"
            log.error("downlink command %s not applied: %s", cmd_id, reason)
        self.counts[status] = self.counts.get(status, 0) + 1
        if status == "applied":  # a price or a grant changed: the journal says so, as the ledger's lifecycle does
            log.info("cloud command %s (dseq %s) applied: %s", cmd_id, dseq, reason)
        reply = {"ack_of": cmd_id, "status": status, "reason": reason, "dseq": dseq, "gateway": self.gateway_id,
                 "time": rfc3339(self.clock.now().wall)}
        reply.update(extra)
        return reply

    # -- rules ----------------------------------------------------------------------------------------------------

    def _parse(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.max_bytes:
            raise Rejected(f"payload is {len(payload)} bytes; the limit is {self.max_bytes}")
        try:
            event = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise Rejected(f"malformed JSON ({e})") from None
        except RecursionError:  # '{"data":[[[[...' nested deeper than json allows (found by fuzzing)
            raise Rejected("malformed JSON (nested too deeply)") from None
        if not isinstance(event, dict):
            raise Rejected("malformed command: not a JSON object")
        for key in _STR_FIELDS:
            if not isinstance(event.get(key), str):
                raise Rejected(f"malformed command: {key} must be a string")
        for key in _OPTIONAL_STR_FIELDS:
            if key in event and not isinstance(event[key], str):
                raise Rejected(f"malformed command: {key} must be a string")
        if not isinstance(event.get("data"), dict):
            raise Rejected("malformed command: data must be an object")
        extra = sorted(k for k in event if k not in _ENVELOPE)
        if extra:
            raise Rejected(f"malformed command: unknown attribute {_shown(extra[0])}; the contract's are "
                           f"{', '.join(sorted(_ENVELOPE))}")
        if event["specversion"] != "1.0":
            raise Rejected(f"specversion {_shown(event['specversion'])} is not supported (1.0)")
        if not 1 <= len(event["id"]) <= MAX_ID_CHARS:
            raise Rejected(f"malformed command: id has {len(event['id'])} characters; 1 to {MAX_ID_CHARS} allowed")
        if not _SOURCE.fullmatch(event["source"]):
            raise Rejected(f"malformed command: source {_shown(event['source'])} is not urn:koto:operator:...")
        if not _DSEQ.fullmatch(event["dseq"]):
            raise Rejected(f"malformed command: dseq {_shown(event['dseq'])} is not a decimal of 1 to 16 digits")
        if event.get("datacontenttype", "application/json") != "application/json":
            raise Rejected(f"malformed command: datacontenttype {_shown(event['datacontenttype'])} is not "
                           "application/json")
        for key in ("expirytime", "time"):
            if key in event and not _is_time(event[key]):
                raise Rejected(f"malformed command: {key} {_shown(event[key])} is not an RFC 3339 time")
        return event

    def _check_and_apply(self, event: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        if not verify_event(self.operator_keys, event):
            raise Rejected("bad signature: not signed by a pinned operator key")
        if event["subject"] != self.subject:
            raise Rejected(f"wrong subject {event['subject']!r}; this gateway is {self.subject}")
        dseq, last = int(event["dseq"]), self.last_dseq()
        if dseq <= last:
            if event["id"] in self.applied_ids():
                raise Rejected(f"command {event['id']} was already applied (dseq {dseq})", status="duplicate")
            raise Rejected(f"dseq {dseq} is not above the last applied {last} (replayed or stale)")
        now = self.clock.now()
        expiry = parse_rfc3339(event["expirytime"])
        if expiry <= now.wall:
            raise Rejected(f"expired at {event['expirytime']}")
        typ, data = event["type"], event["data"]
        if typ == CMD_TARIFF:
            return self._tariff(event, data)
        if typ == CMD_ENTITLEMENT:
            return self._entitlement(event, data)
        if typ == CMD_PROFILE:
            return self._profile(event, data)
        if typ == CMD_DIAGNOSTICS:
            if data:
                raise Rejected(f"a diagnostics command carries no data; this one has {_shown(sorted(data)[0])}")
            self._commit(event, version=0, docs=[])
            return "applied", "diagnostics report attached", {"report": self.report()}
        raise Rejected(f"unknown command type {typ!r}; known: {', '.join(COMMAND_TYPES)}")

    def _tariff(self, event: dict[str, Any], data: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        from metering.errors import TariffError
        from metering.ledger import Doc
        from metering.tariff import Tariff

        try:
            tariff = Tariff.from_dict(data, file="tariff command")
        except (TariffError, ValueError) as e:
            raise Rejected(f"bad tariff: {e}") from None
        self._check_version(DOC_TARIFF, tariff.id, tariff.version, "tariff")
        self._commit(event, version=tariff.version, docs=[Doc(DOC_TARIFF, tariff.id, tariff.version, tariff.to_dict())])
        result = self.pricing.apply_tariff(tariff)
        self._after_apply(result, f"tariff {tariff.id}")
        return "applied", f"tariff {tariff.id} version {tariff.version} applied", {}

    def _entitlement(self, event: dict[str, Any], data: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        from metering.entitlement import Entitlement
        from metering.errors import EntitlementError
        from metering.ledger import Doc

        try:
            ent = Entitlement.from_dict(data, file="entitlement command")
        except (EntitlementError, ValueError) as e:
            raise Rejected(f"bad entitlement: {e}") from None
        current = self._check_version(DOC_ENTITLEMENT, ent.id, ent.version, "entitlement")
        body = ent.to_dict()
        if ent.revoked and not ent.appliance and current is not None:
            body = {**current.body, "version": ent.version, "action": "revoke"}  # a revoke keeps what it revokes
        self._commit(event, version=ent.version, docs=[Doc(DOC_ENTITLEMENT, ent.id, ent.version, body)])
        result = self.pricing.apply_entitlement(ent)
        self._after_apply(result, f"entitlement {ent.id}")
        verb = "revoked" if ent.revoked else "granted"
        reason = f"entitlement {ent.id} version {ent.version} {verb}"
        known = sorted(self.appliances()) if self.appliances is not None else None
        if known is not None and not ent.revoked and ent.appliance not in known:
            reason += (f"; this gateway has no appliance {ent.appliance!r} (it has {', '.join(known) or 'none'}): "
                       "the grant is kept for one of that name")
            log.warning("entitlement %s grants %s, which this gateway does not have (it has %s)", ent.id,
                        ent.appliance, ", ".join(known) or "none")
        return "applied", reason, {}

    def _profile(self, event: dict[str, Any], data: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        from metering.errors import ProfileError
        from metering.ledger import Doc
        from metering.profile import parse_profile

        name, version, text = data.get("name"), data.get("version"), data.get("toml")
        if not isinstance(name, str) or not name or "/" in name:
            raise Rejected("bad profile: name must be a non-empty string without '/'")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise Rejected("bad profile: version must be an integer >= 1")
        if not isinstance(text, str):
            raise Rejected("bad profile: toml must be a string")
        try:
            parse_profile(tomllib.loads(text), file=f"profile command {name}")
        except tomllib.TOMLDecodeError as e:
            raise Rejected(f"bad profile: the TOML does not parse ({e})") from None
        except (ProfileError, ValueError) as e:
            raise Rejected(f"bad profile: {e}") from None
        self._check_version(DOC_PROFILE, name, version, "profile")
        self._commit(event, version=version,
                     docs=[Doc(DOC_PROFILE, name, version, {"name": name, "version": version, "toml": text})])
        if self.on_profile is not None:
            try:
                self.on_profile(name, version, text)
            except Exception as e:  # the profile is stored; the meter picks it up at the next start at the latest
                log.error("profile %s version %d is stored but the meter could not load it now: %s", name, version, e)
                return "applied", f"profile {name} version {version} stored; it takes effect at restart ({e})", {}
        return "applied", f"profile {name} version {version} applied", {}

    def _check_version(self, kind: str, doc_id: str, version: int, what: str) -> Any:
        current = self.ledger.doc(kind, doc_id)
        if current is not None and version <= int(current.version):
            raise Rejected(f"stale {what}: {doc_id} version {version} is not above the current {current.version}")
        return current

    def _commit(self, event: dict[str, Any], *, version: int, docs: list[Any]) -> None:
        """The lifecycle record, the documents and the new last_dseq in ONE ledger transaction."""
        now = self.clock.now()
        ids = [*self.applied_ids(), event["id"]][-RECENT_IDS:]
        draft = Draft(
            type=LIFECYCLE_TYPE, subject=self.ledger.gateway_subject, time=now.wall,
            time_status=TimeStatus.SYNCED if now.synced else TimeStatus.UNSYNCED,
            data={"event": "command_applied", "command_type": event["type"], "command_id": event["id"],
                  "dseq": event["dseq"], "version": version},
        )
        self.ledger.append([draft], docs=docs,
                           kv={KV_LAST_DSEQ: event["dseq"], KV_APPLIED_IDS: json.dumps(ids, separators=(",", ":"))})

    def _after_apply(self, result: Any, what: str) -> None:
        status = getattr(result, "status", "applied")
        if status != "applied":  # the ledger said newer, pricing disagrees: its state came from elsewhere
            log.warning("%s is stored, but pricing reported %s: %s", what, status, getattr(result, "reason", ""))

    # -- diagnostics --------------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """A redacted status report: versions, counts and health; no keys, certificates, signatures or payloads."""
        now = self.clock.now()
        head_seq, _ = self.ledger.head()
        report: dict[str, Any] = {
            "gateway": self.gateway_id,
            "time": rfc3339(now.wall),
            "clock_synced": int(now.synced),
            "boot_id": now.boot_id,
            "ledger": {"epoch": self.ledger.epoch, "head_seq": head_seq, "acked_through": self.ledger.acked_through(),
                       "unacked": self.ledger.unacked_count()},
            "last_dseq": self.last_dseq_text(),
            "tariffs": {str(d.id): int(d.version) for d in self.ledger.docs(DOC_TARIFF)},
            "entitlements": {str(d.id): int(d.version) for d in self.ledger.docs(DOC_ENTITLEMENT)},
            "profiles": {str(d.id): int(d.version) for d in self.ledger.docs(DOC_PROFILE)},
            "operator_keys": len(self.operator_keys),
            "commands": dict(self.counts),
        }
        for name, fn in self._sections.items():
            try:
                report[name] = fn()
            except Exception as e:  # a broken section must not break the reply
                report[name] = {"error": type(e).__name__}
        return report


def restore_from_ledger(ledger: DownlinkLedger, pricing: Any,
                        on_profile: Callable[[str, int, str], None] | None = None) -> dict[str, int]:
    """At start: re-apply every tariff, entitlement and profile the ledger holds (the daemon calls this once,
    after restoring the meter's pricing snapshot).

    A command is committed to the ledger before pricing changes in memory, and the meter's pricing snapshot is
    checkpointed only with its next records; a crash in between would otherwise forget an applied tariff. Applying
    what is already known is a no-op (`duplicate`), so this is safe to run every time. Returns counts per kind.
    """
    from metering.entitlement import Entitlement
    from metering.tariff import Tariff

    counts = {"tariff": 0, "entitlement": 0, "profile": 0}
    for doc in sorted(ledger.docs(DOC_TARIFF), key=lambda d: int(d.version)):
        if pricing.apply_tariff(Tariff.from_dict(doc.body, file=f"ledger tariff {doc.id}")).applied:
            counts["tariff"] += 1
    for doc in ledger.docs(DOC_ENTITLEMENT):
        if pricing.apply_entitlement(Entitlement.from_dict(doc.body, file=f"ledger entitlement {doc.id}")).applied:
            counts["entitlement"] += 1
    if on_profile is not None:
        for doc in ledger.docs(DOC_PROFILE):
            on_profile(str(doc.body["name"]), int(doc.body["version"]), str(doc.body["toml"]))
            counts["profile"] += 1
    return counts


def _shown(value: Any) -> str:
    """`value` for a reply or a log line: its repr, cut at 40 characters (a command may be 64 KiB of one string)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_time(text: str) -> bool:
    """An RFC 3339 time as common.json writes it, and a real one (no month 13)."""
    if not RFC3339.fullmatch(text):
        return False
    try:
        parse_rfc3339(text)
    except ValueError:
        return False
    return True
