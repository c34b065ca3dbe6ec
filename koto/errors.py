"""The one error root of Koto, and the form every "this value in this file is wrong" error takes.

Every error Koto raises on purpose derives from `KotoError`, whichever package raises it (each package keeps its own
module of specific errors, all under this root), so a command line or a supervisor catches one class and prints one
plain line. Each error also subclasses the matching built-in where there is one (gpiozero's `exc.py` style), so
code that expects a `ValueError` keeps working.

`FieldError` is the common shape of configuration, profile, tariff and command errors: the file (or where the value
came from), the dotted key, and the problem in plain words, including what is allowed.
"""

from __future__ import annotations


class KotoError(Exception):
    """Root of every error raised on purpose by Koto (koto, metering, drivers, gateway, cloud)."""


class FieldError(KotoError, ValueError):
    """A value that cannot be used. Names the file (or origin), the dotted key, and what is wrong and allowed."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}")


__all__ = ["FieldError", "KotoError"]
