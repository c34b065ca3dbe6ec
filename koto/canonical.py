"""Canonical bytes, hashes and timestamps shared by the ledger, the sync and the receiver.

Records and commands hold only strings, integers and nested objects/arrays of them. For such values, JSON with
sorted keys and no insignificant whitespace *is* RFC 8785 (JCS): JCS differs from it only in how it writes floats
(which we never use) and in sorting by UTF-16 code units (identical to code-point order for the ASCII keys we use).
`canonical_bytes` refuses anything else, so two implementations that follow the contract get identical bytes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

ZERO_HASH = "0" * 64
MAX_SAFE_INT = 2**53 - 1  # JCS/ECMAScript: larger integers do not survive a round trip through a JS receiver


class CanonicalError(ValueError):
    """A value that has no canonical form (float, bool, None, huge int, non-string key)."""


def _check(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        kind = type(value).__name__
        raise CanonicalError(f"{path}: {kind} is not allowed in canonical JSON (strings and integers only)")
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise CanonicalError(f"{path}: integer {value} is beyond 2**53-1")
    elif isinstance(value, str):
        return
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalError(f"{path}: key {k!r} is not a string")
            _check(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
    else:
        raise CanonicalError(f"{path}: {type(value).__name__} is not allowed in canonical JSON")


def canonical_bytes(obj: dict[str, Any], *, check: bool = True) -> bytes:
    """UTF-8 JCS bytes of `obj`. `check=False` skips validation on hot paths whose input is already known good."""
    if check:
        _check(obj, "$")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def event_hash(event: dict[str, Any]) -> str:
    """The hash of a record or command: sha256 of the canonical bytes of the event without its `sig`."""
    body = {k: v for k, v in event.items() if k != "sig"}
    return sha256_hex(canonical_bytes(body))


def rfc3339(t_wall: float) -> str:
    """UTC time with milliseconds and a `Z`, e.g. 2026-11-30T01:02:03.045Z (the `time` of every event)."""
    ms = round(t_wall * 1000)
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    """Inverse of `rfc3339` (accepts any RFC 3339 offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
