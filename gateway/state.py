"""Where a gateway keeps its state, and the device key in it.

    {state_dir}/ledger.db            the signed, hash-chained ledger (SQLite, WAL)
    {state_dir}/keys/device.pem      the gateway's ECDSA P-256 private key, mode 0600
    {state_dir}/keys/device.pub.pem  its public key, to register at the billing cloud
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from koto.files import fsync_dir, write_atomic
from koto.signing import (
    PrivateKey,
    PublicKey,
    generate_key,
    load_private_key,
    load_public_key,
    public_pem,
    save_private_key,
)

from .errors import NotProvisioned, StateError


@dataclass(frozen=True, slots=True)
class Archived:
    """A ledger moved aside by `provision --force --new-epoch`: whose, which epoch, how far it went, where it is."""

    gateway_id: str
    epoch: int
    head_seq: int
    head_hash: str
    acked_through: int
    path: Path

    @property
    def unacked(self) -> int:
        return self.head_seq - self.acked_through


@dataclass(frozen=True, slots=True)
class Provisioned:
    public_pem: str
    created: bool
    archived: Archived | None = None


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def private_key_path(self) -> Path:
        return self.keys / "device.pem"

    @property
    def public_key_path(self) -> Path:
        return self.keys / "device.pub.pem"

    def provisioned(self) -> bool:
        return self.private_key_path.exists()

    def provision(self, *, force: bool = False, new_epoch: bool = False) -> Provisioned:
        """Create the state folder and the device key (kept if it exists); write its public key beside it.

        A new key for an existing ledger would make every record in it fail `koto verify`, so `force` is refused
        while `ledger.db` exists unless `new_epoch` is asked for too: then the old ledger is kept, verifiable, as
        `ledger-EPOCH.db` with its public key as `keys/device-EPOCH.pub.pem`, and the new ledger's first record
        (a lifecycle `new_epoch`) names the old epoch, its head and how much of it the cloud had acknowledged.
        Every file is written atomically: a full disk leaves the old key, never an empty one.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.keys, 0o700)
        archived: Archived | None = None
        if force and self.ledger.exists():
            if not new_epoch:
                raise StateError(str(self.ledger), "a ledger exists, and a new key would make all of it fail `koto "
                                 "verify`; keep the key, or run `koto provision --force --new-epoch` to archive "
                                 "this ledger and start a new epoch with a new key")
            archived = self._archive_ledger()
        created = False
        if force or not self.private_key_path.exists():
            save_private_key(generate_key(), self.private_key_path)
            created = True
        key = load_private_key(self.private_key_path)
        pem = public_pem(key)
        write_atomic(self.public_key_path, pem.encode(), mode=0o644)
        if archived is not None:
            self._start_epoch(key, archived)
        return Provisioned(pem, created, archived)

    def _archive_ledger(self) -> Archived:
        """Fold the WAL in, move the ledger (and its public key) aside under its epoch; refuse while it is open."""
        from metering.ledger import Ledger, read_gateway_id

        gateway_id = read_gateway_id(self.ledger)
        with Ledger.open(self.ledger, gateway_id=gateway_id, key=None) as ledger:
            head_seq, head_hash = ledger.head()
            info = Archived(gateway_id, ledger.epoch, head_seq, head_hash, ledger.acked_through(),
                            self.root / f"ledger-{ledger.epoch}.db")
        lock = self.ledger.with_name(self.ledger.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise StateError(str(self.ledger), "the gateway is running and writing this ledger; stop it first "
                                 "(sudo systemctl stop koto)") from None
            # No reader lease needed (metering/ledger/lease.py): we hold the writer lock, so no daemon holds the
            # file exclusively; `read_gateway_id` and the reader `Ledger` above took theirs.
            conn = sqlite3.connect(self.ledger)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            if info.path.exists():
                raise StateError(str(info.path), "an archive of this epoch already exists; move it away first")
            os.replace(self.ledger, info.path)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.ledger.with_name(self.ledger.name + suffix))
            if self.public_key_path.exists():
                write_atomic(self.keys / f"device-{info.epoch}.pub.pem", self.public_key_path.read_bytes())
            fsync_dir(self.root)
        finally:
            os.close(fd)
        return info

    def _start_epoch(self, key: PrivateKey, old: Archived) -> None:
        from metering.ledger import Ledger
        from metering.records import LIFECYCLE_TYPE, Draft, TimeStatus

        now = time.time()
        epoch = max(int(now), old.epoch + 1)
        with Ledger.open(self.ledger, gateway_id=old.gateway_id, key=key, epoch=epoch) as ledger:
            ledger.append([Draft(LIFECYCLE_TYPE, ledger.gateway_subject, now, TimeStatus.UNSYNCED, {
                "event": "new_epoch", "gateway": old.gateway_id, "previous_epoch": old.epoch,
                "previous_head_seq": old.head_seq, "previous_head_hash": old.head_hash,
                "previous_acked_through": old.acked_through, "previous_ledger": old.path.name,
                "message": f"new device key; epoch {old.epoch} archived as {old.path.name}",
            })])

    def private_key(self) -> PrivateKey:
        if not self.private_key_path.exists():
            raise NotProvisioned(str(self.root))
        return load_private_key(self.private_key_path)

    def public_key(self) -> PublicKey:
        if self.public_key_path.exists():
            return load_public_key(self.public_key_path.read_bytes())
        return self.private_key().public_key()
