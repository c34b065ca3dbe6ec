"""Koto's shared vocabulary: the types and encodings every layer agrees on.

`koto` sits below the three layers (`drivers`, `metering`, `gateway`) and the reference cloud: it holds the one
`Reading` type drivers produce and the meter consumes, the canonical JSON form and the ECDSA signature rule that the
ledger, the sync and the receiver all must compute byte for byte the same way, and the clock snapshot. It depends on
nothing but the standard library and `cryptography`, so every layer may import it without breaking the layering.
"""

from __future__ import annotations

import sys
from pathlib import Path

DIST = "koto_gateway"  # the distribution koto-gateway, as its metadata folder spells it


def _version() -> str:
    """The installed version, read off the first metadata folder on sys.path (as importlib.metadata finds it).

    importlib.metadata parses the file with the `email` package, which with zipfile and csv costs the resident daemon
    about 2 MiB of RSS (bench/daemon_cost.py) for one line; a layout this does not know falls back to it."""
    for entry in sys.path:
        try:
            folder = Path(entry or ".")
            found = [*sorted(folder.glob(f"{DIST}-*.dist-info/METADATA")),
                     *sorted(folder.glob(f"{DIST}*.egg-info/PKG-INFO"))]
        except OSError:
            continue
        for meta in found:
            try:
                with meta.open(encoding="utf-8") as f:
                    for line in f:
                        if line.startswith("Version:"):
                            return line.split(":", 1)[1].strip()
                        if not line.strip():
                            break  # the end of the headers
            except OSError:
                continue
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("koto-gateway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


__version__ = _version()

__all__ = ["__version__"]
