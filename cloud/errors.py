"""One error root for the reference receiver. Each error says, in plain words, what is wrong and what to do."""

from __future__ import annotations


class KotoError(Exception):
    """Root of every error raised on purpose by `cloud`."""


class ConfigError(KotoError, ValueError):
    """A command-line option, file or URL that cannot be used; names it and says what is allowed."""


class StoreError(KotoError):
    """The database cannot be opened or used (bad DSN, unreachable server, unwritable file)."""


class Rejected(KotoError, ValueError):
    """An uplink message that is not stored: malformed, unknown gateway, bad signature, wrong topic.

    `kind` is a short stable counter name (e.g. ``"bad_signature"``); the message is the plain-words reason.
    """

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


class CommandError(KotoError):
    """A downlink command that cannot be built or sent (bad payload, no reply in time)."""
