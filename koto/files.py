"""Writing a file so that a crash, a power cut or a full disk leaves either the old file or the new one, never half.

The bytes go to a temporary file beside the target (same folder, so the same file system), are fsynced, and the
temporary file is renamed over the target; then the folder is fsynced so the rename itself survives a power cut. If
anything fails (ENOSPC, EFBIG, EIO) the temporary file is removed and the error raised: the target is untouched.
Used for the device key, its public key and, later, configuration files written by the gateway itself.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data`, all or nothing; the file has `mode` from its first byte (0600 stays private)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # the umask may have narrowed it; never widened beyond `mode`
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where folders cannot be opened, e.g. some FUSE)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def owner_of(path: Path) -> str:
    """The user name owning `path` (or its uid, or "?" when it cannot be seen)."""
    import pwd

    try:
        uid = path.stat().st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def access_problem(path: Path, *, write: bool) -> str:
    """Why this process cannot read (or, with `write`, write) `path` and create files beside it, in words that say
    what to do; "" when it can. SQLite in WAL mode needs to create `-wal`/`-shm` files beside a database even to read
    it, so the folder must be writable too."""
    folder = path.parent
    me = _me()
    for target, mode, what in ((folder, os.W_OK | os.X_OK, "folder"), (path, os.R_OK | (os.W_OK if write else 0),
                                                                         "file")):
        if target.exists() and not os.access(target, mode):
            owner = owner_of(target)
            verb = "writable" if mode & os.W_OK else "readable"
            return (f"{target}: {what} owned by {owner}, not {verb} by {me}; run the command as {owner} "
                    f"(sudo -u {owner} koto ...), or give the state folder to the user the service runs as "
                    f"(sudo chown -R koto:koto {folder if what == 'file' else target})")
    return ""


def _me() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"
