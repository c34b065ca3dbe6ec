"""The drivers' errors, all under `koto.errors.KotoError`; each also subclasses the matching built-in (gpiozero's
exc.py style), so code that expects a `ValueError` or a `RuntimeError` keeps working."""

from __future__ import annotations

from koto.errors import FieldError, KotoError


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
