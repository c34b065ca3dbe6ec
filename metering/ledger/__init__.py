"""The ledger: an append-only, hash-chained, signed record store in SQLite, and the gateway's outbox cursor.

Why it looks the way it does:

- **Durable before reported.** Every `append` is one SQLite transaction (WAL, `synchronous=FULL`): the records, the
  meter checkpoints that produced them and any documents or settings are committed together, so after a crash the
  meter resumes from a checkpoint that matches the last stored record exactly. One fsync per batch, not per record.
- **The stored bytes are the published bytes.** Each record's `body` is the canonical (JCS) JSON of its CloudEvent,
  signature included. The sync publishes `body` as is, so a resend is byte-identical and the receiver's checks are
  the same ones `verify` runs here.
- **Tamper evident.** `hash = sha256(canonical bytes of the event without sig)`, the next record's `prevhash` is that
  hash, and `sig` is ECDSA P-256 over the same bytes. The columns beside `body` (kind, appliance, energy, ...) are
  derived from it for queries, and `verify` checks they still agree, so no single changed byte goes unnoticed.
- **Nothing leaves before the cloud has it.** `mark_acked` moves a cumulative cursor only when the cloud's
  `head_hash` equals our own hash of that record; `prune` deletes only acked records older than the retention and
  never the chain head, leaving an anchor (the first kept seq and its prevhash) that `verify` starts from.

Acked state is the single cursor `acked_through` (records are acked as a prefix), not a per-row flag: an ack then
costs one small write instead of rewriting every acked record's page, which matters on an SD card.

One concern a module (docs/ledger.md has the map): `store` (SQLite file, lock, schema, transactions), `envelope`
(draft to signed event bytes), `verify` (the offline walk), `usage` (the report), `retention` (prune, anchor, WAL),
and `facade`, the `Ledger` that composes them. Import the public names from here.
"""

from __future__ import annotations

from .acks import AckOutcome
from .billing import CycleRow, RecordRow, Synced
from .envelope import Stored
from .facade import Ledger
from .queries import Doc
from .store import SCHEMA_VERSION, read_gateway_id
from .usage import UsageRow
from .verify import VerifyReport

__all__ = [
    "SCHEMA_VERSION",
    "AckOutcome",
    "CycleRow",
    "Doc",
    "Ledger",
    "RecordRow",
    "Stored",
    "Synced",
    "UsageRow",
    "VerifyReport",
    "read_gateway_id",
]
