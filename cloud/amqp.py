"""The receiver's transport on a RabbitMQ cluster: AMQP 0-9-1 (aio-pika) to the queues of cloud/routing.py.

    transport = AmqpTransport(["amqp://rx:pw@mq1/", "amqp://rx:pw@mq2/"], Topology(shards=4), instance=0, instances=2)
    rx = Receiver(store, ReceiverConfig(broker="mqtt://unused"), transport=transport)

It gives the receiver (cloud/receiver.py) what cloud/mqtt.py's `Connection` gives it, `receive()` and `publish()`,
plus `settle()`: the receiver settles a message once it is done with it, a usage record only after the database
commit that stored it. Settling is cumulative, like the contract's own acks: the broker is acked (basic.ack with
`multiple`) up to the oldest delivery not yet settled, so one frame per commit acks a whole batch, and nothing is
acked over a record still waiting for its commit. A receiver that dies leaves its unacked deliveries to the broker,
which gives them to the next receiver of that shard; they are stored again as no-ops (the store is idempotent).

The acks for gateways are published to `amq.topic` with routing key `koto.v1.{gw}.down.ack`, which the MQTT plugin
delivers to the gateway's `koto/v1/{gw}/down/ack` subscription, on a channel with publisher confirms: a confirm that
does not come is logged and the ack is re-sent by the next commit or birth, as on MQTT. They go out in rounds:
while one round awaits its confirms, the acks of later commits collapse into the newest per gateway.

Each connection tries the given URLs in turn, starting after the one used last, so a receiver whose node died
connects to a live one (the receiver's own loop reconnects with backoff on `BrokerError`). aio-pika is imported
only here and only when a transport connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from .mqtt import BrokerError, Message
from .routing import AMQ_TOPIC, Topology, key_to_topic, topic_to_key

log = logging.getLogger("koto.cloud.amqp")


class AmqpTransport:
    """What the receiver connects through: URLs of the cluster's nodes, the topology, and which shards come first.

    Receiver `instance` of `instances` consumes its preferred shards at once and every other shard
    `standby_after_s` later, as a standby consumer: with single-active-consumer queues, a shard's first consumer
    reads it, and the next one takes over when it goes. `prefetch` is how many unacked deliveries each shard may
    have in flight to this receiver (it bounds what a dead receiver leaves to be redelivered).
    """

    def __init__(self, urls: Sequence[str], topology: Topology | None = None, *, instance: int = 0,
                 instances: int = 1, prefetch: int = 1000, standby_after_s: float = 2.0,
                 timeout: float = 10.0) -> None:
        if not urls:
            raise ValueError("give at least one amqp:// URL")
        if not 0 <= instance < instances:
            raise ValueError(f"instance {instance} is not in 0..{instances - 1}")
        self.urls = list(urls)
        self.topology = topology or Topology()
        self.instance = instance
        self.instances = instances
        self.prefetch = prefetch
        self.standby_after_s = standby_after_s
        self.timeout = timeout
        self._next = instance % len(self.urls)  # spread receivers over the nodes

    @property
    def name(self) -> str:
        return f"AMQP {', '.join(_host(u) for u in self.urls)}"

    def connect(self) -> AmqpLink:
        order = self.urls[self._next:] + self.urls[:self._next]
        self._next = (self._next + 1) % len(self.urls)
        return AmqpLink(self, order)


def _really_cancelled() -> bool:
    """Whether the current task is being cancelled (rather than a library cancelling a call it gave up on)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("@", 1)[-1].rstrip("/")


