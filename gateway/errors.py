"""The gateway's errors, all under `koto.errors.KotoError`, so `koto` prints any of them as one plain line."""

from __future__ import annotations

from koto.errors import FieldError, KotoError


class ConfigError(FieldError):
    """A gateway configuration that cannot be used: names the file and the dotted key, and says what is allowed."""


class NotProvisioned(KotoError, FileNotFoundError):
    """The state directory has no device key yet: run `koto provision` first."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        super().__init__(f"{state_dir}: no device key; run `koto provision --state-dir {state_dir}` first")


class StateError(KotoError):
    """The state folder is in a state a command must not change (a ledger a new key would orphan, a running writer).

    Names the path and says what to do."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class UnknownName(KotoError):
    """A name on the command line that the gateway does not know (a mistyped appliance): says which ones it knows."""

    def __init__(self, what: str, name: str, known: list[str]) -> None:
        self.what, self.name, self.known = what, name, known
        super().__init__(f"no {what} named {name!r} (known: {', '.join(known) or 'none yet'})")


class DaemonFailed(KotoError):
    """`koto run` stopped because one of its tasks failed in a way a restart of it cannot mend (a source's
    configuration, the ledger file deleted under it, a bug). Names the task and carries the error."""

    def __init__(self, task: str, error: BaseException) -> None:
        self.task = task
        self.error = error
        text = str(error) or type(error).__name__
        super().__init__(text if isinstance(error, KotoError) else f"{task} failed: {type(error).__name__}: {text}")
