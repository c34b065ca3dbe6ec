"""How every Koto process reaches a broker: the broker URL, the client TLS context, and the reconnect backoff.

The gateway (`gateway/sync.py`, the source supervisor in `gateway/daemon.py`), the config loader and the reference
receiver (`cloud/`) all need the same three rules, and each used to write its own, with different answers (one URL
parser allowed a path, another did not; one backoff reached 1.5x its cap). They live here, below every layer, so
there is one answer. Only the standard library is used: no MQTT client is imported here, so this module costs
nothing to a process that never connects (the config loader, `koto verify`).
"""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import FieldError

MQTT_PORT = 1883
MQTTS_PORT = 8883
_USE = "use mqtt://host:1883 or mqtts://host:8883"


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """Where a broker is: host, port, and whether the connection is TLS (`mqtts://`)."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str, *, file: str = "<config>", key: str = "cloud.broker") -> BrokerURL:
    """`mqtt://host[:1883]` or `mqtts://host[:8883]`; anything else raises `FieldError(file, key, problem)`.

    Only scheme, host and port are allowed: a path, user or query would be silently ignored by the MQTT client, so
    a URL carrying one is more likely a mistake (a password in the wrong place, an HTTP URL) than an intention.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise FieldError(file, key, f"{url!r} is not a URL ({e}); {_USE}") from e
    if parts.scheme not in ("mqtt", "mqtts"):
        raise FieldError(file, key, f"scheme {parts.scheme!r} is not allowed; use mqtt:// or mqtts://")
    if not parts.hostname:
        raise FieldError(file, key, f"{url!r} has no host; {_USE}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise FieldError(file, key, f"{url!r}: only scheme, host and port are allowed (no path, user or query)")
    tls = parts.scheme == "mqtts"
    return BrokerURL(parts.hostname, port or (MQTTS_PORT if tls else MQTT_PORT), tls)


def tls_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client TLS context: verify the broker against `ca` (the system CAs if None), present `cert`/`key` if given.

    TLS 1.2 is the floor (Mosquitto 2.0 and every cloud broker speak it) and hostname checking stays on: the broker's
    certificate must name the host in the URL. Loading a missing or unreadable file raises OSError or ssl.SSLError,
    which the callers report as a configuration problem.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


class Backoff:
    """Capped exponential backoff with jitter: the base doubles from `initial_s` up to `cap_s`, each wait is drawn
    uniformly from [base/2, base].

    The cap bounds the wait after any outage, however long: a broker (or a serial adapter) that comes back is tried
    again within `cap_s`, where an uncapped doubling after a two-minute outage would wait a minute or more. The
    jitter spreads a fleet's reconnects after a broker restart, and never waits longer than the base, so `cap_s` is
    the longest wait there is. Call `reset()` once a connection has proved good (how long that takes is the
    caller's rule: the sync wants a session that lasted, the receiver a subscription).
    """

    def __init__(self, initial_s: float = 0.5, cap_s: float = 5.0, *, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= cap_s:
            raise ValueError(f"backoff needs 0 < initial_s <= cap_s (got {initial_s}, {cap_s})")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._base = initial_s
        self._rng = rng if rng is not None else random.Random()

    def next(self) -> float:
        """The next wait in seconds (and the base doubles, up to the cap)."""
        base = self._base
        self._base = min(self.cap_s, base * 2)
        return base / 2 + self._rng.random() * base / 2

    def reset(self) -> None:
        """Start again from `initial_s` (after a connection that proved good)."""
        self._base = self.initial_s


__all__ = ["MQTTS_PORT", "MQTT_PORT", "Backoff", "BrokerURL", "parse_broker_url", "tls_context"]
