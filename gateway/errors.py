"""One error root for the gateway package. Errors carry the data a caller needs (file, key, what is allowed)."""

from __future__ import annotations


class KotoError(Exception):
    """Root of every error raised on purpose by `gateway`."""


class ConfigError(KotoError, ValueError):
    """A configuration that cannot be used: names the file and the key, and says what is allowed."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}")


class NotProvisioned(KotoError, FileNotFoundError):
    """The state directory has no device key yet: run `koto provision` first."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        super().__init__(f"{state_dir}: no device key; run `koto provision --state-dir {state_dir}` first")
