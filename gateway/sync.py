"""Uplink: store-and-forward of ledger records to the billing cloud over MQTT (contract v1, docs/sync.md).

The ledger is the queue. Nothing here keeps records in memory beyond one batch: on every (re)connect the pump
starts again from the ledger's `acked_through`, publishes unacked records in seq order with their stored bytes,
and keeps at most `window` records beyond the last cloud ack in flight. The cloud ack (`down/ack`) — not the QoS 1
PUBACK, which only says the broker has the message — is what marks records acked, and only when its `head_hash`
equals the ledger's own hash of that record (`Ledger.mark_acked`); a mismatch is counted as an alarm and prunes
nothing. The daemon passes `acks` (gateway/ack_hold.py): an ack then counts at once but is written to the file
with the next records commit, not in a commit of its own. If acks stop coming while records are outstanding, the
pump goes back to the acked point and resends (the receiver stores by id, so a resend is a no-op there).

Reconnects use a capped, jittered backoff (0.5 s doubling to 5 s), so the drain starts within a few seconds of the
broker coming back however long it was away. The meter calls `notify()` after each append; the live view calls
`offer_live()`, published at most once per `live_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from koto.canonical import rfc3339
from koto.clock import Clock
from koto.errors import KotoError
from koto.net import Backoff, tls_context
from metering.ledger import AckOutcome, Stored

from .config import SyncConfig
from .mqtt_conn import (
    SESSION_TAKEN_OVER,
    Outbox,
    cloudevents_properties,
    disconnect_reason,
    json_properties,
    make_client,
)

if TYPE_CHECKING:
    import aiomqtt

    from .downlink import DownlinkHandler

CLOSE_S = 5.0  # how long `close` waits for the connection loop to end

log = logging.getLogger("koto.sync")

STABLE_SESSION_S = 10.0  # a session that lasted this long resets the reconnect backoff
TAKEOVER_LOG_S = 600.0  # a session taken over by a client with our id is logged at most once per this
TAKEOVER_WINDOW_S, TAKEOVER_SHORT = 60.0, 3  # this many sessions closed soon after they began, within this window


class AckSink(Protocol):
    """Where Sync hands a cloud ack: the ledger itself (one commit per ack) or gateway.ack_hold.AckHold."""

    def mark_acked(self, epoch: int, through: int, head_hash: str, *, at_wall: float | None = None) -> AckOutcome: ...


class SyncLedger(Protocol):
    """What Sync needs of metering.ledger.Ledger (quick SQLite reads and one write per ack)."""

    @property
    def epoch(self) -> int: ...

    def head(self) -> tuple[int, str]: ...

    def unacked(self, after_seq: int = 0, limit: int = 100) -> list[Stored]: ...

    def unacked_count(self) -> int: ...

    def acked_through(self) -> int: ...

    def mark_acked(self, epoch: int, through: int, head_hash: str, *, at_wall: float | None = None) -> AckOutcome: ...


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    gateway_id: str

    def _t(self, leaf: str) -> str:
        return f"{self.prefix}/{self.gateway_id}/{leaf}"

    @property
    def usage(self) -> str:
        return self._t("up/usage")

    @property
    def status(self) -> str:
        return self._t("up/status")

    @property
    def reply(self) -> str:
        return self._t("up/reply")

    @property
    def live(self) -> str:
        return self._t("up/live")

    @property
    def ack(self) -> str:
        return self._t("down/ack")

    @property
    def cmd(self) -> str:
        return self._t("down/cmd")


@dataclass(slots=True)
class SyncHealth:
    """What diagnostics and the birth show about the uplink. Counts only; nothing secret."""

    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    last_connect: str = ""
    last_ack: str = ""
    last_error: str = ""
    acked_through: int = 0
    sent_through: int = 0
    published: int = 0
    resends: int = 0
    ack_timeouts: int = 0
    acks_advanced: int = 0
    acks_already: int = 0
    stale_ack_resends: int = 0
    ack_mismatches: int = 0
    acks_ignored: int = 0
    commands: int = 0
    live_published: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _SessionLost(KotoError):
    """The connection ended; go round the reconnect loop."""


class Sync:
    """The uplink task. Use as `async with Sync(...) as sync:` (runs `run()` in a task) or await `run()` yourself."""

    def __init__(self, config: SyncConfig, ledger: SyncLedger, *, clock: Clock,
                 downlink: DownlinkHandler | None = None, version: str = "",
                 status: Callable[[], dict[str, Any]] | None = None, acks: AckSink | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.acks: AckSink = acks if acks is not None else ledger
        self.clock = clock
        self.downlink = downlink
        self.version = version
        self._status_extra = status
        self.topics = Topics(config.topic_prefix, config.gateway_id)
        self.health = SyncHealth()
        self._wake = asyncio.Event()
        self._live_event = asyncio.Event()
        self._live: dict[str, Any] | None = None
        self._last_live = -1e18
        self._task: asyncio.Task[None] | None = None
        self._ssl = None
        if config.url.tls:
            self._ssl = tls_context(config.ca, config.cert, config.key)
        self._sent_through = 0
        self._ack_wait_since: float | None = None
        self._resend_at: float | None = None  # set by a stale ack: resend then unless an ack advances first
        self._say_ack = True  # log the next advancing ack (first of a session, first after a timeout)
        self._acked_event = asyncio.Event()
        self._takeover_logged_at = -1e18
        self._short_sessions: list[float] = []  # when recent sessions that lasted < STABLE_SESSION_S ended
        if downlink is not None:
            downlink.add_report_section("sync", self.health_report)

    # -- what the rest of the gateway calls --------------------------------------------------------------------

    def notify(self) -> None:
        """New records were appended: wake the pump (cheap; call after every ledger append)."""
        self._wake.set()

    def offer_live(self, appliances: dict[str, dict[str, Any]]) -> None:
        """Latest live view ({appliance: {"power_mw": int, "function": str}}); only the newest one is kept."""
        if self.config.live_interval_s <= 0:
            return
        self._live = appliances
        self._live_event.set()

    def health_report(self) -> dict[str, Any]:
        """A redacted snapshot for diagnostics: counts and times, never keys, certificates or payloads."""
        h = asdict(self.health)
        h.update(h.pop("extra", {}))
        h["connected"] = int(self.health.connected)
        with contextlib.suppress(Exception):
            h["unacked"] = self.ledger.unacked_count()
            h["acked_through"] = self.ledger.acked_through()
        h["broker"] = f"{self.config.url.host}:{self.config.url.port}"
        h["protocol"] = self.config.protocol
        h["window"] = self.config.window
        return h

    async def wait_acked(self, seq: int) -> None:
        """Return once the ledger's acked_through reaches `seq` (tests, benches and graceful shutdown)."""
        while self.ledger.acked_through() < seq:
            self._acked_event.clear()
            if self.ledger.acked_through() >= seq:
                return
            await self._acked_event.wait()

    async def __aenter__(self) -> Sync:
        self._task = asyncio.create_task(self.run(), name="koto-sync")
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the connection loop. A cancel can be swallowed inside the MQTT client's connect or disconnect (seen
        under load), so it is repeated, and after CLOSE_S a loop that still runs is left behind with a warning:
        closing must never hang the gateway's stop."""
        task, self._task = self._task, None
        if task is None:
            return
        for _ in range(int(CLOSE_S / 0.5)):
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=0.5)
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
                return
        log.warning("the cloud connection did not close within %g s; leaving it behind", CLOSE_S)

    # -- the connection loop -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain, listen; on any loss wait a capped jittered backoff and go again. Runs until cancelled."""
        import aiomqtt

        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_cap_s)
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            client = make_client(
                url=self.config.url, client_id=self.config.gateway_id, protocol=self.config.protocol,
                keepalive=self.config.keepalive_s, ssl_context=self._ssl, will_topic=self.topics.status,
                will_payload=self._will_payload(), max_inflight=self.config.window,
            )
            connected_at: float | None = None
            try:
                async with client:
                    connected_at = loop.time()
                    self.health.connected = True
                    self.health.connects += 1
                    self.health.last_connect = rfc3339(self.clock.now().wall)
                    if failures:
                        log.info("connected to %s again after %d failed attempt(s)", self.config.broker, failures)
                    try:
                        await self._session(client)
                    finally:
                        self.health.connected = False
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.health.connected = False
                self.health.last_error = f"{type(e).__name__}: {e}"[:200]
                # A session that lasted resets the backoff; one dropped at once (a duplicate client id taking
                # over, an ACL refusal) keeps backing off instead of spinning.
                if connected_at is not None and loop.time() - connected_at > STABLE_SESSION_S:
                    backoff.reset()
                    failures = 0
                if connected_at is not None:
                    self.health.disconnects += 1
                if disconnect_reason(e) == SESSION_TAKEN_OVER:
                    self._session_taken_over(None)
                elif isinstance(e, aiomqtt.MqttError | _SessionLost | OSError):
                    if connected_at is not None and self._dropped_soon(loop.time() - connected_at, loop.time()):
                        self._session_taken_over(len(self._short_sessions))
                    if failures == 0:
                        log.warning("cloud connection to %s lost or refused: %s; retrying with backoff (<= %.1f s)",
                                    self.config.broker, e, self.config.backoff_cap_s)
                    else:
                        log.debug("reconnect attempt %d failed: %s", failures, e)
                else:  # e.g. the ledger failed under us: say so loudly, keep the uplink alive
                    self.health.extra["internal_errors"] = self.health.extra.get("internal_errors", 0) + 1
                    log.error("sync session failed (%s: %s); starting a new session after backoff",
                              type(e).__name__, e)
                failures += 1
            await asyncio.sleep(backoff.next())

    def _dropped_soon(self, lasted_s: float, now: float) -> bool:
        """Whether sessions keep being closed right after the broker accepted them: TAKEOVER_SHORT of them within
        TAKEOVER_WINDOW_S, each shorter than STABLE_SESSION_S. Mosquitto 2.0.11 (Debian 12) closes a session taken
        over without the MQTT 5 reason code, so this pattern is the only sign a gateway gets from it."""
        if lasted_s >= STABLE_SESSION_S:
            return False
        self._short_sessions = [t for t in self._short_sessions if now - t < TAKEOVER_WINDOW_S] + [now]
        return len(self._short_sessions) >= TAKEOVER_SHORT

    def _session_taken_over(self, short_sessions: int | None) -> None:
        """Say in plain words that another client is using our id, at most once per TAKEOVER_LOG_S.

        `short_sessions` None: the broker said so (MQTT 5 reason 142); a number: it is inferred from that many
        sessions closed right after they began."""
        n = self.health.extra["session_takeovers"] = self.health.extra.get("session_takeovers", 0) + 1
        now = asyncio.get_running_loop().time()
        if now - self._takeover_logged_at < TAKEOVER_LOG_S:
            return
        self._takeover_logged_at = now
        gw = self.config.gateway_id
        if short_sessions is None:
            log.warning("cloud: the broker closed our session because another client connected with our id (%s); "
                        "check for a cloned SD card or a leaked certificate (%d time(s) since start)", gw, n)
        else:
            log.warning("cloud: the broker closed our session %d times within %d s right after accepting it; another "
                        "client is probably connecting with our id (%s); check for a cloned SD card or a leaked "
                        "certificate", short_sessions, int(TAKEOVER_WINDOW_S), gw)

    async def _session(self, client: aiomqtt.Client) -> None:
        self._sent_through = self.ledger.acked_through()
        self._ack_wait_since = None
        self._resend_at = None
        self._say_ack = True  # the first ack of each session says how far the cloud has us
        await client.subscribe([(self.topics.ack, 1), (self.topics.cmd, 1)])
        await self._publish_birth(client)
        outbox = Outbox(client, window=self.config.window)
        tasks = [
            asyncio.create_task(self._reader(client), name="koto-sync-reader"),
            asyncio.create_task(self._pump(outbox), name="koto-sync-pump"),
            asyncio.create_task(self._live_loop(client), name="koto-sync-live"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
            raise _SessionLost("session ended")
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._publish_offline(client), timeout=1.0)
            raise
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await outbox.aclose()

    def _will_payload(self) -> bytes:
        return json.dumps({"online": False, "gateway": self.config.gateway_id}, separators=(",", ":")).encode()

    def birth(self) -> dict[str, Any]:
        now = self.clock.now()
        head_seq, _ = self.ledger.head()
        b: dict[str, Any] = {
            "online": True, "gateway": self.config.gateway_id, "version": self.version, "boot_id": now.boot_id,
            "epoch": self.ledger.epoch, "last_seq": head_seq, "unacked": self.ledger.unacked_count(),
            "tariff_version": 0, "last_dseq": "", "clock_synced": now.synced, "time": rfc3339(now.wall),
        }
        if self.downlink is not None:
            b["tariff_version"] = self.downlink.tariff_version()
            b["last_dseq"] = self.downlink.last_dseq_text()
        return b

    def _props(self, factory: Callable[[], Any]) -> Any:
        return factory() if self.config.protocol == 5 else None

    async def _publish_birth(self, client: aiomqtt.Client) -> None:
        payload = json.dumps(self.birth(), sort_keys=True, separators=(",", ":")).encode()
        await client.publish(self.topics.status, payload, qos=1, retain=True, properties=self._props(json_properties))

    async def _publish_offline(self, client: aiomqtt.Client) -> None:
        """A clean disconnect does not fire the Will, so say goodbye explicitly on shutdown."""
        await client.publish(self.topics.status, self._will_payload(), qos=1, retain=True,
                             properties=self._props(json_properties))

    # -- uplink pump -------------------------------------------------------------------------------------------

    async def _pump(self, outbox: Outbox) -> None:
        loop = asyncio.get_running_loop()
        props = self._props(cloudevents_properties)
        cfg = self.config
        while True:
            self._wake.clear()
            acked = self.ledger.acked_through()
            self.health.acked_through = acked
            if self._sent_through < acked:
                self._sent_through = acked
            outstanding = self._sent_through - acked
            now = loop.time()
            deadline = self._deadline()
            if outstanding > 0 and deadline is not None and now >= deadline:
                if self._resend_at is not None and now >= self._resend_at:
                    self.health.stale_ack_resends += 1
                    log.info("the cloud holds only through seq %d and %d later record(s) are not arriving; "
                             "resending from seq %d", acked, outstanding, acked + 1)
                else:
                    self.health.ack_timeouts += 1
                    log.warning("no cloud ack for %.0f s with %d record(s) outstanding; resending from seq %d",
                                now - (self._ack_wait_since or now), outstanding, acked + 1)
                    self._say_ack = True
                self.health.resends += outstanding
                self._sent_through = acked
                self._ack_wait_since = now
                self._resend_at = None
                outstanding = 0
            room = cfg.window - outstanding
            if room > 0:
                batch = self.ledger.unacked(after_seq=self._sent_through, limit=min(room, cfg.batch))
                if batch:
                    if outstanding == 0 or self._ack_wait_since is None:
                        self._ack_wait_since = now
                    for rec in batch:
                        outbox.publish(self.topics.usage, rec.body, 1, props)
                        self._sent_through = rec.seq
                    self.health.published += len(batch)
                    self.health.sent_through = self._sent_through
                    await asyncio.sleep(0)  # let the socket writer and the reader run between batches
                    continue
            deadline = self._deadline()
            if outstanding == 0 or deadline is None:
                self._ack_wait_since = self._resend_at = None
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, deadline - loop.time() + 0.01))

    def _deadline(self) -> float | None:
        """When outstanding records are resent: the ack timeout, or sooner after a stale ack (see _on_ack)."""
        if self._ack_wait_since is None:
            return None
        deadline = self._ack_wait_since + self.config.ack_timeout_s
        return deadline if self._resend_at is None else min(deadline, self._resend_at)

    # -- downlink reader ---------------------------------------------------------------------------------------

    async def _reader(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            if topic == self.topics.ack:
                self._on_ack(bytes(payload))
            elif topic == self.topics.cmd:
                await self._on_command(client, bytes(payload))
            else:
                log.debug("ignoring message on %s", topic)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
            epoch, through, head_hash = ack["epoch"], ack["acked_through"], ack["head_hash"]
            if (not isinstance(epoch, int) or isinstance(epoch, bool) or not isinstance(through, int)
                    or isinstance(through, bool) or not isinstance(head_hash, str)):
                raise TypeError("epoch and acked_through must be integers, head_hash a string")
        except (ValueError, KeyError, TypeError) as e:
            self.health.acks_ignored += 1
            log.warning("ignoring a malformed cloud ack (%s): %r", e, payload[:120])
            return
        now_wall = self.clock.now().wall
        outcome = (self.acks.mark_acked(epoch, through, head_hash, at_wall=now_wall) if through > 0
                   else AckOutcome.ALREADY)
        match outcome:
            case AckOutcome.ADVANCED:
                self.health.acks_advanced += 1
                self.health.last_ack = rfc3339(now_wall)
                self.health.acked_through = through
                if self._say_ack:
                    self._say_ack = False
                    backlog = self.ledger.head()[0] - through
                    log.info("cloud acked through seq %d (%d record(s) still to send)", through, backlog,
                             extra={"seq": through})
                self._ack_wait_since = asyncio.get_running_loop().time() if self._sent_through > through else None
                self._resend_at = None
                self._acked_event.set()
                self._wake.set()
            case AckOutcome.ALREADY:
                self.health.acks_already += 1
                # A receiver states what it holds (on our birth, after its own reconnect, or after a commit
                # elsewhere in the group). If that is exactly our acked point and nothing advances for
                # `stale_ack_resend_s`, what we sent beyond it was lost (e.g. a broker restart drops
                # shared-subscription messages queued for an absent receiver): resend then, instead of waiting out
                # the full ack timeout.
                if epoch == self.ledger.epoch and through == self.ledger.acked_through() \
                        and self._sent_through > through and self._resend_at is None:
                    self._resend_at = asyncio.get_running_loop().time() + self.config.stale_ack_resend_s
                    self._wake.set()
            case AckOutcome.MISMATCH | AckOutcome.BEYOND_HEAD:
                self.health.ack_mismatches += 1
                log.error("ALARM: cloud ack for epoch %d through seq %d does not match our ledger (%s); "
                          "nothing pruned", epoch, through, outcome.value)
            case AckOutcome.WRONG_EPOCH:
                self.health.acks_ignored += 1
                log.warning("ignoring a cloud ack for epoch %d (ours is %d)", epoch, self.ledger.epoch)

    async def _on_command(self, client: aiomqtt.Client, payload: bytes) -> None:
        self.health.commands += 1
        if self.downlink is None:
            reply = {"ack_of": "", "status": "rejected",
                     "reason": "this gateway accepts no commands (no operator keys)", "dseq": "",
                     "gateway": self.config.gateway_id, "time": rfc3339(self.clock.now().wall)}
            log.warning("downlink command rejected: no operator keys are configured")
        else:
            reply = self.downlink.handle(payload)
            if reply.get("status") == "applied":
                self.notify()  # the lifecycle record is in the ledger; send it
        data = json.dumps(reply, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        await client.publish(self.topics.reply, data, qos=1, properties=self._props(json_properties))

    # -- live view ---------------------------------------------------------------------------------------------

    async def _live_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._live_event.wait()
            wait = self._last_live + self.config.live_interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._live_event.clear()
            live = self._live
            if live is None:
                continue
            self._live = None
            body = {"t": rfc3339(self.clock.now().wall), "appliances": live}
            self._last_live = loop.time()
            await client.publish(self.topics.live, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
                                 qos=0, properties=self._props(json_properties))
            self.health.live_published += 1
