"""A plain aiomqtt client: an MQTT peer that is not Koto's own connection (cloud/mqtt.py).

Tests use it where they play the other side (an observer, a misbehaving cloud) so that Koto's client is checked
against an independent one, and the sync bench uses it for its raw-publish baseline.
"""

from __future__ import annotations

import socket
import ssl

import aiomqtt

from koto.net import parse_broker_url


def peer_client(broker_url: str, client_id: str, *, ssl_context: ssl.SSLContext | None = None,
                max_inflight: int | None = None) -> aiomqtt.Client:
    """MQTT 5, clean session, TCP_NODELAY (without it Nagle and delayed ACKs add ~40 ms per round trip)."""
    url = parse_broker_url(broker_url)
    return aiomqtt.Client(
        url.host, url.port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5, clean_start=True,
        keepalive=30, tls_context=ssl_context if url.tls else None, max_inflight_messages=max_inflight,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
