"""The gateway's MQTT connection, with the session semantics the cloud contract depends on (`koto.mqtt.Connection`).

One place decides them: the client id is the gateway id (the CN of its certificate), the session is persistent
(MQTT 5 clean start off with a 7-day session expiry; MQTT 3.1.1 clean session off) so the broker queues downlink
while the Pi is away, and the Will marks the gateway offline. Broker URLs, the TLS context and the reconnect backoff
are `koto.net`'s. paho is imported by `koto.mqtt` only when a connection is made, so the package imports without the
`sync` extra installed.
"""

from __future__ import annotations

import ssl

from koto.mqtt import Connection, Will
from koto.net import BrokerURL

SESSION_EXPIRY_S = 7 * 24 * 3600
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def gateway_connection(*, url: BrokerURL, gateway_id: str, will_topic: str, will_payload: bytes, protocol: int = 5,
                       keepalive: int = 30, ssl_context: ssl.SSLContext | None = None,
                       max_inflight: int | None = None) -> Connection:
    """A connection for the gateway's uplink: persistent session, the retained offline status as its Will."""
    will = Will(will_topic, will_payload, qos=1, retain=True, content_type=JSON_CONTENT_TYPE)
    return Connection(url, client_id=gateway_id, protocol=protocol, session_expiry_s=SESSION_EXPIRY_S,
                      ssl_context=ssl_context, keepalive=keepalive, will=will, max_inflight=max_inflight)
