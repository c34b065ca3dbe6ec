"""Authenticating a batch of usage events with one signature check per hash-linked run, not one per record.

Every record's signed bytes carry `prevhash`, the SHA-256 of the previous record's signed bytes. So when the
receiver has itself computed the hash of record k and checked that record k+1's `prevhash` equals it, a valid
signature on k+1 also vouches for k's bytes: forging k would need a SHA-256 second preimage. A run of records that
arrive in order, each linking to the one before, is therefore authenticated by the signature of its last record;
git's signed tags and Certificate Transparency's signed tree heads rest on the same argument.

What it saves: the ECDSA P-256 verify takes ~65 us a record on the 2-core machine the benches run on (what
`openssl speed ecdsap256` gives there, so no binding can do better), the largest cost of the receiver's hot path; a
backlog drain from one gateway arrives as a few long runs. What it does not change: no record is stored or acked
unless its bytes are authenticated, links across batches are still checked by the store before an ack, and records
that arrive out of order or interleaved (two receivers on one shared subscription each see every other record)
form runs of one and are verified one by one, exactly as before.

When a run's last signature fails, the records before it are checked from the end back until one holds: that one
vouches for everything before it, and the records after it, whose own signatures all failed, are rejected. So a
forged record can neither slip in nor take the genuine records before it down with it. The `sig` of a record
inside a run is stored as sent, not checked here; `koto-cloud verify` (cloud.verify.verify_chain) checks every
stored signature offline.
"""

from __future__ import annotations

from collections.abc import Mapping

from koto.signing import PublicKey

from .verify import Event


class RunVerifier:
    """Events in (`add`), authenticated and rejected events out (`take`), each in arrival order.

    A run stays open while events extend it (same gateway and epoch, next seq, `prevhash` = the last one's hash);
    an event that does not extend its gateway's open run closes that run, whose last signature is then checked.
    `take` closes every open run. `signatures_checked` counts the ECDSA verifications done.
    """

    def __init__(self, keys: Mapping[str, PublicKey]) -> None:
        self._keys = keys
        self._events: list[Event] = []
        self._ok: list[bool] = []
        self._open: dict[tuple[str, int], list[int]] = {}  # (gateway, epoch) -> its open run, indices in seq order
        self.signatures_checked = 0

    def __len__(self) -> int:
        """Events added and not yet taken."""
        return len(self._events)

    def add(self, ev: Event) -> None:
        i = len(self._events)
        self._events.append(ev)
        self._ok.append(False)
        key = (ev.gateway, ev.epoch)
        run = self._open.get(key)
        if run is not None:
            tail = self._events[run[-1]]
            if ev.seq == tail.seq + 1 and ev.prevhash == tail.hash:
                run.append(i)
                return
            self._close(run)
        self._open[key] = [i]

    def take(self) -> tuple[list[Event], list[Event]]:
        """Everything added so far, leaving the verifier empty: (authenticated, rejected), each in arrival order."""
        for run in self._open.values():
            self._close(run)
        good = [ev for ev, ok in zip(self._events, self._ok, strict=True) if ok]
        bad = [ev for ev, ok in zip(self._events, self._ok, strict=True) if not ok]
        self._events, self._ok, self._open = [], [], {}
        return good, bad

    def _verify(self, ev: Event) -> bool:
        key = self._keys.get(ev.gateway)
        self.signatures_checked += 1
        return key is not None and ev.verify(key)

    def _close(self, run: list[int]) -> None:
        """Find the last record of the run whose signature holds: it vouches for itself and all before it.

        The first check is the run's last record, which holds for every genuine run; only when it fails are the
        records before it checked, from the end back, and those after the one that holds are rejected.
        """
        for pos in range(len(run) - 1, -1, -1):
            if self._verify(self._events[run[pos]]):
                for i in run[:pos + 1]:
                    self._ok[i] = True
                return
