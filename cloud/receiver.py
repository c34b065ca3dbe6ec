"""The reference receiver: a shared-subscription MQTT 5 consumer that verifies, stores, commits, then acks.

    store = open_store("cloud.db")                     # or "postgresql://..."
    rx = Receiver(store, ReceiverConfig(broker="mqtt://127.0.0.1:1883"))
    async with rx:                                     # starts run() as a task, returns once subscribed
        ...
    # or: await rx.run()  (forever; reconnects with capped jittered backoff, koto.net.Backoff)

Group commit: shape-checked events collect in a batch (a `RunVerifier`) that a committer task closes when it reaches
`max_batch` or its oldest record has waited `linger_s`. Closing it authenticates the batch (one signature per
hash-linked run, cloud/verifier.py) and commits what is authentic in one transaction; under load batches grow to
what arrives during one commit (one fsync per batch), when idle a lone record is committed after `linger_s`. Only
after the commit returns are the acks published, one cumulative ack per touched (gateway, epoch), carrying the
prefix the store recomputed from the database: acks never run ahead of what is durable, and never past a gap or a
broken link.

MQTT QoS 1 PUBACKs go out as soon as a message is read, before it is committed: a receiver that dies then loses
nothing, because the gateway keeps the record until the application-level ack arrives and resends it. The MQTT
connection is `cloud/mqtt.py` (paho-mqtt's public API; its docstring says why not aiomqtt).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from koto.net import Backoff, parse_broker_url, tls_context
from koto.signing import KeyError_, PublicKey, load_public_key

from . import intake
from .errors import Rejected
from .mqtt import BrokerError, Connection
from .store import Ack, CommitResult, Store
from .verifier import RunVerifier
from .verify import Event, bad_signature

if TYPE_CHECKING:
    from .openmeter import Forwarder

log = logging.getLogger("koto.cloud.receiver")
T = TypeVar("T")
REJECT_LOG_S = 3600  # a refused message is logged once per kind and gateway per hour; the others only counted
REJECT_KINDS = ("malformed", "too_large", "too_deep", "out_of_range", "wrong_topic", "unknown_gateway",
                "bad_signature", "bad_key", "internal_error")
PERSISTENT_SESSION_S = 24 * 3600  # a receiver with a fixed client id: the broker queues for it this long (MQTT 5)


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    broker: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    prefix: str = "koto/v1"
    group: str = "koto"
    client_id: str | None = None  # set it for a persistent session (the broker queues while the receiver is away)
    max_batch: int = 500
    linger_s: float = 0.004
    backoff_initial_s: float = 0.2
    backoff_cap_s: float = 5.0
    # MQTT 3.1.1 by default: the receiver needs nothing of MQTT 5, and paho's MQTT 5 handling of every incoming
    # message (properties, reason codes) cost about a quarter of its throughput (docs/sync.md). Gateways keep MQTT 5.
    protocol: int = 311


class Receiver:
    def __init__(self, store: Store, config: ReceiverConfig, *, forwarder: Forwarder | None = None) -> None:
        self.url = parse_broker_url(config.broker, file="receiver config", key="broker")  # fail early on a bad URL
        self.store = store
        self.config = config
        self.forwarder = forwarder
        self.stats: Counter[str] = Counter()
        self.ready = asyncio.Event()
        self.committed = asyncio.Event()  # set after every commit (the forwarder waits on it)
        self._db = asyncio.Lock()  # one store call at a time (the forwarder shares the connection)
        self._keys: dict[str, PublicKey] = {}
        self._logged: set[tuple[str, str]] = set()  # chain breaks already alarmed
        self._reject_log = RateLimit(REJECT_LOG_S)
        self._batch = RunVerifier(self._keys)  # parsed events of the next commit; authenticated when it is taken
        self._batch_t0 = 0.0
        self._kick = asyncio.Event()  # the batch became non-empty or full: wake the committer
        self._flushing = asyncio.Lock()  # one commit-and-ack at a time, in order
        self._task: asyncio.Task[None] | None = None
        self._fwd_task: asyncio.Task[None] | None = None
        self._failpoint = os.environ.get("KOTO_CLOUD_FAILPOINT", "")  # tests only; see _flush

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self, within: float = 10.0) -> None:
        self._task = asyncio.create_task(self.run(), name="koto-receiver")
        waiter = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self._task in done:
                self._task.result()  # raise what stopped it
            raise TimeoutError(f"receiver did not subscribe to {self.config.broker} within {within}s")

    async def stop(self) -> None:
        for task in (self._task, self._fwd_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._fwd_task = None

    async def run(self) -> None:
        """Consume forever; reconnect after any broker loss with capped, jittered exponential backoff."""
        if self.forwarder is not None and self._fwd_task is None:
            self._fwd_task = asyncio.create_task(self.forwarder.run(self.store, self._db, self.committed))
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_cap_s)
        while True:
            try:
                async with self._connection() as conn:
                    await self._subscribe(conn)
                    backoff.reset()
                    self.ready.set()
                    log.info("receiving on %s (shared group %r)", self.config.broker, self.config.group)
                    try:
                        await self._consume(conn)
                    finally:
                        if self._batch:  # keep what was read; the acks go out after the next birth/resend
                            await self._commit()
            except BrokerError as e:
                self.ready.clear()
                self.stats["disconnects"] += 1
                delay = backoff.next()
                log.warning("%s; reconnecting in %.1f s", e, delay)
                await asyncio.sleep(delay)

    def _connection(self) -> Connection:
        """A new connection (the TLS files are read again for each, so renewed certificates are picked up)."""
        cfg = self.config
        ssl_context = tls_context(cfg.ca, cfg.cert, cfg.key) if self.url.tls else None
        return Connection(self.url, client_id=cfg.client_id, protocol=cfg.protocol, ssl_context=ssl_context,
                          session_expiry_s=PERSISTENT_SESSION_S if cfg.client_id is not None else None)

    async def _subscribe(self, conn: Connection) -> None:
        p, g = self.config.prefix, self.config.group
        await conn.subscribe(f"$share/{g}/{p}/+/up/usage", qos=1)
        await conn.subscribe(f"$share/{g}/{p}/+/up/reply", qos=1)
        # Not shared: every receiver sees every birth (retained ones too, at subscribe), and re-sends its ack.
        await conn.subscribe(f"{p}/+/up/status", qos=1)

    # -- the loop --------------------------------------------------------------------------------------------
    async def _consume(self, conn: Connection) -> None:
        """Read and shape-check messages here while a second task authenticates, commits and acks batches.

        With PostgreSQL the commit waits on the network in a worker thread and reading goes on meanwhile; SQLite
        commits on the loop, which measured faster (cloud/store.py, SqliteStore).
        """
        committer = asyncio.create_task(self._committer(conn), name="koto-receiver-commit")
        try:
            await self._read(conn, committer)
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    async def _read(self, conn: Connection, committer: asyncio.Task[None]) -> None:
        # Everything that arrived since the last turn comes in one list (no task or future per message); the
        # connection raises BrokerError once it is lost and the list is empty.
        while True:
            for message in await conn.receive():
                if committer.done():
                    committer.result()  # raise what stopped it (a broker loss, a failed commit)
                    raise RuntimeError("the committer stopped")
                await self._handle(conn, message.topic, message.payload)

    async def _committer(self, conn: Connection) -> None:
        """Group commit: close the batch when it is `max_batch` long or its oldest record has waited `linger_s`.

        Only one commit runs at a time; while it runs, the next batch fills, so under load batches grow to what
        arrives during one commit and the committer is never idle, and a lone record waits at most `linger_s`.
        """
        loop = asyncio.get_running_loop()
        kick = self._kick
        while True:
            if not self._batch:
                kick.clear()
                await kick.wait()
                continue
            wait = self._batch_t0 + self.config.linger_s - loop.time()
            if wait > 0 and len(self._batch) < self.config.max_batch:
                kick.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await kick.wait()
                continue
            await self._flush(conn)

    async def _handle(self, conn: Connection, topic: str, payload: bytes) -> None:
        """The per-message boundary: one message is checked, then stored or refused; nothing it holds stops us.

        cloud/intake.py checks size, depth, shape and ranges before anything is stored (it raises only
        `Rejected`). An exception from handling one message is caught here, counted as `internal_error` and
        logged once per gateway, and the receiver goes on with the next message. What is not about the message
        goes up as before: a broker loss reconnects (run), and a database that is unusable (the store's
        `is_outage`: disk I/O, a lost server) stops the receiver rather than being miscounted as bad input.
        """
        gateway = _gateway_in(topic, self.config.prefix)
        try:
            gateway, kind = intake.split_topic(self.config.prefix, topic)
            if kind == "usage":
                self.stats["received"] += 1
                await self._on_usage(conn, gateway, payload)
            elif kind == "status":
                await self._on_status(conn, gateway, payload)
            else:
                await self._on_reply(gateway, payload)
        except Rejected as e:
            self._reject(gateway, e)
        except (BrokerError, asyncio.CancelledError):
            raise
        except Exception as e:
            if isinstance(e, OSError | MemoryError) or self.store.is_outage(e):
                raise
            self._reject(gateway, Rejected("internal_error", f"handling a message on {topic[:200]!r} failed "
                                                             f"({type(e).__name__}: {str(e)[:200]})"), exc=e)

    async def _on_usage(self, conn: Connection, gateway: str, payload: bytes) -> None:
        ev = intake.usage(gateway, payload)
        key = self._keys.get(gateway)
        if key is None and await self._key(gateway) is None:
            raise Rejected("unknown_gateway", f"gateway {gateway!r} is not registered (koto-cloud register)")
        batch = self._batch
        if not batch:
            self._batch_t0 = asyncio.get_running_loop().time()
            self._kick.set()
        batch.add(ev)
        if len(batch) >= self.config.max_batch:
            # The committer is busy with the previous batch: wait for it and commit this one here, so
            # a backlog never grows the batch without bound (backpressure on the broker's queue).
            await self._flush(conn)

    async def _key(self, gateway: str) -> PublicKey | None:
        key = self._keys.get(gateway)
        if key is None:
            pem = await self._in_store(self.store.pubkey, gateway)
            if pem is None:
                return None
            try:
                key = load_public_key(pem)
            except KeyError_ as e:
                self._reject(gateway, Rejected("bad_key", f"the registered key of {gateway!r} is unusable ({e})"))
                return None
            self._keys[gateway] = key
        return key

    def _reject(self, gateway: str, e: Rejected, *, exc: BaseException | None = None) -> None:
        """Count a refused message by kind; log it once per kind and gateway per `REJECT_LOG_S` (a flood of bad
        messages must not flood the journal), saying how many more were only counted since the last line."""
        self.stats[e.kind] += 1
        self.stats["rejected"] += 1
        if self._reject_log.allow((e.kind, gateway)):
            more = self._reject_log.suppressed((e.kind, gateway))
            log.warning("rejected a message from %s: %s (%s; further ones within %d min are only counted)",
                        gateway or "?", e.reason, f"{more} more since the last report" if more else "first",
                        REJECT_LOG_S // 60, exc_info=exc)

    def rejections(self) -> dict[str, int]:
        """Refused messages so far, per kind (malformed, too_large, too_deep, out_of_range, wrong_topic,
        unknown_gateway, bad_signature, bad_key, internal_error)."""
        return {k: self.stats[k] for k in REJECT_KINDS if self.stats[k]}

    async def _in_store(self, fn: Callable[..., T], *args: Any) -> T:
        """One store call at a time (the forwarder shares the connection), in a worker thread if the store wants one.

        A caller cancelled meanwhile still waits for the thread to finish before letting go of the lock: the
        connection must never be used by two threads at once.
        """
        async with self._db:
            if not self.store.threaded:
                return fn(*args)
            fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(fut)
                raise

    async def _commit(self) -> CommitResult:
        """Authenticate and commit the batch so far; a caller cancelled meanwhile (stop) still lets it finish."""
        good, forged = self._batch.take()
        self.stats["signatures_checked"] = self._batch.signatures_checked
        for ev in forged:
            self._reject(ev.gateway, bad_signature(ev))
        task = asyncio.ensure_future(self._commit_batch(good))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)
            raise

    async def _commit_batch(self, batch: list[Event]) -> CommitResult:
        if not batch:
            return CommitResult()
        for attempt in range(5):
            try:
                res = await self._in_store(self.store.commit, batch)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a deadlock or lock timeout between receivers: retry the whole batch
                if attempt == 4:
                    raise
                log.warning("commit of %d records failed (%s); retrying", len(batch), e)
                await asyncio.sleep(0.05 * (attempt + 1))
        self.stats["stored"] += len(res.inserted)
        self.stats["duplicates"] += res.duplicates
        self.stats["commits"] += 1
        for ev in res.conflicts:
            self.stats["conflicts"] += 1
            log.error("ALARM: %s sent a different record under existing id %s; kept the first, alarmed",
                      ev.gateway, ev.id)
        for gw, epoch, seq in res.breaks:
            if ("chain_break", f"{gw}/{epoch}/{seq}") not in self._logged:
                self._logged.add(("chain_break", f"{gw}/{epoch}/{seq}"))
                self.stats["chain_breaks"] += 1
                log.error("ALARM: %s epoch %d: record %d does not link to record %d; acks stop there",
                          gw, epoch, seq, seq - 1)
        self.committed.set()
        return res

    async def _flush(self, conn: Connection) -> None:
        """Commit everything received so far (after any commit in progress), then ack what it made durable."""
        async with self._flushing:
            if not self._batch:
                return
            res = await self._commit()
            if self._failpoint == "kill_after_commit" and res.inserted:
                # Fault injection for the crash tests: die exactly between a durable commit and its ack.
                os.kill(os.getpid(), signal.SIGKILL)
            for a in res.acks:
                self._send_ack(conn, a)

    def _send_ack(self, conn: Connection, ack: Ack) -> None:
        """Hand the ack to the MQTT connection (QoS 1) without waiting for the broker's PUBACK.

        Waiting for it stalled reading for a broker round trip per commit; the PUBACK tells us nothing the
        gateway's resend rules need (a lost ack is re-sent on the next commit or birth).
        """
        if ack.acked_through <= 0:
            return
        conn.publish(f"{self.config.prefix}/{ack.gateway}/down/ack", ack.payload(), 1)
        self.stats["acks_sent"] += 1

    async def _on_status(self, conn: Connection, gateway: str, payload: bytes) -> None:
        msg = intake.status(gateway, payload)
        self.stats["status"] += 1
        if not isinstance(msg, intake.Birth):
            return
        await self._flush(conn)  # what was received before the birth is in the ack it gets
        await self._in_store(self.store.set_birth, gateway, msg.body)
        ack = await self._in_store(self.store.ack_state, gateway, msg.epoch)
        self.stats["births"] += 1
        self._send_ack(conn, ack)

    async def _on_reply(self, gateway: str, payload: bytes) -> None:
        msg = intake.reply(gateway, payload)
        self.stats["replies"] += 1
        await self._in_store(self.store.add_reply, gateway, msg.body)
        log.info("%s replied %s to command %s: %s", gateway, msg.status, msg.ack_of, msg.reason[:200])


def _gateway_in(topic: str, prefix: str) -> str:
    """The gateway a topic names, for counting and logging before the topic itself is checked ("" if none)."""
    rest = topic[len(prefix) + 1:] if topic.startswith(prefix + "/") else ""
    return rest.split("/", 1)[0][:128]


class RateLimit:
    """Allow one event per key per `window_s`; count the ones held back. Bounded: at most `max_keys` keys are
    remembered (then the oldest half are forgotten), so a stream of ever-new keys cannot grow it without end."""

    def __init__(self, window_s: float, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.max_keys, self._clock = window_s, max_keys, clock
        self._last: dict[Any, float] = {}
        self._held: Counter[Any] = Counter()

    def allow(self, key: Any) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            self._held[key] += 1
            return False
        if len(self._last) >= self.max_keys:
            for k in sorted(self._last, key=self._last.__getitem__)[: self.max_keys // 2]:
                del self._last[k]
                self._held.pop(k, None)
        self._last[key] = now
        return True

    def suppressed(self, key: Any) -> int:
        """How many were held back since the last allowed one (and reset the count)."""
        return self._held.pop(key, 0)
