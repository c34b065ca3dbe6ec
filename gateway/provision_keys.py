"""What `koto provision` hands to the operator and takes from them: a certificate request, fingerprints, a pinned key.

    {state_dir}/keys/device.csr.pem   a PKCS#10 request, subject CN = gateway id, signed by the device key
    {config_dir}/operator.pub.pem     the operator's command-signing key, pinned (never replaced silently)

The request is for the gateway's MQTT client certificate: the operator's CA signs it, and the broker then knows the
gateway by the certificate's CN (= MQTT client id = gateway id, docs/sync.md). It carries the device key, the one
that signs the ledger, so a certificate also binds the ledger's key to the gateway id, and the private key never
leaves the device. A fingerprint is the SHA-256 of the key's DER SubjectPublicKeyInfo, in hex: what
`openssl pkey -pubin -in device.pub.pem -outform DER | sha256sum` prints, so either side can compare it by eye.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from koto.files import write_atomic
from koto.signing import KeyError_, PrivateKey, PublicKey, load_public_key, public_pem

from .errors import StateError


def fingerprint(key: PublicKey) -> str:
    """`sha256:` and the hex SHA-256 of the public key's DER SubjectPublicKeyInfo (openssl's and ours agree)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def csr_path(keys_dir: Path) -> Path:
    return keys_dir / "device.csr.pem"


@dataclass(frozen=True, slots=True)
class Request:
    path: Path
    gateway_id: str
    created: bool  # False: the request on disk was already for this key and this id


def write_csr(key: PrivateKey, gateway_id: str, path: Path) -> Request:
    """Write a request for a client certificate with CN = `gateway_id` for `key`; keep one that already fits.

    ECDSA signatures are randomised, so rewriting an unchanged request would give the operator a different file
    for the same thing: it is only rewritten when the key or the id changed (a new epoch, a renamed gateway)."""
    if _fits(path, key, gateway_id):
        return Request(path, gateway_id, False)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(path, csr.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return Request(path, gateway_id, True)


def _fits(path: Path, key: PrivateKey, gateway_id: str) -> bool:
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
    except (OSError, ValueError):
        return False
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return (bool(cns) and cns[0].value == gateway_id and csr.is_signature_valid
            and csr.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki))


@dataclass(frozen=True, slots=True)
class Pinned:
    path: Path
    fingerprint: str
    changed: bool  # False: this very key was already pinned there


def read_public_key(source: Path) -> PublicKey:
    """An ECDSA P-256 public key from a PEM file, or one line naming the file and what is wrong with it."""
    try:
        data = source.read_bytes()
    except OSError as e:
        from koto.errors import explain_os_error

        raise KeyError_(f"operator key: {explain_os_error(e)}") from e
    try:
        return load_public_key(data)
    except KeyError_ as e:
        raise KeyError_(f"{source}: {e}; the operator's command-signing key is a PEM public key "
                        "(`koto-cloud keygen` writes one beside the private key)") from e


def pin_operator_key(source: Path, dest: Path, *, replace: bool = False) -> Pinned:
    """Copy the operator's public key to `dest`, where the gateway trusts it for tariffs and entitlements.

    Pinning means a key already there is not swapped for another by a re-run with the wrong file: that is refused
    unless `replace` is asked for (rotations go through `operator_keys`' second slot, docs/sync.md)."""
    key = read_public_key(source)
    fp = fingerprint(key)
    if dest.exists():
        try:
            old = load_public_key(dest.read_bytes())
        except KeyError_:
            old = None
        if old is not None and fingerprint(old) == fp:
            return Pinned(dest, fp, False)
        if old is not None and not replace:
            raise StateError(str(dest), f"a different operator key ({fingerprint(old)}) is pinned here; "
                             "pass --replace-operator-key if the operator really changed it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, public_pem(key).encode(), mode=0o644)
    return Pinned(dest, fp, True)


def hand_over(paths: list[Path], owner_of: Path) -> None:
    """Run as root, give what provisioning wrote to the owner of the state folder (the `koto` user).

    The install script makes the state folder for the service's user before anything writes there; a root
    `koto provision` afterwards must not leave root-owned keys or a root-only config that the service cannot
    read (it would crash-loop under Restart=always). Not root, or a root-owned state folder: nothing to do."""
    if os.geteuid() != 0:
        return
    st = owner_of.stat()
    if st.st_uid == 0:
        return
    for p in paths:
        if p.exists():
            os.chown(p, st.st_uid, st.st_gid, follow_symlinks=False)
