"""The gateway's MQTT client: the aiomqtt client factory with the contract's session semantics, and the MQTT 5
content-type properties. Broker URLs, the TLS context and the reconnect backoff are `koto.net`'s.

One place decides the session semantics the contract depends on: the client id is the gateway id (the CN of its
certificate), the session is persistent (MQTT 5 clean start off with a 7-day session expiry; MQTT 3.1.1 clean
session off) so the broker queues downlink while the Pi is away, and the Will marks the gateway offline. aiomqtt is
imported lazily (inside functions) so the package imports without the `sync` extra installed.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from typing import TYPE_CHECKING, Any

from koto.net import BrokerURL, tls_context

if TYPE_CHECKING:
    import aiomqtt

SESSION_EXPIRY_S = 7 * 24 * 3600
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def make_client(
    *,
    url: BrokerURL,
    client_id: str,
    protocol: int = 5,
    keepalive: int = 30,
    ssl_context: ssl.SSLContext | None = None,
    will_topic: str | None = None,
    will_payload: bytes | None = None,
    persistent: bool = True,
    timeout: float = 10.0,
    max_inflight: int | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client for the gateway (or a test peer) with the contract's session semantics."""
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    will = None
    if will_topic is not None:
        will_props = None
        if protocol == 5:
            will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_props.ContentType = JSON_CONTENT_TYPE
        will = aiomqtt.Will(will_topic, will_payload, qos=1, retain=True, properties=will_props)
    kwargs: dict[str, Any] = {}
    if protocol == 5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent:
            props.SessionExpiryInterval = SESSION_EXPIRY_S
        kwargs["properties"] = props
        kwargs["clean_start"] = not persistent
        kwargs["protocol"] = aiomqtt.ProtocolVersion.V5
    elif protocol == 311:
        kwargs["clean_session"] = not persistent
        kwargs["protocol"] = aiomqtt.ProtocolVersion.V311
    else:
        raise ValueError(f"protocol {protocol} is not supported; use 5 or 311")
    if url.tls and ssl_context is None:
        ssl_context = tls_context(None, None, None)
    return aiomqtt.Client(
        url.host, url.port, identifier=client_id, keepalive=keepalive, will=will,
        tls_context=ssl_context if url.tls else None, timeout=timeout, max_inflight_messages=max_inflight,
        # Small messages and cumulative acks: without NODELAY, Nagle plus delayed ACKs add ~40 ms per round trip.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], **kwargs,
    )


class Outbox:
    """QoS 1 publishing that does not hold the caller up until each PUBACK, on aiomqtt's public `publish`.

    For the usage stream the PUBACK means nothing to us (the cloud ack on `down/ack` does, and the pump's window
    counts records beyond it), so the pump hands a message over and goes on. Each message is one task awaiting
    aiomqtt's `publish` without a timeout: aiomqtt does not fail a pending publish when the connection drops, so the
    session that owns the outbox closes it, which cancels what still waits. Tasks start in the order they were made,
    so messages go out in seq order. The first failure (e.g. not connected) is kept and raised by the next
    `publish`, as aiomqtt's own publish would have raised it.

    Why not paho's publish underneath, as before: that is aiomqtt's private `_client`. The price of the public call
    is a task per message and aiomqtt's scan over every pending call (docs/sync.md has the figures). aiomqtt also
    logs a warning whenever more than `pending_calls_threshold` calls await their acks; a full window is normal
    here, so the threshold is raised to it.
    """

    def __init__(self, client: aiomqtt.Client, *, window: int) -> None:
        self._client = client
        client.pending_calls_threshold = max(client.pending_calls_threshold, window + 16)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed: BaseException | None = None

    def publish(self, topic: str, payload: bytes, qos: int, properties: Any = None) -> None:
        if self._failed is not None:
            raise self._failed
        task = asyncio.create_task(self._client.publish(topic, payload, qos=qos, properties=properties,
                                                        timeout=math.inf))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failed is None:
            self._failed = task.exception()

    async def aclose(self) -> None:
        """Stop waiting for PUBACKs (the session is over; unacked records are resent by the next one)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def content_type_properties(content_type: str) -> Any:
    """MQTT 5 PUBLISH properties carrying a content type (paho Properties; None-safe to pass on 3.1.1 clients)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = content_type
    return props


def cloudevents_properties() -> Any:
    return content_type_properties(CLOUDEVENTS_CONTENT_TYPE)


def json_properties() -> Any:
    return content_type_properties(JSON_CONTENT_TYPE)


SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason code: another client connected with our client id


def disconnect_reason(error: BaseException | None) -> int | None:
    """The MQTT 5 reason code the broker closed the connection with, if `error` (or what caused it) carries one.

    aiomqtt raises `MqttError("Disconnected during message iteration")` from the reader, caused by the
    `MqttCodeError` whose `rc` holds the broker's DISCONNECT reason; a publish in flight raises the MqttCodeError
    itself. None for MQTT 3.1.1, which has no reason codes (a takeover is then only a lost connection)."""
    for _ in range(5):
        if error is None:
            return None
        rc = getattr(error, "rc", None)
        value = getattr(rc, "value", rc)
        if isinstance(value, int) and value >= 128:
            return value
        error = error.__cause__ or error.__context__
    return None
