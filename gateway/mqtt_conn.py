"""The gateway's MQTT client: the aiomqtt client factory with the contract's session semantics, and the MQTT 5
content-type properties. Broker URLs, the TLS context and the reconnect backoff are `koto.net`'s.

One place decides the session semantics the contract depends on: the client id is the gateway id (the CN of its
certificate), the session is persistent (MQTT 5 clean start off with a 7-day session expiry; MQTT 3.1.1 clean
session off) so the broker queues downlink while the Pi is away, and the Will marks the gateway offline. aiomqtt is
imported lazily (inside functions) so the package imports without the `sync` extra installed.
"""

from __future__ import annotations

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
