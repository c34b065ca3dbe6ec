"""Where a gateway keeps its state, and the device key in it.

    {state_dir}/ledger.db            the signed, hash-chained ledger (SQLite, WAL)
    {state_dir}/keys/device.pem      the gateway's ECDSA P-256 private key, mode 0600
    {state_dir}/keys/device.pub.pem  its public key, to register at the billing cloud
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from koto.signing import (
    PrivateKey,
    PublicKey,
    generate_key,
    load_private_key,
    load_public_key,
    public_pem,
    save_private_key,
)

from .errors import NotProvisioned


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

    def provision(self, *, force: bool = False) -> tuple[str, bool]:
        """Create the state folder and the device key (kept if it exists). Returns (public PEM, created)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.keys, 0o700)
        created = False
        if force or not self.private_key_path.exists():
            save_private_key(generate_key(), self.private_key_path)
            created = True
        pem = public_pem(load_private_key(self.private_key_path))
        tmp = self.public_key_path.with_suffix(".tmp")
        tmp.write_text(pem)
        os.chmod(tmp, 0o644)
        tmp.replace(self.public_key_path)
        return pem, created

    def private_key(self) -> PrivateKey:
        if not self.private_key_path.exists():
            raise NotProvisioned(str(self.root))
        return load_private_key(self.private_key_path)

    def public_key(self) -> PublicKey:
        if self.public_key_path.exists():
            return load_public_key(self.public_key_path.read_bytes())
        return self.private_key().public_key()
