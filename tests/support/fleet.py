"""Light simulated gateways that speak the cloud contract, many to one MQTT connection: for the cluster chaos test
and bench/fleet.py, where a thousand real `koto run` daemons would measure the machine, not the cloud side.

    gws = [SimGateway.new(f"gw-{i:04d}", records=300) for i in range(4)]
    link = FleetLink(["mqtt://127.0.0.1:1883", ...], gws, client_id="fleet-0")
    task = asyncio.create_task(link.run())
    for gw in gws: gw.make(gw.total)          # "commit" records to the ledger; the link sends them
    await until(lambda: all(gw.done for gw in gws))

What each simulated gateway does is what the contract asks of a real one (docs/contract.md): every record a real
signed, hash-chained CloudEvent (tests/support/events.py, its own key and chain), published QoS 1 on its own
`koto/v1/{gw}/up/usage` in seq order with a bounded in-flight window; a birth on every connect; a cumulative ack on
`koto/v1/{gw}/down/ack` moves it on only when `head_hash` equals its own hash of that record (a mismatch is counted,
never trusted); on reconnect and after an ack timeout it resends from the first unacked record, the same bytes.

What differs from a real gateway, and why that is fair for the cloud side: several gateways may share one MQTT
connection (the client id is then the link's, not the gateway's), so the broker sees fewer connections than
gateways; records are made up front (signing is the gateway's cost, not the cloud's) and released at a rate.
The link uses MQTT 3.1.1 with a persistent session (clean session off), as RabbitMQ 3.10's MQTT plugin requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.mqtt import BrokerError, Connection
from koto.canonical import rfc3339
from koto.net import parse_broker_url
from tests.support.events import EventFactory

P = "koto/v1"


@dataclass
class SimGateway:
    gw: str
    factory: EventFactory
    bodies: list[bytes]
    hashes: list[str]  # hashes[k-1] is the hash of record k, what an ack's head_hash must equal
    made_at: list[float] = field(default_factory=list)  # monotonic time record k was "committed" (made available)
    acked: int = 0
    sent: int = 0
    last_progress: float = 0.0
    latencies: list[float] = field(default_factory=list)  # made -> acked, seconds, one per record
    mismatches: int = 0
    acks: int = 0

    @classmethod
    def new(cls, gw: str, records: int) -> SimGateway:
        f = EventFactory(gw)
        bodies, hashes = [], []
        for _ in range(records):
            bodies.append(f.next())
            hashes.append(f.head)
        return cls(gw, f, bodies, hashes)

    @property
    def total(self) -> int:
        return len(self.bodies)

    @property
    def made(self) -> int:
        return len(self.made_at)

    @property
    def done(self) -> bool:
        return self.acked >= self.total

    def make(self, n: int, now: float | None = None) -> None:
        """Commit the next `n` records to this gateway's "ledger": from now on they are due to be sent."""
        now = time.monotonic() if now is None else now
        room = self.total - self.made
        self.made_at.extend([now] * min(n, room))

    def birth(self) -> bytes:
        return json.dumps({
            "online": True, "gateway": self.gw, "version": "sim", "boot_id": "sim-boot", "epoch": self.factory.epoch,
            "last_seq": self.made, "unacked": self.made - self.acked, "tariff_version": 0, "last_dseq": "0",
            "clock_synced": True, "time": rfc3339(time.time()),
        }, separators=(",", ":")).encode()

    def on_ack(self, payload: bytes, now: float) -> None:
        self.acks += 1
        try:
            ack = json.loads(payload)
            through, head, epoch = int(ack["acked_through"]), str(ack["head_hash"]), int(ack["epoch"])
        except (ValueError, KeyError, TypeError):
            self.mismatches += 1
            return
        if epoch != self.factory.epoch or through <= self.acked:
            return
        if through > self.made or head != self.hashes[through - 1]:
            self.mismatches += 1  # an ack for a record we never sent, or of other bytes: an alarm, never a prune
            return
        self.latencies.extend(now - t for t in self.made_at[self.acked:through])
        self.acked = through
        self.last_progress = now


class FleetLink:
    """One MQTT 3.1.1 connection carrying `gateways`; reconnects (to the next URL) after any loss, forever.

    `ack_timeout_s` defaults to the gateway's own (`[cloud] ack_timeout_s`, 15 s): shorter, a slow cloud gets every
    unacked record again while it is still working through the first copy.
    """

    def __init__(self, urls: Sequence[str], gateways: Sequence[SimGateway], *, client_id: str, window: int = 100,
                 ack_timeout_s: float = 15.0, tick_s: float = 0.02) -> None:
        self.urls = list(urls)
        self.gateways = {g.gw: g for g in gateways}
        self.client_id = client_id
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.tick_s = tick_s
        self.connects = 0
        self.published = 0
        self.connected = asyncio.Event()
        self._i = 0

    async def run(self) -> None:
        while True:
            url = parse_broker_url(self.urls[self._i % len(self.urls)], file="fleet", key="url")
            try:
                async with Connection(url, client_id=self.client_id, protocol=311, session_expiry_s=7 * 86400,
                                      timeout=5.0, max_inflight=1000) as conn:
                    await conn.subscribe(*(f"{P}/{gw}/down/ack" for gw in self.gateways), qos=1)
                    self.connects += 1
                    self.connected.set()
                    await self._session(conn)
            except BrokerError:
                self.connected.clear()
                self._i += 1  # a node that went away: try the next one
                await asyncio.sleep(0.2)

    async def _session(self, conn: Connection) -> None:
        now = time.monotonic()
        for g in self.gateways.values():
            conn.publish(f"{P}/{g.gw}/up/status", g.birth(), 1, retain=True)
            g.sent, g.last_progress = g.acked, now  # resend everything unacked, in seq order, the same bytes
        while True:
            now = time.monotonic()
            for g in self.gateways.values():
                if g.sent > g.acked and now - g.last_progress > self.ack_timeout_s:
                    g.sent, g.last_progress = g.acked, now  # no ack progress: resend from the first unacked
                top = min(g.made, g.acked + self.window)
                while g.sent < top:
                    conn.publish(f"{P}/{g.gw}/up/usage", g.bodies[g.sent], 1)
                    g.sent += 1
                    self.published += 1
            msgs: list[Any] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_s):
                    msgs = await conn.receive()
            now = time.monotonic()
            for m in msgs:
                gw = m.topic[len(P) + 1:].split("/", 1)[0]
                g = self.gateways.get(gw)
                if g is not None:
                    g.on_ack(m.payload, now)
            conn.check()


def spread(gateways: Sequence[SimGateway], links: int) -> list[list[SimGateway]]:
    """Deal gateways over `links` connections, round-robin."""
    return [list(gateways[i::links]) for i in range(links) if gateways[i::links]]
