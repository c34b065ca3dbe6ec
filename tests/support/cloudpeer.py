"""Test helpers for the cloud side: a minimal gateway-side MQTT peer (publish bodies, collect acks) and polling.

The peer is a real aiomqtt client on a real broker, not a mock: it does exactly what the contract says a gateway
sends (usage bodies, a birth) and records what the receiver sends back (acks).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from tests.support.slow import scaled

from .broker import Mosquitto

P = "koto/v1"


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    """Poll `cond` (a store query, a counter) until it holds; TimeoutError after `within` seconds."""
    async with asyncio.timeout(scaled(within)):
        while not cond():  # noqa: ASYNC110 - polling a database or a counter, there is no event to wait on
            await asyncio.sleep(0.01)


def tls_for(broker: Mosquitto, cn: str) -> Any:
    """An SSL context presenting a client certificate with CN `cn` from the broker's test PKI."""
    from koto.net import tls_context

    assert broker.pki is not None
    pair = broker.pki.client(cn)
    return tls_context(Path(broker.pki.ca), pair.cert, pair.key)


def birth_payload(gw: str, *, epoch: int = 1, last_seq: int = 0, **fields: Any) -> dict[str, Any]:
    """A birth as gateway/sync.py sends it (every field birth.json requires); `fields` override or add."""
    return {"online": True, "gateway": gw, "version": "0.1.0", "boot_id": "b00t", "epoch": epoch,
            "last_seq": last_seq, "unacked": 0, "tariff_version": 0, "last_dseq": "", "clock_synced": True,
            "time": "2026-11-30T01:02:03.045Z", **fields}


class GatewayPeer:
    def __init__(self, broker: Mosquitto, gw: str, *, cn: str | None = None) -> None:
        self.gw = gw
        tls = tls_for(broker, cn or gw) if broker.pki else None
        self.client = aiomqtt.Client(broker.host, broker.port, identifier=gw, protocol=aiomqtt.ProtocolVersion.V5,
                                     tls_context=tls, socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
        self.acks: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GatewayPeer:
        await self.client.__aenter__()
        await self.client.subscribe(f"{P}/{self.gw}/down/ack", qos=1)
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task
        self._task.cancel()
        await self.client.__aexit__(None, None, None)

    async def _listen(self) -> None:
        async for m in self.client.messages:
            self.acks.append(json.loads(m.payload))

    async def publish(self, bodies: list[bytes]) -> None:
        for b in bodies:
            await self.client.publish(f"{P}/{self.gw}/up/usage", b, qos=1)

    async def birth(self, epoch: int = 1, last_seq: int = 0, **fields: Any) -> None:
        """A complete birth (cloud/schemas/birth.json), as a gateway sends it; `fields` override or add to it."""
        await self.client.publish(f"{P}/{self.gw}/up/status", json.dumps(
            birth_payload(self.gw, epoch=epoch, last_seq=last_seq, **fields)).encode(), qos=1)

    def acked(self) -> int:
        return max((a["acked_through"] for a in self.acks), default=0)

    async def wait_ack(self, through: int, within: float = 10.0) -> dict[str, Any]:
        await until(lambda: self.acked() >= through, within)
        return max(self.acks, key=lambda a: a["acked_through"])
