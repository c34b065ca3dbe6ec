"""Canonical bytes, hashes and timestamps shared by the ledger, the sync and the receiver.

Records and commands hold only strings, integers and nested objects/arrays of them. For such values, JSON with
sorted keys and no insignificant whitespace *is* RFC 8785 (JCS): JCS differs from it only in how it writes floats
(which we never use) and in sorting by UTF-16 code units (identical to code-point order for the ASCII keys we use).
`canonical_bytes` refuses anything else, so two implementations that follow the contract get identical bytes.

Two ways to the same bytes:

- `canonical_bytes` is the definition: it checks every value (naming the first bad one by its path) and encodes with
  `json.dumps`. Verification and anything not on a hot path use it.
- `canonical_text` is the hot path of the ledger (every record it writes) and the receiver (every record it reads):
  one check pass without a path string per value, an encoder built once. When that pass is not sure (an array, a
  subclass of str or int, a value that has no canonical form) it runs the full check, so it accepts, refuses and
  encodes exactly as `canonical_bytes` does; tests/koto/test_canonical.py checks that over generated values.

And one way back: `parse_canonical(body)` is the stored bytes as an object when they are exactly its canonical form
(what `koto verify` asks of every record). Its fast path parses and re-encodes with orjson (about 3 times cheaper
than `json` here) when the object holds only strings, safe integers and objects; anything else, or any doubt, goes
the definition's way (`json.loads`, then `canonical_text`), so it accepts and refuses exactly what that does.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import KotoError

ZERO_HASH = "0" * 64
MAX_SAFE_INT = 2**53 - 1  # JCS/ECMAScript: larger integers do not survive a round trip through a JS receiver

_MIN_SAFE_INT = -MAX_SAFE_INT

# What `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` builds on every call, built once.
# Without its check for circular references: only checked values reach it, and the check recurses forever on a
# circular value (RecursionError) before anything is encoded, in `canonical_bytes` as here.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False)


class CanonicalError(KotoError, ValueError):
    """A value that has no canonical form (float, bool, None, huge int, non-string key, a string that is not valid
    Unicode such as a lone surrogate from a JSON "\\ud800" escape)."""


class NotCanonical(KotoError, ValueError):
    """Bytes that hold a value with a canonical form spelt some other way, or no JSON object (`parse_canonical`)."""


def _check(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        kind = type(value).__name__
        raise CanonicalError(f"{path}: {kind} is not allowed in canonical JSON (strings and integers only)")
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise CanonicalError(f"{path}: integer {value} is beyond 2**53-1")
    elif isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise CanonicalError(f"{path}: string is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalError(f"{path}: key {k!r} is not a string")
            if not k.isascii():
                try:
                    k.encode("utf-8")
                except UnicodeEncodeError:
                    raise CanonicalError(f"{path}: key {k!r} is not valid Unicode (lone surrogate)") from None
            _check(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
    else:
        raise CanonicalError(f"{path}: {type(value).__name__} is not allowed in canonical JSON")


def _plainly_canonical(obj: dict[Any, Any]) -> bool:
    """True when `obj` holds only string keys and plain strings, safe integers and objects of them (what records are
    made of). A sufficient condition for `_check` to pass, never a necessary one: False means "run the full check"."""
    for k, v in obj.items():
        if type(k) is not str:
            return False
        t = type(v)
        if t is str or (t is int and _MIN_SAFE_INT <= v <= MAX_SAFE_INT) or (t is dict and _plainly_canonical(v)):
            continue
        return False
    return True


def canonical_bytes(obj: dict[str, Any]) -> bytes:
    """UTF-8 JCS bytes of `obj`; raises `CanonicalError` naming the first value that has no canonical form."""
    _check(obj, "$")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def canonical_text(obj: dict[str, Any], *, where: str = "$") -> str:
    """`canonical_bytes(obj)` as text, the fast way (see the module docstring). `where` names `obj` in errors, e.g.
    "data" gives "data.energy_mwh: float is not allowed ..."."""
    if not _plainly_canonical(obj):
        _check(obj, where)
    text = _ENCODER.encode(obj)
    if not text.isascii():  # the fast pass does not look inside strings: one that cannot be UTF-8 is refused here
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _check(obj, where)
    return text


_ORJSON_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER  # sorted keys; |n| <= 2**53-1 or it raises
_LEAVES = frozenset({str, int})


def _plain_parsed(obj: dict[str, Any]) -> bool:
    """True when a freshly parsed object holds only strings, integers and objects of them (types looked at in C, one
    set per object); arrays, floats, booleans and null answer False (the slow path decides about them)."""
    kinds = set(map(type, obj.values()))
    if kinds <= _LEAVES:
        return True
    if not kinds <= {str, int, dict}:
        return False
    return all(map(_plain_parsed, [v for v in obj.values() if type(v) is dict]))


def parse_canonical(body: bytes) -> dict[str, Any]:
    """The JSON object `body` holds, when `body` is exactly its canonical bytes (`canonical_bytes(obj) == body`).
    Raises `ValueError` when `body` is not JSON or not an object (`UnicodeDecodeError` and `json.JSONDecodeError`
    are ValueErrors), `CanonicalError` when the object has no canonical form, and `NotCanonical` when it has one but
    `body` is spelt otherwise (key order, spaces, escapes, duplicate keys...).

    Fast path: orjson parses, and re-encodes with sorted keys and the 2**53 limit; orjson writes strings exactly as
    `json.dumps(..., ensure_ascii=False)` does (tests/koto/test_canonical.py compares every code point), so equal
    bytes prove `canonical_bytes(obj) == body`. Any other outcome takes the definition's path."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if type(obj) is dict and _plain_parsed(obj):
            try:
                if orjson.dumps(obj, option=_ORJSON_CANONICAL) == body:
                    return obj
            except orjson.JSONEncodeError:  # an integer beyond 2**53-1: the slow path names it
                pass
    return _parse_canonical_slowly(body)


def _parse_canonical_slowly(body: bytes) -> dict[str, Any]:
    obj = json.loads(body.decode("utf-8"))
    if not isinstance(obj, dict):
        raise NotCanonical("not a JSON object")
    if canonical_text(obj).encode("utf-8") != body:
        raise NotCanonical("not in canonical form")
    return obj


def json_string(text: str) -> str:
    """The canonical JSON literal of one string (quoted and escaped), for canonical text assembled from pieces."""
    return _ENCODER.encode(text)


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


_DAY_PREFIX: dict[int, str] = {}  # days since 1970 -> "YYYY-MM-DDT" (a gateway sees few distinct days)


def rfc3339_ms(ms: int) -> str:
    """`rfc3339(ms / 1000)` for integer milliseconds, without a datetime per call: the ledger formats the `time` of
    every record with it (tests/koto/test_canonical.py checks the two agree over the whole range up to year 9999)."""
    s, frac = divmod(ms, 1000)
    day, sod = divmod(s, 86400)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        tm = time.gmtime(day * 86400)
        prefix = f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
        if len(_DAY_PREFIX) >= 1024:
            _DAY_PREFIX.clear()
        _DAY_PREFIX[day] = prefix
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    return f"{prefix}{hh:02d}:{mm:02d}:{ss:02d}.{frac:03d}Z"


RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})")
"""An RFC 3339 time as the contract's schemas write it (common.json `time`), for `fullmatch`."""


def parse_rfc3339(text: str) -> float:
    """Inverse of `rfc3339` (accepts any RFC 3339 offset, and the other ISO 8601 forms `datetime` reads: check
    outside text against `RFC3339` first)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
