"""ECDSA P-256 / SHA-256 keys and signatures (DER, base64), the rule for records and downlink commands alike.

P-256 is what secure elements (ATECC608, TPM 2.0) hold and what OCMF uses, so a gateway can later move its key into
hardware without changing the contract. Everything here is `cryptography`; nothing is hand-rolled.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .canonical import canonical_bytes
from .errors import KotoError
from .files import write_atomic

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey


class KeyError_(KotoError, ValueError):
    """A key file that is missing, unreadable, or not an ECDSA P-256 key.

    The message is worded for the gateway's device key. `kind` says what is wrong, so that a caller loading another
    key (koto-cloud's operator key) words its own advice: "unreadable", "empty", "public_key" (a public key where the
    private one belongs), "not_pem", "not_p256", or "" when not said; `path` is the file, `detail` the cause."""

    def __init__(self, message: str, *, kind: str = "", path: Path | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path
        self.detail = detail


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def save_private_key(key: PrivateKey, path: Path) -> None:
    """Write PKCS#8 PEM, mode 0600 from the first byte, atomically: a full disk leaves no empty or partial key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem, mode=0o600)


def public_pem(key: PrivateKey | PublicKey) -> str:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_private_key(path: Path) -> PrivateKey:
    """The PKCS#8 PEM at `path`. A bad file raises KeyError_ worded for the gateway's device key, with `kind` for
    callers that load another key and give their own advice."""
    try:
        data = path.read_bytes()
    except OSError as e:
        from .errors import explain_os_error

        why = explain_os_error(e)
        raise KeyError_(f"cannot read the device key: {why}", kind="unreadable", path=path, detail=why) from e
    if not data.strip():
        raise KeyError_(f"{path}: the key file is empty (a provisioning that ran out of disk?); restore it from a "
                        "backup, or start a new epoch with `koto provision --force --new-epoch`", kind="empty",
                        path=path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        why = str(e).splitlines()[0]
        kind = "public_key" if b"-----BEGIN PUBLIC KEY-----" in data else "not_pem"
        raise KeyError_(f"{path}: not a PEM private key ({why}); restore it from a backup, or "
                        "start a new epoch with `koto provision --force --new-epoch`", kind=kind, path=path,
                        detail=why) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyError_(f"{path}: not an ECDSA P-256 private key", kind="not_p256", path=path)
    return key


def load_public_key(pem: str | bytes) -> PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise KeyError_(f"cannot load the public key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyError_("not an ECDSA P-256 public key")
    return key


def sign_bytes(key: PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def verify_bytes(key: PublicKey, data: bytes, sig_b64: str) -> bool:
    try:
        sig = base64.b64decode(sig_b64, validate=True)
        key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_event(key: PrivateKey, event: dict[str, Any]) -> dict[str, Any]:
    """Return `event` with `sig` over the canonical bytes of the event without `sig`."""
    body = {k: v for k, v in event.items() if k != "sig"}
    return {**body, "sig": sign_bytes(key, canonical_bytes(body))}


def verify_event(keys: list[PublicKey], event: dict[str, Any]) -> bool:
    """True when any of `keys` (e.g. current and next operator key during a rotation) signed `event`."""
    sig = event.get("sig")
    if not isinstance(sig, str):
        return False
    body = {k: v for k, v in event.items() if k != "sig"}
    try:
        data = canonical_bytes(body)
    except ValueError:
        return False
    return any(verify_bytes(k, data, sig) for k in keys)
