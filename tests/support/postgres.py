"""A real PostgreSQL server for the receiver's store tests: the one named by KOTO_TEST_PG_DSN, or one of our own.

Without KOTO_TEST_PG_DSN the tests start a throw-away cluster (initdb into a temporary folder, a free port, a Unix
socket in that folder, trust authentication) and stop and delete it at the end of the session, so `make test` on a
fresh machine runs the PostgreSQL tests instead of skipping them. PostgreSQL refuses to run as root; started by
root, the server runs as the `postgres` system user (which Debian's package creates).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.slow import scaled

from .ports import free_port

INSTALL_HINT = "install PostgreSQL (Debian: apt-get install postgresql; `make system-deps` does it)"


def _bindir() -> Path:
    """The folder holding initdb and pg_ctl: Debian keeps them out of PATH, under /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError(f"no PostgreSQL server binaries (initdb) on this machine; {INSTALL_HINT}")
    return Path(candidates[-1]).parent


class PostgresServer:
    """`with PostgresServer() as pg: pg.dsn` — a private cluster on 127.0.0.1, gone after the block."""

    def __init__(self) -> None:
        self.bin = _bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="koto-pg-"))
        self.data = self.root / "data"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")

    def __enter__(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                  "-t", str(int(scaled(60))), "start")
        deadline = time.monotonic() + scaled(15)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL is not listening on {self.port}: {self.root}/server.log") from None
                time.sleep(0.1)

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
