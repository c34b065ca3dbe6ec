"""The installer's PIN: set at provisioning (`koto provision --set-pin`), asked by the status page before changes.

Only a salted hash is stored: scrypt (hashlib, the standard library's memory-hard KDF) with a random 16-byte salt,
in `{state_dir}/keys/installer-pin`, mode 0600, as one line `scrypt$N$r$p$salt-hex$hash-hex`, so the parameters
can be raised later without breaking stored PINs. A PIN is 4 to 12 digits: the household's installer types it on
a phone. Guessing is slowed by `Tries` (the page allows a few tries, then makes each source wait longer).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from koto.errors import KotoError
from koto.files import write_atomic

PIN_FILE = "installer-pin"
N, R, P = 2**14, 8, 1  # 16 MiB, ~50 ms on a Pi 4: slow for a guesser, quick for one login
MIN_DIGITS, MAX_DIGITS = 4, 12


class PinError(KotoError, ValueError):
    """A PIN that cannot be used (not 4-12 digits), or a PIN file that cannot be read."""


def pin_path(state_dir: Path) -> Path:
    return state_dir / "keys" / PIN_FILE


def check_pin_text(pin: str) -> str:
    if not (pin.isdigit() and pin.isascii() and MIN_DIGITS <= len(pin) <= MAX_DIGITS):
        raise PinError("a PIN is four to twelve digits (0-9)")
    return pin


def pin_from_lines(lines: Iterable[str]) -> str:
    """The PIN as a script gives it (stdin that is not a terminal): twice, one line each, and the same both times.

    No second chance: a bad PIN, a different repeat or too few lines is a `PinError` saying what to give."""
    it = iter(lines)
    first = next(it, None)
    if first is None:
        raise PinError("no installer PIN on stdin: give it twice, one line each "
                       "(printf '%s\\n%s\\n' \"$PIN\" \"$PIN\" | koto provision --set-pin)")
    try:
        pin = check_pin_text(first.strip())
    except PinError as e:
        raise PinError(f"installer PIN on stdin: {e}") from None
    second = next(it, None)
    if second is None:
        raise PinError("the installer PIN is given twice on stdin, one line each; stdin ended after the first")
    if second.strip() != pin:
        raise PinError("the two installer PINs on stdin differ: give the same PIN twice, one line each")
    return pin


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=N, r=R, p=P, maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def verify_pin(pin: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.strip().split("$")
        if algo != "scrypt":
            return False
        got = hashlib.scrypt(pin.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def save_pin(state_dir: Path, pin: str) -> Path:
    path = pin_path(state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, (hash_pin(check_pin_text(pin)) + "\n").encode(), mode=0o600)
    return path


def load_pin_hash(state_dir: Path) -> str | None:
    """The stored hash, or None when no PIN was set (the page then allows no changes at all)."""
    try:
        return pin_path(state_dir).read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PinError(f"{pin_path(state_dir)}: {e.strerror}") from e


@dataclass
class Tries:
    """Rate limit for PIN tries: `free` tries per client, then each further try must wait twice as long as the last
    (1 s, 2 s, 4 s ... capped at `cap_s`); a right PIN clears the client's count. Clients are few on a LAN."""

    free: int = 5
    cap_s: float = 300.0
    _failed: dict[str, tuple[int, float]] = field(default_factory=dict)  # client -> (failures, last failure)

    def wait_s(self, client: str, now: float | None = None) -> float:
        """Seconds the client must still wait before its next try (0: it may try now)."""
        n, last = self._failed.get(client, (0, 0.0))
        if n < self.free:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, last + min(self.cap_s, 2.0 ** (n - self.free)) - now)

    def failed(self, client: str, now: float | None = None) -> None:
        n, _ = self._failed.get(client, (0, 0.0))
        self._failed[client] = (n + 1, time.monotonic() if now is None else now)
        if len(self._failed) > 1000:  # bounded: forget the oldest
            del self._failed[next(iter(self._failed))]

    def succeeded(self, client: str) -> None:
        self._failed.pop(client, None)
