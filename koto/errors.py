"""The one error root of Koto, and the form every "this value in this file is wrong" error takes.

Every error Koto raises on purpose derives from `KotoError`, whichever package raises it (each package keeps its own
module of specific errors, all under this root), so a command line or a supervisor catches one class and prints one
plain line. Each error also subclasses the matching built-in where there is one (gpiozero's `exc.py` style), so
code that expects a `ValueError` keeps working.

`FieldError` is the common shape of configuration, profile, tariff and command errors: the file (or where the value
came from), the dotted key, and the problem in plain words, including what is allowed.
"""

from __future__ import annotations

import errno


class KotoError(Exception):
    """Root of every error raised on purpose by Koto (koto, metering, drivers, gateway, cloud)."""


class FieldError(KotoError, ValueError):
    """A value that cannot be used. Names the file (or origin), the dotted key, and what is wrong and allowed."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        # A problem of the whole file (not found, not TOML) has no key: "FILE: problem", not "FILE: : problem".
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


_ADVICE = {
    errno.EACCES: "permission denied; run the command as the koto user (sudo -u koto koto ...), or give the folder "
                  "to that user (sudo chown -R koto:koto on the folder)",
    errno.EPERM: "operation not permitted; run the command as the koto user (sudo -u koto koto ...)",
    errno.ENOSPC: "the disk is full; free some space (journalctl --vacuum-size=50M, old files) and try again",
    errno.EDQUOT: "the disk quota is used up; free some space and try again",
    errno.EFBIG: "the file is too large for this file system or its limit; free space or raise the limit",
    errno.EROFS: "the file system is read-only; remount it read-write (or check the SD card: it may be failing)",
    errno.EIO: "input/output error; the SD card or disk may be failing: back up the state folder and replace it",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENOTDIR: "a part of the path is not a folder; check the path",
    errno.EISDIR: "is a folder, not a file; check the path",
}


def explain_os_error(e: OSError) -> str:
    """One line for an OS error a person can act on: the path, what is wrong, and what to do (never a traceback).
    A permission error names who owns the path (or the folder that would hold it), the usual cause being a state
    folder made by root for a service that runs as `koto`."""
    path = str(e.filename) if e.filename is not None else ""
    advice = _ADVICE.get(e.errno or 0) or (e.strerror or str(e))
    if path and e.errno in (errno.EACCES, errno.EPERM):
        from pathlib import Path

        from .files import owner_of

        target = Path(path)
        try:
            target.stat()
        except OSError:  # missing, or itself beyond reach: name the folder that would hold it
            target = target.parent
        advice = f"{advice} ({target} is owned by {owner_of(target)})"
    return f"{path}: {advice}" if path else advice


__all__ = ["FieldError", "KotoError", "explain_os_error"]