class AmqpLink:
    """One AMQP connection: a consuming channel (prefetch per consumer) and a publishing channel with confirms."""

    def __init__(self, transport: AmqpTransport, urls: list[str]) -> None:
        self.t = transport
        self.urls = urls
        self.name = _host(urls[0])
        self._conn: Any = None
        self._rx: Any = None  # consuming channel
        self._tx: Any = None  # publishing channel (publisher confirms)
        self._topic: Any = None  # amq.topic on the publishing channel
        self._loop = asyncio.get_running_loop()
        self._inbox: list[Message] = []
        self._wake = asyncio.Event()
        self._lost: BrokerError | None = None
        self._outstanding: deque[int] = deque()  # delivery tags handed to the receiver and not yet settled, in order
        self._settled: set[int] = set()
        self._ack_to = 0  # the broker has been (or is being) acked through this tag
        self._acked = 0
        self._ack_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._consumed: set[str] = set()
        self._acks: dict[str, bytes] = {}  # routing key -> the newest ack not yet handed to the broker
        self._acks_wake = asyncio.Event()

    # -- connecting ----------------------------------------------------------------------------------------
    async def __aenter__(self) -> AmqpLink:
        import aio_pika

        errors = []
        for url in self.urls:
            try:
                self._conn = await aio_pika.connect(url, timeout=self.t.timeout)
                self.name = _host(url)
                break
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as e:
                errors.append(f"{_host(url)}: {type(e).__name__}: {e}")
        if self._conn is None:
            raise BrokerError(", ".join(_host(u) for u in self.urls), "cannot connect to any node (" +
                              "; ".join(errors) + ")")
        try:
            self._conn.close_callbacks.add(self._on_close)
            self._rx = await self._conn.channel(publisher_confirms=False)
            self._rx.close_callbacks.add(self._on_close)
            await self._rx.set_qos(prefetch_count=self.t.prefetch)
            self._tx = await self._conn.channel(publisher_confirms=True)
            self._tx.close_callbacks.add(self._on_close)
            self._topic = await self._tx.get_exchange(AMQ_TOPIC, ensure=False)
            await self._declare()
            await self._consume(self.t.topology.control_queue)
            preferred = self.t.topology.preferred(self.t.instance, self.t.instances)
            for i in preferred:
                await self._consume(self.t.topology.shard_queue(i))
            self._spawn(self._standby([i for i in range(self.t.topology.shards) if i not in preferred]))
            self._spawn(self._acker())
            self._spawn(self._ack_publisher())
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as e:
            await self._close()
            raise BrokerError(self.name, f"cannot set up the queues: {type(e).__name__}: {e}") from e
        except asyncio.CancelledError:
            await self._close()
            if _really_cancelled():
                raise
            # aiormq cancels the calls waiting on a connection that closes under them: that is a broker loss.
            raise BrokerError(self.name, "the connection closed while setting up the queues") from None
        except BaseException:
            await self._close()
            raise
        log.info("consuming shards %s of %s on %s", preferred, self.t.topology.usage_exchange, self.name)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._close()

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._conn is not None and not self._conn.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._conn.close()
        self._lose(BrokerError(self.name, "the connection is closed"))

    async def _declare(self) -> None:
        """Declare the topology (idempotent: the same arguments every time; a mismatch is a broker error)."""
        import aio_pika

        top = self.t.topology
        ch = self._rx
        amq_topic = await ch.get_exchange(AMQ_TOPIC, ensure=False)
        usage = await ch.declare_exchange(top.usage_exchange, aio_pika.ExchangeType.X_CONSISTENT_HASH, durable=True)
        await usage.bind(amq_topic, routing_key=top.uplink_key("usage"))
        await ch.declare_queue(top.dead_queue, durable=True, arguments={"x-queue-type": "quorum"})
        for name in top.shard_queues:
            q = await ch.declare_queue(name, durable=True, arguments=top.shard_arguments())
            await q.bind(usage, routing_key="1")
        control = await ch.declare_queue(top.control_queue, durable=True, arguments=top.control_arguments())
        for kind in ("status", "reply"):
            await control.bind(amq_topic, routing_key=top.uplink_key(kind))

    async def _consume(self, name: str) -> None:
        # On aio-pika's underlying aiormq channel: aio-pika's IncomingMessage wrapper, built for every delivery, was
        # an eighth of the receiver's time in a profile of a drain; the receiver needs only the tag, key and body.
        channel = await self._rx.get_underlay_channel()
        await channel.basic_consume(name, self._on_message, no_ack=False, timeout=self.t.timeout)
        self._consumed.add(name)

    async def _standby(self, shards: list[int]) -> None:
        await asyncio.sleep(self.t.standby_after_s)
        for i in shards:
            try:
                await self._consume(self.t.topology.shard_queue(i))
            except asyncio.CancelledError:
                if _really_cancelled():
                    raise
                self._lose(BrokerError(self.name, f"the connection closed while consuming shard {i}"))
                return
            except Exception as e:  # the connection went meanwhile: the receiver reconnects
                self._lose(BrokerError(self.name, f"cannot consume shard {i}: {e}"))
                return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the receiver uses ----------------------------------------------------------------------------
    async def receive(self) -> list[Message]:
        """Every delivery since the last call, oldest first; BrokerError once the connection is lost and drained."""
        while not self._inbox:
            if self._lost is not None:
                raise self._lost
            self._wake.clear()
            await self._wake.wait()
        batch, self._inbox = self._inbox, []
        return batch

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
                content_type: str | None = None) -> None:
        """Queue a gateway's ack for amq.topic (the MQTT plugin delivers it on `topic`); a publisher task sends it.

        Acks are cumulative, so a newer ack for a topic replaces one not yet sent: while the previous round of
        publishes awaits its confirms, the acks of the commits made meanwhile collapse into one per gateway. The
        receiver publishes nothing else through a link.
        """
        if self._lost is not None:
            raise self._lost
        self._acks[topic_to_key(topic)] = payload
        self._acks_wake.set()

    async def _ack_publisher(self) -> None:
        """Send the queued acks, one round at a time, each round's confirms awaited before the next."""
        while True:
            await self._acks_wake.wait()
            self._acks_wake.clear()
            pending, self._acks = self._acks, {}
            await asyncio.gather(*(self._publish(key, payload) for key, payload in pending.items()))

    async def _publish(self, key: str, payload: bytes) -> None:
        import aio_pika

        msg = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        try:
            async with asyncio.timeout(self.t.timeout):
                await self._topic.publish(msg, routing_key=key)
        except Exception as e:  # no confirm: the gateway gets the ack again on the next commit or its next birth
            log.warning("ack on %s not confirmed by %s (%s); it is re-sent with the next one", key, self.name, e)

    def settle(self, tags: Sequence[int]) -> None:
        """The receiver is done with these deliveries; ack the broker through the oldest one still open."""
        self._settled.update(tags)
        out = self._outstanding
        top = 0
        while out and out[0] in self._settled:
            top = out.popleft()
            self._settled.discard(top)
        if top > self._ack_to:
            self._ack_to = top
            self._ack_wake.set()

    @property
    def settled_through(self) -> int:
        """The highest delivery tag that is settled along with every tag before it (what the broker gets acked)."""
        return self._ack_to

    async def _acker(self) -> None:
        """One basic.ack(multiple) per wake-up, in increasing tag order (never a tag twice: that closes the channel)."""
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            to = self._ack_to
            if to <= self._acked:
                continue
            try:
                await (await self._rx.get_underlay_channel()).basic_ack(to, multiple=True)
            except Exception as e:
                self._lose(BrokerError(self.name, f"cannot ack deliveries: {e}"))
                return
            self._acked = to

    # -- callbacks -----------------------------------------------------------------------------------------
    async def _on_message(self, message: Any) -> None:
        delivery = message.delivery  # an aiormq DeliveredMessage: the Basic.Deliver frame and the body
        tag = int(delivery.delivery_tag)
        self._outstanding.append(tag)
        self._inbox.append(Message(key_to_topic(delivery.routing_key or ""), message.body, tag))
        if len(self._inbox) == 1:
            self._wake.set()

    def _on_close(self, sender: Any, exc: BaseException | None = None, *args: Any) -> None:
        self._lose(BrokerError(self.name, f"connection lost ({exc or 'closed'})"))

    def _lose(self, error: BrokerError) -> None:
        if self._lost is None:
            self._lost = error
            self._wake.set()


__all__ = ["AmqpLink", "AmqpTransport"]
