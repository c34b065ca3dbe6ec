"""The reference cloud's MQTT connection: paho-mqtt's public external-event-loop API on asyncio, in this one module.

The receiver (`cloud/receiver.py`) and the command sender (`cloud/commands.py`) connect through `Connection`. The
gateway keeps aiomqtt 2.x (gateway/sync.py): its publish rate is far below the receiver's read rate, and aiomqtt's
public API carries it. paho is imported only inside functions.

Why not aiomqtt, which Koto used before. aiomqtt 2.x (the range pyproject allowed; its `client.py` was read for this
decision) wraps this same paho client, and cannot do three things at the speed Koto needs them without reaching into
that wrapping, which is what the code did (`client._queue`, `client._client.publish`):

1. Reading in bulk. `async for message in client.messages` creates a task and an `asyncio.wait` for every message,
   which cost as much as shape-checking it at the receiver. Here paho's `on_message` appends each message to an
   inbox that `receive()` empties in one go, with no task or future per message.
2. Publishing QoS 1 without awaiting the PUBACK. aiomqtt's `publish` always awaits it, and scans every pending call
   each time to log how many there are. The usage stream and the receiver's acks need no PUBACK (the cloud's
   application-level ack, and the next ack, are what count). Going through aiomqtt's public `publish` anyway, a task
   per record, took the sync bench's drain from 0.47-0.77x raw publish to 0.32-0.42x (docs/sync.md). Here
   `publish()` hands the message to paho and returns; `deliver()` awaits the PUBACK where it matters.
3. The upgrade. aiomqtt 3 drops paho, MQTT 3.1.1 (which the contract requires gateways to support, and the receiver's
   default, because paho's MQTT 5 handling of every incoming message cost about a quarter of its throughput) and
   socket options (TCP_NODELAY, worth ~40 ms per round trip here), so Koto could not have followed it anyway.

paho's external-loop API (`socket()`, `loop_read()`, `loop_write()`, `loop_misc()`, the `on_socket_*` callbacks) is
documented, stable since paho 1.x, and what aiomqtt 2 is itself built on. Nothing else in Koto imports paho, and
nothing here uses a name paho does not document.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from koto.errors import KotoError
from koto.net import BrokerURL, tls_context

if TYPE_CHECKING:
    import paho.mqtt.client as paho


class BrokerError(KotoError, ConnectionError):
    """The broker cannot be reached, refused the connection or a subscription, or the connection was lost.

    `broker` is `host:port`; `problem` says what happened in plain words. Callers reconnect after it.
    """

    def __init__(self, broker: str, problem: str) -> None:
        self.broker = broker
        self.problem = problem
        super().__init__(f"broker {broker}: {problem}")


class PublishRefused(BrokerError):
    """The broker answered a publish with a failure reason (MQTT 5 PUBACK, e.g. 135 Not authorized by its ACL): it
    did not take the message. `reason` is the broker's reason in words."""

    def __init__(self, broker: str, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(broker, f"the broker refused the message to {topic} ({reason})")


TLS_HINT = ("the port may not speak TLS (check the URL: mqtts:// is TLS, usually port 8883; mqtt:// is plain, "
            "usually 1883)")
# How a TLS handshake with a port that does not speak TLS ends: a plain MQTT broker reads the ClientHello as a
# malformed packet and hangs up (a reset, an EOF), anything else answers bytes that are not TLS (an SSL error).
_HUNG_UP = (ssl.SSLError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError, EOFError)


def connect_problem(error: BaseException | None, *, tls: bool) -> str:
    """What a connection attempt that failed before the broker's CONNACK says (BrokerError's `problem`): `error`, or
    None when the connection closed without one; for a TLS URL whose handshake failed or whose peer hung up first,
    with TLS_HINT. Not for a certificate the client refused: that port does speak TLS."""
    problem = "the connection closed before the broker's CONNACK" if error is None else f"cannot connect: {error}"
    if tls and not isinstance(error, ssl.SSLCertVerificationError) and (error is None or isinstance(error, _HUNG_UP)):
        problem += f"; {TLS_HINT}"
    return problem


class Message(NamedTuple):
    topic: str
    payload: bytes
    tag: int = 0  # a transport's delivery id for settle() (cloud/transport.py); MQTT needs none


@dataclass(frozen=True, slots=True)
class Will:
    """What the broker publishes for us if the connection is lost without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    content_type: str | None = None  # sent only under MQTT 5


class Connection:
    """One MQTT connection on the running event loop, used as `async with Connection(...) as conn:`.

    `subscribe()` awaits the SUBACK; `publish()` waits for nothing, `deliver()` for the PUBACK; `receive()` returns
    every message that has arrived since the last call (waiting for the first). A lost connection makes the next
    `receive()`, once the inbox is empty, raise `BrokerError`, as it does `publish()` and `deliver()`. Leaving the
    block waits (a few seconds at most) for the PUBACK of the last message published, then disconnects: closing a
    socket with the broker's PUBACKs still unread makes the kernel reset the connection, and the broker then drops
    what it had not read yet.

    `session_expiry_s` asks the broker to keep the session (subscriptions, queued QoS 1 messages) while the client
    is away: that long under MQTT 5, under 3.1.1 until the broker's `persistent_client_expiration`. None is a clean
    session. `max_inflight` is how many QoS 1 messages may await their PUBACK (paho queues the rest).
    """

    def __init__(self, url: BrokerURL, *, client_id: str | None = None, protocol: int = 5,
                 session_expiry_s: int | None = None, ssl_context: ssl.SSLContext | None = None,
                 keepalive: int = 30, timeout: float = 10.0, will: Will | None = None,
                 max_inflight: int | None = None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        if protocol not in (5, 311):
            raise ValueError(f"protocol {protocol} is not supported; use 5 or 311")
        self.url = url
        self.name = f"{url.host}:{url.port}"
        self._protocol = protocol
        self._session_expiry_s = session_expiry_s
        self._keepalive = keepalive
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._paho = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"koto-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311,
            clean_session=None if protocol == 5 else session_expiry_s is None, reconnect_on_failure=False,
        )
        if url.tls:
            self._paho.tls_set_context(ssl_context or tls_context())
        if will is not None:
            self._paho.will_set(will.topic, will.payload, will.qos, will.retain,
                                self._properties("WILLMESSAGE", will.content_type))
        if max_inflight is not None:
            self._paho.max_inflight_messages_set(max_inflight)
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_message = self._on_message
        self._paho.on_publish = self._on_publish
        self._paho.on_socket_open = self._on_socket_open
        self._paho.on_socket_close = self._on_socket_close
        self._paho.on_socket_register_write = self._on_socket_register_write
        self._paho.on_socket_unregister_write = self._on_socket_unregister_write
        self._connected: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[list[Any]]] = {}
        self._pubacks: dict[int, asyncio.Future[Any]] = {}  # only for deliver(): the PUBACK's reason code
        self._publish_props: dict[str, Any] = {}  # content type -> paho PUBLISH properties, built once
        self._inbox: list[Message] = []
        self._wake = asyncio.Event()
        self._last_mid: int | None = None  # of the last QoS 1 message published
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._misc: asyncio.Task[None] | None = None

    # -- the connection ----------------------------------------------------------------------------------------
    async def __aenter__(self) -> Connection:
        try:
            await self._loop.run_in_executor(None, self._connect)
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake failed (ssl.SSLError is an OSError)
            raise BrokerError(self.name, connect_problem(e, tls=self.url.tls)) from e
        try:
            async with asyncio.timeout(self._timeout):
                await self._connected
        except TimeoutError:
            self._close()
            raise BrokerError(self.name, f"no CONNACK within {self._timeout:g} s") from None
        except BrokerError:
            self._close()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if not self._lost.done():
                with contextlib.suppress(TimeoutError, BrokerError):
                    async with asyncio.timeout(min(self._timeout, 2.0)):
                        await self._all_acked.wait()
                        self._paho.disconnect()
                        await asyncio.shield(self._lost)
        finally:  # cancelled meanwhile or not, the socket is closed
            self._close()

    def _connect(self) -> None:
        """Open the socket and send CONNECT (blocking: DNS, TCP and the TLS handshake; runs in a worker thread)."""
        if self._protocol == 5:
            props = None
            if self._session_expiry_s is not None:
                props = self._properties("CONNECT")
                props.SessionExpiryInterval = self._session_expiry_s
            self._paho.connect(self.url.host, self.url.port, self._keepalive,
                               clean_start=self._session_expiry_s is None, properties=props)
        else:
            self._paho.connect(self.url.host, self.url.port, self._keepalive)
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):
            # Small messages and cumulative acks: without NODELAY, Nagle plus delayed ACKs add ~40 ms per hop (an
            # ack round trip measured 88 ms on loopback, 0.6 ms with it).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _close(self) -> None:
        """Forget the socket and the keepalive task; fail whatever still waits on this connection."""
        if self._misc is not None:
            self._misc.cancel()
        sock = self._paho.socket()
        if sock is not None:
            self._unwatch(sock)
            with contextlib.suppress(OSError):
                sock.close()
        self._lose(BrokerError(self.name, "the connection is closed"))
        if not self._connected.done():
            self._connected.set_exception(BrokerError(self.name, "the connection is closed"))
            self._connected.exception()  # retrieved: nobody else waits for it now

    def _fail_connect(self, error: BaseException | None) -> None:
        """Lost before the CONNACK: the connect fails now, saying why, instead of waiting out its timeout."""
        if not self._connected.done():
            self._connected.set_exception(BrokerError(self.name, connect_problem(error, tls=self.url.tls)))
            self._connected.exception()  # retrieved: __aenter__ may already have given up on it

    def _lose(self, error: BrokerError) -> None:
        if self._lost.done():
            return
        self._lost.set_exception(error)
        self._lost.exception()  # mark it retrieved: the loss is reported by receive(), publish() and deliver()
        waiting: list[asyncio.Future[Any]] = [*self._subacks.values(), *self._pubacks.values()]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()
        self._all_acked.set()  # nothing more will be acked
        self._wake.set()

    def check(self) -> None:
        """Raise `BrokerError` if the connection is lost."""
        if self._lost.done():
            raise self._lost.exception() or BrokerError(self.name, "disconnected")

    # -- what the callers use ----------------------------------------------------------------------------------
    async def subscribe(self, *topics: str, qos: int = 1) -> None:
        """Subscribe (one SUBSCRIBE for all `topics`) and wait for the SUBACK; a refusal raises BrokerError."""
        import paho.mqtt.client as paho

        self.check()
        rc, mid = self._paho.subscribe([(topic, qos) for topic in topics])
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(self.name, f"cannot subscribe to {', '.join(topics)} ({paho.error_string(rc)})")
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        self._subacks[mid] = fut
        try:
            async with asyncio.timeout(self._timeout):
                codes = await fut
        except TimeoutError:
            raise BrokerError(self.name, f"no SUBACK within {self._timeout:g} s") from None
        finally:
            self._subacks.pop(mid, None)
        refused = [t for t, code in zip(topics, codes, strict=False) if code.is_failure]
        if refused:
            raise BrokerError(self.name, f"the broker refused the subscription to {', '.join(refused)}")

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
                content_type: str | None = None) -> None:
        """Hand the message to the client's outgoing queue and return; the PUBACK is not waited for.

        `content_type` is sent as the MQTT 5 content type property (and left out under 3.1.1).
        """
        self._publish(topic, payload, qos, retain, content_type)

    async def deliver(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
                      content_type: str | None = None) -> None:
        """Publish and wait until the broker has it (the PUBACK; for QoS 0, until it is written). A PUBACK with a
        failure reason (MQTT 5: the broker did not take the message, e.g. its ACL denied it) raises PublishRefused;
        a reason that is not a failure (16, no matching subscribers) is the broker having it."""
        mid = self._publish(topic, payload, qos, retain, content_type)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pubacks[mid] = fut
        try:
            async with asyncio.timeout(self._timeout):
                reason = await fut
        except TimeoutError:
            raise BrokerError(self.name, f"no PUBACK for {topic!r} within {self._timeout:g} s") from None
        finally:
            self._pubacks.pop(mid, None)
        if getattr(reason, "is_failure", False):
            raise PublishRefused(self.name, topic, str(reason))

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool, content_type: str | None) -> int:
        import paho.mqtt.client as paho

        self.check()
        props = None
        if content_type is not None and self._protocol == 5:
            props = self._publish_props.get(content_type)
            if props is None:
                props = self._publish_props[content_type] = self._properties("PUBLISH", content_type)
        info = self._paho.publish(topic, payload, qos, retain, props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise BrokerError(self.name, f"cannot publish to {topic!r} ({paho.error_string(info.rc)})")
        if qos > 0:
            self._last_mid = info.mid
            self._all_acked.clear()
        return info.mid

    def _properties(self, packet: str, content_type: str | None = None) -> Any:
        """MQTT 5 properties of a packet type (None under 3.1.1), carrying a content type if one is given."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self._protocol != 5:
            return None
        props = Properties(getattr(PacketTypes, packet))  # type: ignore[no-untyped-call]
        if content_type is not None:
            props.ContentType = content_type
        return props

    def settle(self, tags: Sequence[int]) -> None:
        """Nothing to do on MQTT: the QoS 1 PUBACK went out when the message was read (cloud/transport.py)."""

    async def receive(self) -> list[Message]:
        """Every message received since the last call, oldest first; waits for one if there is none yet.

        Messages that arrived before the connection was lost are still returned; then BrokerError is raised.
        """
        while not self._inbox:
            self.check()
            self._wake.clear()
            await self._wake.wait()
        batch, self._inbox = self._inbox, []
        return batch

    # -- paho's callbacks (run on the event loop, from loop_read/loop_write; socket ones also from _connect) --
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._connected.done():
            return
        if reason.is_failure:
            self._connected.set_exception(BrokerError(self.name, f"the broker refused the connection ({reason})"))
        else:
            self._connected.set_result(None)
            self._misc = self._loop.create_task(self._keepalive_loop(), name="koto-mqtt-keepalive")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._fail_connect(None)
        self._lose(BrokerError(self.name, f"disconnected ({reason})"))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: list[Any], properties: Any) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if mid == self._last_mid:  # a broker acks one connection's messages in order: all are acked
            self._all_acked.set()
        if self._pubacks:
            fut = self._pubacks.get(mid)
            if fut is not None and not fut.done():
                fut.set_result(reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        payload = message.payload
        self._inbox.append(Message(message.topic, payload if type(payload) is bytes else bytes(payload)))
        if len(self._inbox) == 1:
            self._wake.set()

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.add_reader, sock.fileno(), self._readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._unwatch(sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.add_writer, sock.fileno(), self._writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.remove_writer, sock.fileno())

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call `fn` now on the loop's thread, or soon from `_connect`'s worker thread (koto.loop quietens the
        harmless race where the socket closes before a deferred `add_writer` runs)."""
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _unwatch(self, sock: Any) -> None:
        fd = sock.fileno()
        if fd >= 0:
            self._on_loop(self._loop.remove_reader, fd)
            self._on_loop(self._loop.remove_writer, fd)

    def _readable(self) -> None:
        try:
            self._paho.loop_read()
            sock = self._paho.socket()
            # An SSL socket may hold decoded bytes the selector cannot see: read until it holds none.
            while isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
                self._paho.loop_read()
                sock = self._paho.socket()
        except Exception as e:  # the connection broke under paho (a reset, a TLS error): this connection is over
            self._fail_connect(e)
            self._lose(BrokerError(self.name, f"connection lost ({type(e).__name__}: {e})"))

    def _writable(self) -> None:
        try:
            self._paho.loop_write()
        except Exception as e:
            self._fail_connect(e)
            self._lose(BrokerError(self.name, f"connection lost ({type(e).__name__}: {e})"))

    async def _keepalive_loop(self) -> None:
        """paho's timers: PINGREQ when idle, and the connection declared lost when no PINGRESP comes back."""
        import paho.mqtt.client as paho

        while self._paho.loop_misc() == paho.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - paho's timers are polled
            await asyncio.sleep(1.0)


__all__ = ["TLS_HINT", "BrokerError", "Connection", "Message", "PublishRefused", "Will", "connect_problem"]
