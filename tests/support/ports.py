"""Free TCP ports for the servers the tests start, chosen outside the kernel's ephemeral port range.

A port the kernel handed out for `bind(0)` is in the ephemeral range, the same range every outgoing connection
takes its source port from. A broker that is stopped and started again on its port, or configured first and started
later, can then find it taken: by any process's outgoing connection, or by the gateway's own reconnects to that
port, which with nothing listening can connect to themselves (TCP simultaneous open: source port = destination
port). Both were seen (`Error: Address already in use` at a broker's restart in `make test`). A port below the
range is never given to an outgoing connection.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10000


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return lo, hi


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now, below the ephemeral range (when there is room below it)."""
    lo, _hi = ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200 if lo > LOWEST + 1000 else 0):
        port = rng.randrange(LOWEST, lo)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
