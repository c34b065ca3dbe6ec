"""The receiver's MQTT connection: paho-mqtt's public external-event-loop API on asyncio, in this one module.

Why not aiomqtt, which the gateway and the command sender use. aiomqtt 2.x (the range pyproject allows; its
`client.py` was read for this decision) wraps this same paho client, and cannot do two things the receiver needs at
the speed it needs them without reaching into that wrapping:

1. Reading in bulk. `async for message in client.messages` creates a task and an `asyncio.wait` for every message,
   which cost as much as shape-checking it; the receiver used to take queued messages from aiomqtt's private queue
   (`client._queue`) instead. Here paho's `on_message` appends each message to an inbox the receiver empties in
   one go (`receive()`), with no task or future per message.
2. Publishing an ack without awaiting its PUBACK. aiomqtt's `publish` awaits the PUBACK (and scans every pending
   call to log how many there are); awaiting it stalled reading for a broker round trip per commit, so the receiver
   used aiomqtt's private paho client (`client._client.publish`). The PUBACK says nothing the gateway's resend rules
   need: a lost ack is re-sent on the next commit or birth. Here `publish()` hands the message to paho and returns.

aiomqtt 3 does not help either: it drops paho, MQTT 3.1.1 (the receiver's default, because paho's MQTT 5 handling
of every incoming message cost about a quarter of its throughput, docs/sync.md) and socket options (TCP_NODELAY,
worth ~40 ms per round trip here). paho's external-loop API (`socket()`, `loop_read()`, `loop_write()`,
`loop_misc()`, the `on_socket_*` callbacks) is documented, stable since paho 1.x, and what aiomqtt 2 is built on.
Nothing outside this module imports paho in `cloud/`; nothing here uses a name paho does not document.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from koto.net import BrokerURL, tls_context

from .errors import BrokerError

if TYPE_CHECKING:
    import paho.mqtt.client as paho

log = logging.getLogger("koto.cloud.mqtt")
PERSISTENT_SESSION_S = 24 * 3600  # MQTT 5 session expiry of a receiver with a fixed client id


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes


class Connection:
    """One MQTT connection on the running event loop, used as `async with Connection(...) as conn:`.

    `subscribe()` awaits the SUBACK; `publish()` does not wait for anything; `receive()` returns every message that
    has arrived since the last call (waiting for the first). A lost connection makes the next `receive()`, once the
    inbox is empty, raise `BrokerError`, as does `publish()`. Leaving the block waits (a few seconds at most) for the
    PUBACK of the last message published, then disconnects: closing a socket with the broker's PUBACKs still unread
    makes the kernel reset the connection, and the broker then drops what it had not read yet.
    `persistent` asks the broker to keep the session (and queue QoS 1 messages) while the client is away: a day
    under MQTT 5, under 3.1.1 until the broker's `persistent_client_expiration`.
    """

    def __init__(self, url: BrokerURL, *, client_id: str | None = None, protocol: int = 311,
                 persistent: bool = False, ssl_context: ssl.SSLContext | None = None, keepalive: int = 30,
                 timeout: float = 10.0) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        if protocol not in (5, 311):
            raise ValueError(f"protocol {protocol} is not supported; use 5 or 311")
        self.url = url
        self.name = f"{url.host}:{url.port}"
        self._protocol = protocol
        self._persistent = persistent
        self._keepalive = keepalive
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._paho = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"koto-cloud-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311,
            clean_session=None if protocol == 5 else not persistent, reconnect_on_failure=False,
        )
        if url.tls:
            self._paho.tls_set_context(ssl_context or tls_context())
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
        self._inbox: list[Message] = []
        self._last_mid: int | None = None  # of the last QoS 1 message published
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._wake = asyncio.Event()
        self._misc: asyncio.Task[None] | None = None

    # -- the connection ----------------------------------------------------------------------------------------
    async def __aenter__(self) -> Connection:
        try:
            await self._loop.run_in_executor(None, self._connect)
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake failed (ssl.SSLError is an OSError)
            raise BrokerError(self.name, f"cannot connect: {e}") from e
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
        if not self._lost.done():
            with contextlib.suppress(TimeoutError, BrokerError):
                async with asyncio.timeout(min(self._timeout, 2.0)):
                    await self._all_acked.wait()
                    self._paho.disconnect()
                    await asyncio.shield(self._lost)
        self._close()

    def _connect(self) -> None:
        """Open the socket and send CONNECT (blocking: DNS, TCP and the TLS handshake; runs in a worker thread)."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self._protocol == 5:
            props = None
            if self._persistent:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = PERSISTENT_SESSION_S
            self._paho.connect(self.url.host, self.url.port, self._keepalive, clean_start=not self._persistent,
                               properties=props)
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

    def _lose(self, error: BrokerError) -> None:
        if self._lost.done():
            return
        self._lost.set_exception(error)
        self._lost.exception()  # mark it retrieved: the loss is reported by receive() and publish()
        self._all_acked.set()  # nothing more will be acked
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(error)
        self._wake.set()

    def check(self) -> None:
        """Raise `BrokerError` if the connection is lost."""
        if self._lost.done():
            raise self._lost.exception() or BrokerError(self.name, "disconnected")

    # -- what the receiver calls -------------------------------------------------------------------------------
    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK; a refused subscription (reason >= 0x80) raises BrokerError."""
        import paho.mqtt.client as paho

        self.check()
        rc, mid = self._paho.subscribe(topic, qos)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(self.name, f"cannot subscribe to {topic!r} ({paho.error_string(rc)})")
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        self._subacks[mid] = fut
        try:
            async with asyncio.timeout(self._timeout):
                codes = await fut
        except TimeoutError:
            raise BrokerError(self.name, f"no SUBACK for {topic!r} within {self._timeout:g} s") from None
        finally:
            self._subacks.pop(mid, None)
        if any(code.is_failure for code in codes):
            raise BrokerError(self.name, f"the broker refused the subscription to {topic!r} ({codes[0]})")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Hand the message to the client's outgoing queue and return; the PUBACK is not waited for."""
        import paho.mqtt.client as paho

        self.check()
        info = self._paho.publish(topic, payload, qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise BrokerError(self.name, f"cannot publish to {topic!r} ({paho.error_string(info.rc)})")
        if qos > 0:
            self._last_mid = info.mid
            self._all_acked.clear()

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
        self._lose(BrokerError(self.name, f"disconnected ({reason})"))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: list[Any], properties: Any) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        payload = message.payload
        self._inbox.append(Message(message.topic, payload if type(payload) is bytes else bytes(payload)))
        if len(self._inbox) == 1:
            self._wake.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if mid == self._last_mid:  # a broker acks one connection's messages in order: all are acked
            self._all_acked.set()

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.add_reader, sock.fileno(), self._readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._unwatch(sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.add_writer, sock.fileno(), self._writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._loop.remove_writer, sock.fileno())

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call `fn` now on the loop's thread, or soon from `_connect`'s worker thread."""
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
            self._lose(BrokerError(self.name, f"connection lost ({type(e).__name__}: {e})"))

    def _writable(self) -> None:
        try:
            self._paho.loop_write()
        except Exception as e:
            self._lose(BrokerError(self.name, f"connection lost ({type(e).__name__}: {e})"))

    async def _keepalive_loop(self) -> None:
        """paho's timers: PINGREQ when idle, and the connection declared lost when no PINGRESP comes back."""
        import paho.mqtt.client as paho

        while self._paho.loop_misc() == paho.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - paho's timers are polled
            await asyncio.sleep(1.0)
