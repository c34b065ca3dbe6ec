"""Forward committed usage to an OpenMeter-compatible ingest endpoint as `application/cloudevents-batch+json`.

Only committed records are forwarded (the forwarder reads them back from the store), so nothing reaches billing
that the cloud could later lose. A record is marked `forwarded` after a 2xx; a failed POST is retried with capped
backoff, and a receiver restart resumes from the store. Delivery is therefore at-least-once: OpenMeter
de-duplicates on (source, id), which the gateway made unique. OpenMeter drops CloudEvents extensions, so only
`id, source, type, subject, time, data` are sent; `data` repeats epoch and seq and stands alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("koto.cloud.openmeter")

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
KEEP = ("specversion", "id", "source", "type", "subject", "time", "data")


def to_cloudevent(body: str | bytes) -> dict[str, Any]:
    """The forwarded form of a stored usage event: the CloudEvents core attributes and data, no extensions."""
    ev = json.loads(body)
    return {k: ev[k] for k in KEEP if k in ev}


def post_batch(url: str, events: list[dict[str, Any]], *, token: str | None = None, timeout: float = 10.0) -> int:
    """POST one batch; returns the HTTP status, raises OSError/HTTPError when the endpoint refuses or is away."""
    data = json.dumps(events, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": BATCH_CONTENT_TYPE})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # raises HTTPError for 4xx/5xx
        return int(resp.status)


class Forwarder:
    def __init__(self, url: str, *, token: str | None = None, batch: int = 100, initial_s: float = 0.2,
                 cap_s: float = 30.0) -> None:
        self.url = url
        self.token = token
        self.batch = batch
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.sent = 0
        self.failures = 0

    async def run(self, store: Store, lock: asyncio.Lock, committed: asyncio.Event) -> None:
        """Forward until cancelled: drain what is unforwarded, then wait for the next commit."""
        delay = self.initial_s
        while True:
            async with lock:
                rows = await asyncio.to_thread(store.unforwarded, self.batch)
            if not rows:
                committed.clear()
                async with lock:  # a commit may have landed between the read and the clear
                    rows = await asyncio.to_thread(store.unforwarded, self.batch)
                if not rows:
                    await committed.wait()
                    continue
            events = [to_cloudevent(body) for _, _, body in rows]
            try:
                await asyncio.to_thread(post_batch, self.url, events, token=self.token)
            except (OSError, urllib.error.HTTPError) as e:
                self.failures += 1
                log.warning("OpenMeter endpoint %s refused %d events (%s); retrying in %.1f s",
                            self.url, len(events), e, delay)
                await asyncio.sleep(delay)
                delay = min(self.cap_s, delay * 2)
                continue
            delay = self.initial_s
            async with lock:
                await asyncio.to_thread(store.mark_forwarded, [(s, i) for s, i, _ in rows])
            self.sent += len(events)
