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


def _where(e: FieldError) -> str:
    """Where a problem is, for telling repeats apart: a driver's key is its own (`baud`), so the source is added."""
    source = getattr(e, "source", None)
    return f"{e.file}:{source}:{e.key}" if source else f"{e.file}:{e.key}"


class ConfigErrors(ConfigError):
    """Every problem found in one pass over a config file (`koto check --config` prints them all).

    Each item of `errors` is a `FieldError` naming the file and the key; `file`, `key` and `problem` are the first
    one's, so code that handles one `ConfigError` still works, and `str()` is one line per problem."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.file, first.key, first.problem)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class Problems:
    """Collects the problems of one config file in order, instead of stopping at the first.

    A problem at a key under one already recorded (`appliance.washer.sources` after `appliance.washer`) is a
    consequence, not news, and is dropped; so is the same key twice."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []
        self._seen: set[str] = set()

    def add(self, e: FieldError) -> None:
        where = _where(e)
        parts = where.split(".")
        if any(".".join(parts[:i]) in self._seen for i in range(1, len(parts) + 1)):
            return
        self._seen.add(where)
        self.items.append(e)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """One problem is raised as itself (its own type: an `UnknownDriver` stays one); several as `ConfigErrors`."""
        if len(self.items) == 1:
            raise self.items[0]
        if self.items:
            raise ConfigErrors(self.items)
