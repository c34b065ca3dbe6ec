"""A tiny factory of real signed, hash-chained usage events, made by the contract's rules (docs/contract.md).

It uses koto.canonical and koto.signing directly, not the ledger, so the receiver's tests do not depend on the
ledger's timing; tests/test_receiver_ledger.py checks separately that a real Ledger's bodies verify the same way.

    f = EventFactory("gw-1")
    bodies = f.chain(100)          # list[bytes], seq 1..100 of epoch 1, each the exact uplink payload
    f.public_pem                   # what `koto-cloud register` takes
"""

from __future__ import annotations

from typing import Any

from koto.canonical import ZERO_HASH, canonical_bytes, event_hash, rfc3339
from koto.signing import PrivateKey, generate_key, public_pem, sign_event
from metering.records import RecordKind, TimeStatus, UsageRecord

T0 = 1_790_000_000.0  # 2026-09-21, a fixed wall time so test events are reproducible apart from signatures


class EventFactory:
    def __init__(self, gateway: str, *, key: PrivateKey | None = None, epoch: int = 1,
                 subject: str = "urn:koto:appliance:washer-1") -> None:
        self.gateway = gateway
        self.key = key or generate_key()
        self.epoch = epoch
        self.subject = subject
        self.head = ZERO_HASH
        self.seq = 0

    @property
    def public_pem(self) -> str:
        return public_pem(self.key)

    def event(self, seq: int, prevhash: str, *, energy_mwh: int = 120, type_: str = "io.koto.usage.v1",
              data: dict[str, Any] | None = None) -> dict[str, Any]:
        """One signed event dict (not advancing the factory's chain)."""
        t_end = T0 + seq * 60
        if data is None:
            rec = UsageRecord(
                kind=RecordKind.FUNCTION, appliance="washer-1", source="plug-1", function="wash_40",
                t_start_mono_ns=(seq - 1) * 60 * 10**9, t_end_mono_ns=seq * 60 * 10**9, t_start_wall=t_end - 60,
                t_end_wall=t_end, boot_id="b00t", time_status=TimeStatus.SYNCED, energy_mwh=energy_mwh,
                duration_ms=60_000, uses=1 if seq % 10 == 0 else 0, peak_power_mw=2_000_000,
            )
            data = rec.data()
        data = {**data, "epoch": self.epoch, "seq": seq}
        ev = {
            "specversion": "1.0", "id": f"{self.epoch}-{seq}", "source": f"urn:koto:gw:{self.gateway}",
            "type": type_, "subject": self.subject, "time": rfc3339(t_end), "datacontenttype": "application/json",
            "sequence": f"{seq:020d}", "timestatus": "S", "prevhash": prevhash, "data": data,
        }
        return sign_event(self.key, ev)

    def next(self, **kw: Any) -> bytes:
        """The next event of the chain, as the exact uplink payload bytes."""
        self.seq += 1
        ev = self.event(self.seq, self.head, **kw)
        self.head = event_hash(ev)
        return canonical_bytes(ev)

    def chain(self, n: int) -> list[bytes]:
        return [self.next() for _ in range(n)]

    def new_epoch(self, epoch: int) -> None:
        self.epoch, self.seq, self.head = epoch, 0, ZERO_HASH
