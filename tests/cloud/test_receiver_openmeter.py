"""Forwarding committed usage to an OpenMeter-compatible endpoint (a real HTTP server on 127.0.0.1 in a thread)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloud.openmeter import BATCH_CONTENT_TYPE, Forwarder
from cloud.receiver import Receiver, ReceiverConfig
from cloud.store import SqliteStore
from tests.support.cloudpeer import GatewayPeer, until
from tests.support.events import EventFactory
from tests.support.schemas import errors


class Ingest:
    """Records every POST; refuses the first `fail_first` with 503 (an ingest endpoint having a bad moment)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ingest.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 503 if len(ingest.requests) <= ingest.fail_first else 202
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Ingest:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted_ids(self) -> list[str]:
        return [e["id"] for _, body in self.requests[self.fail_first:] for e in json.loads(body)]


async def test_committed_usage_is_forwarded_as_a_cloudevents_batch_with_retries(broker, tmp_path):
    f = EventFactory("gw-1")
    bodies = f.chain(30)
    bodies.insert(5, f.next(type_="io.koto.lifecycle.v1", data={"event": "start"}))  # not usage: not forwarded
    store = SqliteStore(tmp_path / "cloud.db")
    store.register("gw-1", f.public_pem)
    with Ingest(fail_first=1) as ingest:
        fwd = Forwarder(ingest.url, token="s3cret", batch=10, initial_s=0.05)
        async with Receiver(store, ReceiverConfig(broker=broker.url), forwarder=fwd), GatewayPeer(broker, "gw-1") as gw:
            await gw.publish(bodies)
            await gw.wait_ack(31)
            await until(lambda: fwd.sent == 30)
    headers, _ = ingest.requests[-1]
    assert headers["content-type"] == BATCH_CONTENT_TYPE
    assert headers["authorization"] == "Bearer s3cret"
    assert fwd.failures == 1  # the 503 was retried, not dropped
    assert sorted(ingest.accepted_ids(), key=lambda i: int(i.split("-")[1])) == \
        [f"1-{n}" for n in range(1, 32) if n != 31]  # every usage record once; the lifecycle one (seq 31) not
    for _, raw in ingest.requests:
        batch = json.loads(raw)
        assert errors("openmeter-batch.json", batch) == []
        assert all(set(e) == {"specversion", "id", "source", "type", "subject", "time", "data"} for e in batch)
    assert store.unforwarded() == []
    store.close()
