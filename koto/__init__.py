"""Koto's shared vocabulary: the types and encodings every layer agrees on.

`koto` sits below the three layers (`drivers`, `metering`, `gateway`) and the reference cloud: it holds the one
`Reading` type drivers produce and the meter consumes, the canonical JSON form and the ECDSA signature rule that the
ledger, the sync and the receiver all must compute byte for byte the same way, and the clock snapshot. It depends on
nothing but the standard library and `cryptography`, so every layer may import it without breaking the layering.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("koto-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
