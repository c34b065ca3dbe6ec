"""How the gateway reaches the broker: URL parsing, the TLS context, the aiomqtt client factory, and backoff.

One place decides the session semantics the contract depends on: the client id is the gateway id (the CN of its
certificate), the session is persistent (MQTT 5 clean start off with a 7-day session expiry; MQTT 3.1.1 clean
session off) so the broker queues downlink while the Pi is away, and the Will marks the gateway offline. aiomqtt is
imported lazily (inside functions) so the package imports without the `sync` extra installed.
"""

from __future__ import annotations

import random
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import ConfigError

if TYPE_CHECKING:
    import aiomqtt

SESSION_EXPIRY_S = 7 * 24 * 3600
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class BrokerURL:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str, *, file: str = "<config>", key: str = "cloud.broker") -> BrokerURL:
    """`mqtt://host[:1883]` or `mqtts://host[:8883]`; anything else is a config error that says what is allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(file, key, f"{url!r} is not a URL ({e}); use mqtt://host:1883 or mqtts://host:8883") from e
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(file, key, f"scheme {parts.scheme!r} is not allowed; use mqtt:// or mqtts://")
    if not parts.hostname:
        raise ConfigError(file, key, f"{url!r} has no host; use mqtt://host:1883 or mqtts://host:8883")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(file, key, f"{url!r}: only scheme, host and port are allowed (no path, user or query)")
    tls = parts.scheme == "mqtts"
    return BrokerURL(parts.hostname, port or (8883 if tls else 1883), tls)


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A client TLS context: verify the broker against `ca` (system CAs if None), present `cert`/`key` if given.

    TLS 1.2 is the floor (Mosquitto 2.0 and every cloud broker speak it); hostname checking stays on.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


class Backoff:
    """Capped exponential backoff with full jitter on the upper half: 0.5 s doubling to a 5 s cap by default.

    The cap is what keeps the drain starting within a few seconds of the broker coming back however long it was
    away (an uncapped doubling after a 2-minute outage would wait a minute or more). The jitter spreads a fleet's
    reconnects after a broker restart.
    """

    def __init__(self, initial_s: float = 0.5, cap_s: float = 5.0, *, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._next = initial_s
        self._rng = rng or random.Random()

    def next(self) -> float:
        base = self._next
        self._next = min(self.cap_s, self._next * 2)
        return base / 2 + self._rng.random() * base / 2

    def reset(self) -> None:
        self._next = self.initial_s


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


def publish_nowait(client: aiomqtt.Client, topic: str, payload: bytes, qos: int, properties: Any = None) -> None:
    """Hand a message to the MQTT client's outgoing queue without awaiting its PUBACK.

    For the usage stream the QoS 1 PUBACK means nothing to us (the cloud ack on down/ack does), and aiomqtt's
    awaitable `publish` tracks every pending PUBACK with a scan over all pending calls, which costs O(in-flight)
    per message and dominated the drain. This uses the paho client aiomqtt wraps (stable across aiomqtt 2.x, the
    range pyproject allows); a failure (not connected) raises MqttCodeError like aiomqtt's own publish.
    """
    import aiomqtt
    import paho.mqtt.client as paho

    info = client._client.publish(topic, payload, qos, False, properties)
    if info.rc != paho.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")


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
