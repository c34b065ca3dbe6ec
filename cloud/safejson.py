"""JSON from untrusted bytes with the limits Python's `json` lacks: size, nesting depth, duplicate keys, huge ints.

`json.loads` recurses once per nesting level, in C and then in Python, and has no depth limit: thirty kilobytes of
`[[[[...` end in RecursionError, which is not a ValueError, so a plain `except ValueError` lets it through and it
stopped the whole receiver (issue 14). So the size is checked first, then the depth by a byte-level scan, and only
then does `json.loads` run:

- the scan's fast path is two `bytes.count` calls in C: a payload with no more `[` and `{` bytes than the depth limit
  cannot nest deeper than it, and every contract message has a handful of them; only a payload with more brackets
  (counting those inside strings) is scanned token by token (strings skipped, brackets counted), by one regular
  expression in C, in linear time even for unterminated strings;
- duplicate object keys are refused: a signed record whose key appears twice means one thing to us (the last value
  wins in Python) and another to a verifier that keeps the first, so no such message is stored;
- NaN and Infinity are refused (they are not JSON); integers are range-checked by whoever uses them (Python's own
  limit refuses literals of more than 4,300 digits). A `parse_int` hook that refused long literals here cost a
  third of the parse time of a record; the duplicate-key hook costs about 6 us a record (noisy 2-core figures).

Every refusal is `Rejected` with a stable `kind` (`too_large`, `too_deep`, `malformed`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import Rejected

MAX_DEPTH = 32  # contract messages nest at most 4 levels (a diagnostics reply's report sections)

# A JSON string (possibly unterminated: it then runs to the end, so no quote is scanned twice) or one bracket.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*+"?|[\[\]{}]', re.DOTALL)
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")


class _Refused(ValueError):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Refused("malformed", f"key {dup[:40]!r} appears twice in one object")
    return obj


def _constant(name: str) -> Any:
    raise _Refused("malformed", f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant)


def too_deep(payload: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether `payload` nests arrays/objects more than `limit` deep (brackets inside strings do not count)."""
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    depth = 0
    for m in _TOKEN.finditer(payload):
        c = m.group()[0]
        if c in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif c in _CLOSE:
            depth -= 1
    return False


def load_object(payload: bytes, *, max_bytes: int, what: str = "payload", max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Parse `payload` as one JSON object within the limits; raises `Rejected` (never anything else) otherwise."""
    if len(payload) > max_bytes:
        raise Rejected("too_large", f"{what} of {len(payload)} bytes is above the {max_bytes}-byte limit")
    if too_deep(payload, max_depth):
        raise Rejected("too_deep", f"{what} nests arrays or objects more than {max_depth} levels deep")
    try:
        text = payload.decode("utf-8")
        value = _DECODER.decode(text)
    except _Refused as e:
        raise Rejected(e.kind, f"{what}: {e}") from None
    except UnicodeDecodeError:
        raise Rejected("malformed", f"{what} is not UTF-8") from None
    except ValueError as e:  # json.JSONDecodeError and int()'s own limits
        raise Rejected("malformed", f"{what} is not JSON ({str(e)[:120]})") from None
    if not isinstance(value, dict):
        raise Rejected("malformed", f"{what} is not a JSON object")
    return value
