"""How much slower this machine is than the one the tests' timeouts were chosen on: `KOTO_TEST_SLOWDOWN`.

The timeouts in the tests only turn a hang into a failure; they are never timing assertions. On a slow target
(a Pi 3, or `make test-arm64`'s arm64 root under qemu, 5-10x slower) a wait that is generous here can still run out,
so every such wait goes through `scaled()`: `KOTO_TEST_SLOWDOWN=8 pytest` waits eight times longer. Unset, it is 1.
"""

from __future__ import annotations

import os


def _factor() -> float:
    raw = os.environ.get("KOTO_TEST_SLOWDOWN", "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"KOTO_TEST_SLOWDOWN={raw!r}: expected a number such as 8") from None
    if not 1.0 <= value <= 1000.0:
        raise SystemExit(f"KOTO_TEST_SLOWDOWN={raw!r}: expected a factor from 1 to 1000")
    return value


SLOWDOWN = _factor()


def scaled(seconds: float) -> float:
    """A hang timeout of `seconds` on this machine, stretched by KOTO_TEST_SLOWDOWN."""
    return seconds * SLOWDOWN
