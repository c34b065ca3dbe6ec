"""The drivers' errors, all under `koto.errors.KotoError`; each also subclasses the matching built-in (gpiozero's
exc.py style), so code that expects a `ValueError` or a `RuntimeError` keeps working."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from koto.errors import FieldError, KotoError

T = TypeVar("T")


class DriverConfigError(FieldError):
    """A source's configuration is unusable: a `FieldError` that also names the source.

    A driver knows the source and its own key but not the file; `drivers.base.build_source`, which is told the
    file, raises it again with the file filled in.
    """

    def __init__(self, source: str, key: str, problem: str, file: str = "") -> None:
        self.source = source
        super().__init__(file, key or '""', problem)  # TOML allows an empty key: name it as written, ""

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}source {self.source!r}: {self.key}: {self.problem}"

    def each(self) -> tuple[DriverConfigError, ...]:
        """Every problem this error carries: itself here, each one of a `DriverConfigErrors`."""
        return (self,)

    def in_file(self, file: str) -> DriverConfigError:
        """The same problem naming `file`, unless it already names one (a register map's own file)."""
        return self if self.file or not file else DriverConfigError(self.source, self.key, self.problem, file)


class DriverConfigErrors(DriverConfigError):
    """Every independent problem of one source's configuration, found in one reading of it (`koto check` prints
    one line each). `source`, `key`, `problem` and `file` are the first one's, so code that handles one
    `DriverConfigError` still works; `str()` is the first problem and how many more there are."""

    def __init__(self, errors: Iterable[DriverConfigError]) -> None:
        self.errors = tuple(one for e in errors for one in e.each())
        first = self.errors[0]
        super().__init__(first.source, first.key, first.problem, first.file)

    def __str__(self) -> str:
        more = len(self.errors) - 1
        return f"{self.errors[0]} (and {more} more in this source; koto check lists every one)"

    def each(self) -> tuple[DriverConfigError, ...]:
        return self.errors

    def in_file(self, file: str) -> DriverConfigError:
        return DriverConfigErrors(e.in_file(file) for e in self.errors)


class SourceProblems:
    """Collects the problems of one source's configuration while its `from_config` reads every key, instead of
    stopping at the first: a bad value is recorded and reading goes on; `raise_if_any()`, before anything is built,
    raises one `DriverConfigError`, or a `DriverConfigErrors` for several. A check that depends on a value already
    found bad (`min` against a bad `max`) is skipped (`bad(key)`), so no confusing follow-on problem is said."""

    def __init__(self, source: str, file: str = "") -> None:
        self.source = source
        self.file = file
        self.errors: list[DriverConfigError] = []

    def add(self, key: str, problem: str) -> None:
        self.errors.append(DriverConfigError(self.source, key, problem, self.file))

    def add_error(self, e: DriverConfigError) -> None:
        self.errors.extend(e.each())

    def check(self, read: Callable[[], T]) -> T | None:
        """What `read()` returns, or None with its problems recorded (a part read by a function that raises)."""
        try:
            return read()
        except DriverConfigError as e:
            self.add_error(e)
            return None

    def bad(self, *keys: str) -> bool:
        """Whether a problem was recorded at any of `keys`."""
        return any(e.key in keys for e in self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise DriverConfigErrors(self.errors)


class UnknownDriver(DriverConfigError):
    """A source names a driver that is not in `drivers.base.REGISTRY`."""


class BusSettingsConflict(KotoError, ValueError):
    """Two sources on one serial port asked for different line settings (baud, parity...)."""


class BackendUnavailable(KotoError, RuntimeError):
    """The library or device a backend needs is not there (no BlueZ, no lgpio, no serial port)."""


class FrameError(KotoError, ValueError):
    """A frame or advert that cannot be decoded. `kind` is the health counter it is counted under."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


class ProbeRequestError(KotoError, ValueError):
    """A discovery asked for something that cannot exist (a missing port, address 300, 9601 baud).

    `problems` has one line each, naming the option, so the command line prints them all and exits 2 instead of
    probing for a minute and reporting that nothing answered."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))
