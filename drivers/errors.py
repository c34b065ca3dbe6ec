"""One error root for drivers; each error also subclasses the matching built-in (gpiozero's exc.py style)."""

from __future__ import annotations


class KotoError(Exception):
    """Root of every error raised on purpose by `drivers`."""


class DriverConfigError(KotoError, ValueError):
    """A source's configuration is unusable. Names the source (and file, when known) and the key."""

    def __init__(self, source: str, key: str, problem: str, file: str = "") -> None:
        self.source = source
        self.key = key
        self.problem = problem
        self.file = file
        where = f"{file}: " if file else ""
        super().__init__(f"{where}source {source!r}: {key}: {problem}")


class UnknownDriver(DriverConfigError):
    pass


class BackendUnavailable(KotoError, RuntimeError):
    """The library or device a backend needs is not there (no BlueZ, no lgpio, no serial port)."""


class FrameError(KotoError, ValueError):
    """A frame or advert that cannot be decoded. `kind` is the health counter it is counted under."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")
