"""An independent cloud side of the Koto cloud contract v1, written from the published documents alone.

Sources, and nothing else: docs/contract.md, docs/asyncapi.yaml, cloud/schemas/*.json and README.md's "The cloud".
It imports nothing of `cloud`, `gateway`, `koto`, `metering` or `drivers`: canonical bytes, hashes, signature checks,
the chain walk and the cumulative ack are all its own code, so a test that runs the real gateway against it checks
the gateway against the text, not against the reference receiver (which shares the authors' reading of the text).

    peer = ContractPeer(host, port, gateways={"gw-1": public_key})
    async with peer:
        ...                                  # the gateway publishes; the peer verifies, stores and acks
        cmd, payload = peer.command("gw-1", DIAGNOSTICS, {})
        reply = await peer.reply_to(cmd["id"])

What it does with each uplink message, in the contract's order ("What the receiver checks, stores and acks"):
size and nesting depth on the bytes, one JSON object without duplicate keys or NaN, the record envelope (by hand and
with jsonschema against cloud/schemas/event.json), `source` = the topic's gateway, a registered gateway, the
signature (this peer checks every record's own signature, which the contract allows), then an idempotent store by
(source, id) with duplicates counted and a different hash under a known id raised as an alarm, then the contiguous
linked prefix per (gateway, epoch) and one ack per touched chain after the "commit". A birth is answered with the
current ack of its epoch. A refused message is counted in `rejections` by the contract's kind and never stored or
acked.

`findings` collects what the contract says of a message but does not make a reason to refuse it (the MQTT content
type, the exact bytes being canonical, the time format): a test asserts it is empty, the peer keeps going.

Readings chosen where the documents leave room (each also in the report that came with this file):
- "keys sorted" is taken as RFC 8785's order (UTF-16 code units), since the contract says its form *is* JCS; the
  two differ only for keys with characters beyond U+FFFF, which no contract payload has.
- Acks are sent for every chain a batch touched, a resend (duplicate) included, so a gateway that restarted and
  resends what the cloud already holds gets its ack without waiting for a birth; `acked_through` 0 is never sent.
- The ack's bytes are canonical JSON and carry no MQTT content type (the contract names none for acks).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SCHEMAS = Path(__file__).resolve().parents[2] / "cloud" / "schemas"

PREFIX = "koto/v1"
USAGE_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"  # contract.md "Usage records"; asyncapi
COMMAND_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"  # asyncapi: tariffCommand ... contentType
MAX_SAFE = 2**53 - 1
MAX_RECORD_BYTES = 64 * 1024  # "≤ 64 KiB for a record or a reply"
MAX_STATUS_BYTES = 4 * 1024  # "≤ 4 KiB for a status"
MAX_DEPTH = 32  # "≤ 32 levels; contract messages use 4"
ZERO_HASH = "0" * 64

TARIFF = "io.koto.cmd.tariff.v1"
ENTITLEMENT = "io.koto.cmd.entitlement.v1"
PROFILE = "io.koto.cmd.profile.v1"
DIAGNOSTICS = "io.koto.cmd.diagnostics.v1"

ENVELOPE_KEYS = {
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "sequence",
    "timestatus",
    "prevhash",
    "data",
    "sig",
}
RECORD_TYPES = {"io.koto.usage.v1", "io.koto.clock.v1", "io.koto.lifecycle.v1"}
ID_RE = re.compile(r"^([0-9]+)-([1-9][0-9]*)$")
SEQUENCE_RE = re.compile(r"^[0-9]{20}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
B64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
KOTO_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")  # "YYYY-MM-DDTHH:MM:SS.mmmZ"
GATEWAY_RE = re.compile(r"^[^/#+\s]{1,128}$")


# -- canonical bytes, hash, signature (contract.md "Canonical bytes, hash, signature") ----------------------------


class NotCanonical(ValueError):
    """A value outside the canonical form: a float, boolean, null, or an integer beyond ±(2^53−1)."""


def _jcs_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")  # RFC 8785 §3.2.3: sort by UTF-16 code units


def _emit(value: Any, out: list[str]) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise NotCanonical(f"{value!r} is not allowed in canonical JSON (strings, integers, objects, arrays only)")
    if isinstance(value, int):
        if not -MAX_SAFE <= value <= MAX_SAFE:
            raise NotCanonical(f"integer {value} is beyond ±(2^53−1)")
        out.append(str(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _emit(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for i, k in enumerate(sorted(value, key=_jcs_key)):
            if not isinstance(k, str):
                raise NotCanonical(f"object key {k!r} is not a string")
            if i:
                out.append(",")
            out.append(json.dumps(k, ensure_ascii=False))
            out.append(":")
            _emit(value[k], out)
        out.append("}")
    else:
        raise NotCanonical(f"{type(value).__name__} is not a JSON value")


def canonical(value: Any) -> bytes:
    """UTF-8, keys sorted, separators `,` `:`, no whitespace, no ASCII escaping of non-ASCII text."""
    out: list[str] = []
    _emit(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: not well-formed text, not JCS
        raise NotCanonical(str(e)) from None


def unsigned(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "sig"}


def record_hash(event: dict[str, Any]) -> str:
    """`hash` = lowercase hex SHA-256 of the canonical bytes of the event without its `sig`."""
    return hashlib.sha256(canonical(unsigned(event))).hexdigest()


def sign(key: ec.EllipticCurvePrivateKey, event: dict[str, Any]) -> str:
    """`sig` = base64 of the DER ECDSA P-256 / SHA-256 signature over the canonical bytes without `sig`."""
    der = key.sign(canonical(unsigned(event)), ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(der).decode("ascii")


def signature_ok(key: ec.EllipticCurvePublicKey, event: dict[str, Any]) -> bool:
    try:
        der = base64.b64decode(event["sig"], validate=True)
        key.verify(der, canonical(unsigned(event)), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError, KeyError, TypeError):
        return False
    return True


def public_key_pem(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 public key")
    return key


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def now_rfc3339(at: float | None = None) -> str:
    t = dt.datetime.fromtimestamp(time.time() if at is None else at, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# -- the boundary on bytes, before and during parsing ---------------------------------------------------------------


class Refused(Exception):
    def __init__(self, kind: str, why: str) -> None:
        super().__init__(f"{kind}: {why}")
        self.kind = kind
        self.why = why


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of objects and arrays, from the bytes (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x7B, 0x5B):
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x7D, 0x5D):
            depth -= 1
    return deepest


def _no_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise Refused("malformed", f"key {k!r} twice in one object")
        out[k] = v
    return out


def _no_nan(token: str) -> Any:
    raise Refused("malformed", f"{token} is not JSON")


def parse_object(raw: bytes, limit: int, what: str) -> dict[str, Any]:
    if len(raw) > limit:
        raise Refused("too_large", f"{what} of {len(raw)} bytes (limit {limit})")
    if nesting_depth(raw) > MAX_DEPTH:
        raise Refused("too_deep", f"{what} nests objects or arrays more than {MAX_DEPTH} levels deep")
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_twice, parse_constant=_no_nan)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Refused("malformed", f"{what} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise Refused("malformed", f"{what} is not one JSON object")
    return value


# -- JSON Schema (cloud/schemas), if jsonschema is installed --------------------------------------------------------


class Schemas:
    """Validators for cloud/schemas/*.json, with their `$ref`s resolved among themselves."""

    def __init__(self, folder: Path = SCHEMAS) -> None:
        try:
            from jsonschema import Draft202012Validator
            from referencing import Registry, Resource
        except ImportError:  # the hand-written checks still run
            self.available = False
            return
        self.available = True
        docs = {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
        registry: Any = Registry().with_resources((doc["$id"], Resource.from_contents(doc)) for doc in docs.values())
        self._validators = {name: Draft202012Validator(doc, registry=registry) for name, doc in docs.items()}

    def errors(self, name: str, value: Any) -> list[str]:
        if not self.available:
            return []
        v = self._validators[name]
        return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in v.iter_errors(value)]


# -- what the peer stores -----------------------------------------------------------------------------------------


@dataclass
class Stored:
    gateway: str
    epoch: int
    seq: int
    hash: str
    prevhash: str
    body: bytes
    event: dict[str, Any]


@dataclass
class Chain:
    """The contiguous, linked prefix of one (gateway, epoch): `acked_through` and `head_hash`."""

    acked_through: int = 0
    head_hash: str = ZERO_HASH
    broken_at: int | None = None  # a record whose prevhash is not its predecessor's hash stops the prefix for good


@dataclass
class Reply:
    gateway: str
    body: dict[str, Any]
    raw: bytes
    at: float


@dataclass
class Birth:
    gateway: str
    body: dict[str, Any]
    retained: bool
    at: float


@dataclass
class PeerStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    acks_sent: int = 0
    births: int = 0
    wills: int = 0
    connects: int = 0
    dropped_in_flight: int = 0


@dataclass
class ContractPeer:
    """The cloud side of the contract: receiver (verify, store, ack) and operator (signed commands)."""

    host: str
    port: int
    gateways: dict[str, ec.EllipticCurvePublicKey] = field(default_factory=dict)
    prefix: str = PREFIX
    group: str = "koto"
    client_id: str = "contract-peer"
    tls: aiomqtt.TLSParameters | None = None
    operator: str = "peer"
    operator_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    max_batch: int = 256
    # Test hooks: messages the network "loses" before the peer sees them (by (gateway, seq), once each), and a
    # function that changes every ack before it goes out (a cloud that stored something else, or a confused one).
    lose_once: set[tuple[str, int]] = field(default_factory=set)
    ack_mutator: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    withhold_acks: bool = False  # stores and commits, but every ack is "lost" (a crash between commit and ack)
    deaf_to_usage: bool = False  # every up/usage message is "lost" before the peer sees it

    def __post_init__(self) -> None:
        self.schemas = Schemas()
        self.records: dict[tuple[str, str], Stored] = {}  # (source, id) -> the first one stored
        self.by_seq: dict[tuple[str, int], dict[int, Stored]] = {}  # (gateway, epoch) -> seq -> record
        self.chains: dict[tuple[str, int], Chain] = {}
        self.alarms: list[str] = []
        self.rejections: Counter[str] = Counter()
        self.rejected: list[tuple[str, str, str]] = []  # (topic, kind, why), every one
        self.refused_payloads: list[bytes] = []  # the bytes of each, in the same order
        self.findings: list[str] = []
        self.acks: list[tuple[str, dict[str, Any], float]] = []  # what was published on down/ack, in order
        self.births: dict[str, Birth] = {}
        self.birth_log: list[Birth] = []
        self.wills: list[tuple[str, dict[str, Any], bool]] = []
        self.replies: list[Reply] = []
        self.live: list[dict[str, Any]] = []
        self.stats = PeerStats()
        self._last_dseq: dict[str, int] = {}
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Condition()
        self._queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._next_ack: dict[tuple[str, int], bytes] = {}
        self._ack_senders: dict[tuple[str, int], asyncio.Task[None]] = {}

    # -- life cycle --

    async def __aenter__(self) -> ContractPeer:
        self._tasks = [
            asyncio.create_task(self._run(), name="peer-mqtt"),
            asyncio.create_task(self._commit_loop(), name="peer-commit"),
        ]
        await asyncio.wait_for(self._connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [*self._tasks, *self._ack_senders.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await t

    def register(self, gateway: str, pem: bytes) -> None:
        """`koto-cloud register GW --pubkey gw.pub.pem`: the gateway's device key, as `koto provision` prints it."""
        self.gateways[gateway] = public_key_pem(pem)

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    tls_params=self.tls,
                    clean_start=True,
                    keepalive=10,
                ) as client:
                    self._client = client
                    await client.subscribe(f"$share/{self.group}/{self.prefix}/+/up/usage", qos=1)
                    await client.subscribe(f"$share/{self.group}/{self.prefix}/+/up/reply", qos=1)
                    await client.subscribe(f"{self.prefix}/+/up/status", qos=1)  # not shared: retained births
                    await client.subscribe(f"{self.prefix}/+/up/live", qos=0)
                    self.stats.connects += 1
                    self._connected.set()
                    async for msg in client.messages:
                        await self._dispatch(msg)
            except aiomqtt.MqttError:
                pass
            self._client = None
            self._connected.clear()
            await asyncio.sleep(0.2)

    def _topic_parts(self, topic: str) -> tuple[str, str] | None:
        rest = topic[len(self.prefix) + 1 :] if topic.startswith(self.prefix + "/") else ""
        parts = rest.split("/")
        if len(parts) != 3 or parts[1] != "up":
            return None
        return parts[0], parts[2]

    async def _dispatch(self, msg: aiomqtt.Message) -> None:
        parts = self._topic_parts(str(msg.topic))
        if parts is None:
            return
        gateway, kind = parts
        want_qos = {"usage": 1, "status": 1, "reply": 1}.get(kind)  # contract.md topics table (subscribed at 1)
        if want_qos is not None and msg.qos != want_qos:
            self._finding(f"up/{kind} arrived at QoS {msg.qos}; contract.md's topics table says QoS {want_qos}")
        raw = bytes(msg.payload) if isinstance(msg.payload, (bytes, bytearray)) else str(msg.payload).encode()
        if kind == "usage":
            await self._queue.put(msg)
        elif kind == "status":
            await self._on_status(gateway, raw, bool(msg.retain), str(msg.topic))
        elif kind == "reply":
            self._on_reply(gateway, raw, str(msg.topic))
        elif kind == "live":
            self._on_live(gateway, raw, str(msg.topic))
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _refuse(self, topic: str, err: Refused, raw: bytes = b"") -> None:
        self.rejections[err.kind] += 1
        self.rejected.append((topic, err.kind, err.why))
        self.refused_payloads.append(raw)

    def _finding(self, text: str) -> None:
        if text not in self.findings:
            self.findings.append(text)

    # -- up/usage: check, store, commit, ack --

    async def _commit_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            touched: set[tuple[str, int]] = set()
            for msg in batch:
                self.stats.received += 1
                topic = str(msg.topic)
                gateway = topic.split("/")[-3]
                raw = bytes(msg.payload) if isinstance(msg.payload, (bytes, bytearray)) else b""
                try:
                    key = self.accept_record(gateway, raw, topic, content_type=_content_type(msg))
                except Refused as e:
                    self._refuse(topic, e, raw)
                    continue
                if key is not None:
                    touched.add(key)
            # The "commit": a dict holds what it holds once the line above returns. Acks only after it.
            for gateway, epoch in sorted(touched):
                chain = self.advance(gateway, epoch)
                if chain.acked_through >= 1:
                    await self._send_ack(gateway, epoch, chain)
            await self._notify()

    def accept_record(
        self, gateway: str, raw: bytes, topic: str, *, content_type: str | None = None
    ) -> tuple[str, int] | None:
        """Check one up/usage message and store it; (gateway, epoch) when it touched that chain, None when it was
        "lost in flight" by a test hook. Raises Refused (never stored, never acked)."""
        if self.deaf_to_usage:
            self.stats.dropped_in_flight += 1
            return None
        event = parse_object(raw, MAX_RECORD_BYTES, "usage record")
        epoch, seq = self.check_envelope(event)
        if (gateway, seq) in self.lose_once:
            self.lose_once.discard((gateway, seq))
            self.stats.dropped_in_flight += 1
            return None
        if event["source"] != f"urn:koto:gw:{gateway}":
            raise Refused("wrong_topic", f"source {event['source']!r} on the topic of {gateway}")
        key = self.gateways.get(gateway)
        if key is None:
            raise Refused("unknown_gateway", f"{gateway} is not registered")
        if not signature_ok(key, event):
            raise Refused("bad_signature", f"{event['id']}: the signature does not verify with {gateway}'s key")
        # Said by the contract but not a reason to refuse: noted, the record is stored.
        if content_type != USAGE_CONTENT_TYPE:
            self._finding(
                f"up/usage content type {content_type!r}, contract.md 'Usage records' says {USAGE_CONTENT_TYPE!r}"
            )
        if canonical(event) != raw:
            self._finding(
                f"up/usage {event['id']}: payload bytes are not the canonical form of the event "
                f"(asyncapi usage channel: 'its stored canonical bytes exactly')"
            )
        if not KOTO_TIME_RE.match(event["time"]):
            self._finding(f"up/usage {event['id']}: time {event['time']!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ")
        h = record_hash(event)
        source_id = (event["source"], event["id"])
        have = self.records.get(source_id)
        if have is not None:
            if have.hash == h:
                self.stats.duplicates += 1
            else:
                self.alarms.append(f"{event['id']}: resent with hash {h}, stored {have.hash}")
            return gateway, epoch
        rec = Stored(gateway, epoch, seq, h, event["prevhash"], raw, event)
        self.records[source_id] = rec
        self.by_seq.setdefault((gateway, epoch), {})[seq] = rec
        self.stats.stored += 1
        return gateway, epoch

    def check_envelope(self, event: dict[str, Any]) -> tuple[int, int]:
        """common.json recordEnvelope, by hand and by schema: *malformed* when anything is off."""
        missing = ENVELOPE_KEYS - set(event)
        extra = set(event) - ENVELOPE_KEYS
        if missing or extra:
            raise Refused("malformed", f"envelope missing {sorted(missing)}, extra {sorted(extra)}")
        for name in ENVELOPE_KEYS - {"data"}:
            if not isinstance(event[name], str):
                raise Refused("malformed", f"{name} is not a string")
        data = event["data"]
        if not isinstance(data, dict):
            raise Refused("malformed", "data is not an object")
        if event["specversion"] != "1.0" or event["datacontenttype"] != "application/json":
            raise Refused("malformed", "specversion or datacontenttype")
        if event["type"] not in RECORD_TYPES:
            raise Refused("malformed", f"type {event['type']!r}")
        m = ID_RE.match(event["id"])
        if not m:
            raise Refused("malformed", f"id {event['id']!r} is not {{epoch}}-{{seq}}")
        epoch, seq = int(m.group(1)), int(m.group(2))
        if not (0 <= epoch <= MAX_SAFE and 1 <= seq <= MAX_SAFE):
            raise Refused("out_of_range", f"id {event['id']!r}")
        if not SEQUENCE_RE.match(event["sequence"]) or int(event["sequence"]) != seq:
            raise Refused("malformed", f"sequence {event['sequence']!r} is not seq {seq} in 20 digits")
        if data.get("epoch") != epoch or data.get("seq") != seq or isinstance(data.get("seq"), bool):
            raise Refused(
                "malformed",
                f"data.epoch/data.seq {data.get('epoch')!r}/{data.get('seq')!r} do not repeat id {event['id']!r}",
            )
        if not HEX64_RE.match(event["prevhash"]) or (seq == 1) != (event["prevhash"] == ZERO_HASH):
            raise Refused("malformed", f"prevhash {event['prevhash']!r} for seq {seq}")
        if not RFC3339_RE.match(event["time"]):
            raise Refused("malformed", f"time {event['time']!r} is not RFC 3339")
        if not B64_RE.match(event["sig"]):
            raise Refused("malformed", "sig is not base64")
        if not event["subject"]:
            raise Refused("malformed", "empty subject")
        if event["timestatus"] not in ("S", "U"):
            raise Refused("malformed", f"timestatus {event['timestatus']!r}")
        try:
            canonical(data)
        except NotCanonical as e:
            raise Refused("malformed", f"data is not canonical: {e}") from None
        errs = self.schemas.errors("event.json", event)
        if errs:
            raise Refused("malformed", f"{event['id']} does not follow event.json: {'; '.join(errs[:3])}")
        return epoch, seq

    def advance(self, gateway: str, epoch: int) -> Chain:
        """Walk the stored chain from its prefix: N -> N+1 only if N+1 is stored and links to N's hash."""
        chain = self.chains.setdefault((gateway, epoch), Chain())
        held = self.by_seq.get((gateway, epoch), {})
        while chain.broken_at is None:
            nxt = held.get(chain.acked_through + 1)
            if nxt is None:
                break
            if nxt.prevhash != chain.head_hash:
                chain.broken_at = nxt.seq
                self.alarms.append(
                    f"chain_break: {gateway} epoch {epoch} seq {nxt.seq} prevhash {nxt.prevhash} "
                    f"is not the hash of seq {chain.acked_through} ({chain.head_hash})"
                )
                break
            chain.acked_through, chain.head_hash = nxt.seq, nxt.hash
        return chain

    async def _send_ack(self, gateway: str, epoch: int, chain: Chain) -> None:
        ack = {"epoch": epoch, "acked_through": chain.acked_through, "head_hash": chain.head_hash}
        if self.ack_mutator is not None:
            ack = self.ack_mutator(ack)
        if self.withhold_acks:
            return
        errs = self.schemas.errors("ack.json", ack)
        assert not errs, f"the peer built an ack that ack.json refuses: {errs}"
        if self._client is None:
            return  # the birth at the gateway's next connect asks again
        self.acks.append((gateway, ack, time.monotonic()))
        self.stats.acks_sent += 1
        # Not awaited here: a PUBACK that never comes (the broker went away under this very publish) must not hold
        # the next batch, nor the next connection's messages, for aiomqtt's publish timeout. One publish in flight
        # per chain; acks are cumulative, so one made meanwhile replaces the one waiting.
        self._next_ack[(gateway, epoch)] = canonical(ack)
        if (gateway, epoch) not in self._ack_senders:
            task = asyncio.create_task(self._ack_sender(gateway, epoch))
            self._ack_senders[(gateway, epoch)] = task

    async def _ack_sender(self, gateway: str, epoch: int) -> None:
        try:
            while (payload := self._next_ack.pop((gateway, epoch), None)) is not None:
                client = self._client
                if client is None:
                    return
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(f"{self.prefix}/{gateway}/down/ack", payload, qos=1, timeout=5)
        finally:
            self._ack_senders.pop((gateway, epoch), None)

    def _checked(self, raw: bytes, limit: int, what: str) -> dict[str, Any]:
        """A JSON object of at most `limit` bytes that follows cloud/schemas/`what`.json; else Refused."""
        body = parse_object(raw, limit, what)
        errs = self.schemas.errors(f"{what}.json", body)
        if errs:
            raise Refused("malformed", f"{what} does not follow {what}.json: {'; '.join(errs[:3])}")
        return body

    # -- up/status: birth and Will --

    async def _on_status(self, gateway: str, raw: bytes, retained: bool, topic: str) -> None:
        try:
            body = self._checked(raw, MAX_STATUS_BYTES, "status")
            if body.get("gateway") != gateway:
                raise Refused("wrong_topic", f"status names {body.get('gateway')!r} on {gateway}'s topic")
            if body.get("online") is True:
                for name in ("epoch", "last_seq", "unacked", "tariff_version"):
                    if not 0 <= body[name] <= MAX_SAFE:
                        raise Refused("out_of_range", f"birth {name} {body[name]}")
        except Refused as e:
            self._refuse(topic, e, raw)
            return
        if body["online"] is False:
            self.wills.append((gateway, body, retained))
            self.stats.wills += 1
            return
        birth = Birth(gateway, body, retained, time.monotonic())
        self.births[gateway] = birth
        self.birth_log.append(birth)
        self.stats.births += 1
        if body["last_dseq"]:
            self._last_dseq[gateway] = max(self._last_dseq.get(gateway, 0), int(body["last_dseq"]))
        # "When a birth arrives, the receiver recomputes and re-sends the ack for the birth's epoch."
        chain = self.advance(gateway, body["epoch"])
        if chain.acked_through >= 1:
            await self._send_ack(gateway, body["epoch"], chain)

    # -- up/reply and up/live --

    def _on_reply(self, gateway: str, raw: bytes, topic: str) -> None:
        try:
            body = self._checked(raw, MAX_RECORD_BYTES, "reply")
            if body["gateway"] != gateway:
                raise Refused("wrong_topic", f"reply names {body['gateway']!r} on {gateway}'s topic")
        except Refused as e:
            self._refuse(topic, e, raw)
            return
        self.replies.append(Reply(gateway, body, raw, time.monotonic()))

    def _on_live(self, gateway: str, raw: bytes, topic: str) -> None:
        try:
            body = self._checked(raw, MAX_RECORD_BYTES, "live")
        except Refused as e:
            self._refuse(topic, e, raw)
            return
        self.live.append(body)

    # -- down/cmd: signed commands --

    def forget_dseqs(self) -> None:
        """Forget every dseq this peer sent (an operator database restored from a backup): births must tell."""
        self._last_dseq.clear()

    def next_dseq(self, gateway: str) -> int:
        """Above what the gateway said it applied (its birth's last_dseq) and above what this peer sent."""
        return self._last_dseq.get(gateway, 0) + 1

    def command(
        self,
        gateway: str,
        type_: str,
        data: dict[str, Any],
        *,
        dseq: int | None = None,
        expires_in: float = 86400.0,
        key: ec.EllipticCurvePrivateKey | None = None,
        subject_gateway: str | None = None,
        at: float | None = None,
        check_schema: bool = True,
    ) -> tuple[dict[str, Any], bytes]:
        """A command CloudEvent, signed by the operator key (or `key`): the dict and the bytes to publish."""
        if dseq is None:
            dseq = self.next_dseq(gateway)
        self._last_dseq[gateway] = max(self._last_dseq.get(gateway, 0), dseq)
        t = time.time() if at is None else at
        cmd: dict[str, Any] = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": f"urn:koto:operator:{self.operator}",
            "type": type_,
            "subject": f"urn:koto:gw:{subject_gateway or gateway}",
            "time": now_rfc3339(t),
            "datacontenttype": "application/json",
            "dseq": str(dseq),
            "expirytime": now_rfc3339(t + expires_in),
            "data": data,
        }
        cmd["sig"] = sign(key or self.operator_key, cmd)
        errs = self.schemas.errors("command.json", cmd) if check_schema else []
        assert not errs, f"the peer built a command that command.json refuses: {errs}"
        return cmd, canonical(cmd)

    async def publish_command(self, gateway: str, payload: bytes) -> None:
        await asyncio.wait_for(self._connected.wait(), 10)
        assert self._client is not None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = COMMAND_CONTENT_TYPE
        await self._client.publish(f"{self.prefix}/{gateway}/down/cmd", payload, qos=1, properties=props)

    async def send(
        self, gateway: str, type_: str, data: dict[str, Any], *, within: float = 10.0, **kw: Any
    ) -> tuple[dict[str, Any], Reply]:
        """Build, sign and publish a command, and wait for the gateway's reply to it."""
        cmd, payload = self.command(gateway, type_, data, **kw)
        seen = len(self.replies)
        await self.publish_command(gateway, payload)
        return cmd, await self.next_reply(gateway, after=seen, within=within)

    async def reply_or_refusal(self, gateway: str, *, after: int, refused: int, within: float = 10.0) -> Reply:
        """Like next_reply, but fails at once with the refusal if what came back on up/reply broke reply.json."""
        await self.wait_for(
            lambda: any(r.gateway == gateway for r in self.replies[after:]) or len(self.rejected) > refused,
            within,
            f"a reply from {gateway}",
        )
        bad = [(why, raw) for (_, _, why), raw in zip(self.rejected, self.refused_payloads, strict=True)][refused:]
        assert not bad, f"the gateway's answer was refused: {bad}"
        return next(r for r in self.replies[after:] if r.gateway == gateway)

    async def next_reply(self, gateway: str, *, after: int, within: float = 10.0) -> Reply:
        """The first reply of `gateway` after the first `after` replies the peer had seen."""
        await self.wait_for(
            lambda: any(r.gateway == gateway for r in self.replies[after:]), within, f"a reply from {gateway}"
        )
        return next(r for r in self.replies[after:] if r.gateway == gateway)

    # -- waiting --

    async def wait_for(self, predicate: Callable[[], bool], within: float, what: str) -> None:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(until(), within)
        except TimeoutError:
            raise AssertionError(f"peer: waited {within} s in vain for {what}; {self.summary()}") from None

    def held(self, gateway: str, epoch: int) -> list[int]:
        return sorted(self.by_seq.get((gateway, epoch), {}))

    def summary(self) -> str:
        return (
            f"stats {self.stats}, chains {self.chains}, rejections {dict(self.rejections)}, "
            f"alarms {self.alarms[:3]}, findings {self.findings[:3]}, rejected {self.rejected[:3]}"
        )


def _content_type(msg: aiomqtt.Message) -> str | None:
    props = msg.properties
    return getattr(props, "ContentType", None) if props is not None else None
