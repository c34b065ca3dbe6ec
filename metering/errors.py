"""One error root for the metering package. Errors carry the data a caller needs to act on them."""

from __future__ import annotations


class KotoError(Exception):
    """Root of every error raised on purpose by `metering`."""


class ProfileError(KotoError, ValueError):
    """An appliance profile that cannot be used. Names the file and the key, and says what is allowed."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}")


class RejectedReading(KotoError, ValueError):
    """A reading that must never reach a total (wrong quantity, NaN, negative register, beyond the maximum)."""

    def __init__(self, source: str, reason: str, value: object = None) -> None:
        self.source = source
        self.reason = reason
        self.value = value
        super().__init__(f"{source}: reading rejected: {reason} (value {value!r})")


class LedgerError(KotoError):
    """The ledger database is unusable (corrupt, wrong gateway, not writable)."""


class ChainError(LedgerError):
    """A stored record whose hash, chain link or signature does not verify."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"seq {seq}: {reason}")


class TariffError(KotoError, ValueError):
    """A tariff that cannot be used. Names where it came from, the key, and what is allowed."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}")


class EntitlementError(KotoError, ValueError):
    """An entitlement that cannot be used. Names where it came from, the key, and what is allowed."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}")
