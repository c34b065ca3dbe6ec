"""What the receiver needs from a broker connection, whichever broker: MQTT (cloud/mqtt.py) or AMQP (cloud/amqp.py).

The receiver reads messages in bulk (`receive`), publishes acks to gateways (`publish`, never awaiting the broker),
and `settle`s each message once it is done with it: a usage record after the commit that stored it, anything else
once handled. MQTT has nothing to settle (the QoS 1 PUBACK goes out on read, and the gateway resends until the
application-level ack); AMQP acks the broker's delivery then, so a receiver that dies leaves its unsettled
deliveries to the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from .mqtt import Message


class Link(Protocol):
    async def receive(self) -> list[Message]: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
                content_type: str | None = None) -> None: ...

    def settle(self, tags: Sequence[int]) -> None: ...


class Transport(Protocol):
    """Makes a new `Link` for each (re)connection; the link subscribes to what it carries as it opens."""

    @property
    def name(self) -> str: ...

    def connect(self) -> AbstractAsyncContextManager[Link]: ...


__all__ = ["Link", "Transport"]
