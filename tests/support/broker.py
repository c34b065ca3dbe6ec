"""A real Mosquitto broker process for tests and benches, on a free port, that can be stopped and restarted.

    with Mosquitto(tmp_path) as broker:            # plain, anonymous
    with Mosquitto(tmp_path, pki=pki) as broker:   # TLS, client certificates, CN = username, per-gateway ACL

The TLS variant uses deploy/mosquitto/koto.conf's rules (identity from the certificate, ACL `pattern` on %u), so
the tests exercise what operators deploy. Pitfalls handled: `listener 0` is not an ephemeral port (we bind a socket
to port 0 to pick one); started as root Mosquitto drops to the `mosquitto` user unless told `user root`; its stdout
log is buffered, so it logs to a file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.support.slow import scaled

from .pki import TestPKI
from .ports import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
DEFAULT_ACL = (DEPLOY / "acl").read_text()  # what operators deploy is what the tests run
DEPLOY_FLOW = {"max_inflight_messages", "max_queued_messages", "max_queued_bytes"}


def deploy_tls_lines(*, ca: Path, cert: Path, key: Path, acl_file: Path) -> list[str]:
    """deploy/mosquitto/koto.conf with its file paths swapped for the test PKI's, and without its `listener`
    (the test picks a free port) or the settings the test base config already sets."""
    swap = {"cafile": ca, "certfile": cert, "keyfile": key, "acl_file": acl_file}
    out = []
    for raw in (DEPLOY / "koto.conf").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split()[0]
        if name == "listener":
            continue
        out.append(f"{name} {swap[name]}" if name in swap else line)
    return out


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("mosquitto is not installed: `make test` installs it (apt-get install mosquitto)")


class Mosquitto:
    def __init__(self, folder: Path, *, pki: TestPKI | None = None, acl: str | None = None,
                 port: int | None = None, anonymous: bool = True) -> None:
        self.folder = Path(folder)
        self.anonymous = anonymous  # plain only: False refuses every CONNECT (no password file): "not authorised"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "mosquitto.log"
        self.conf = self.folder / "mosquitto.conf"
        self.acl = acl if acl is not None else DEFAULT_ACL
        self._write_conf()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.pki else 'mqtt'}://{self.host}:{self.port}"

    def _write_conf(self) -> None:
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "persistent_client_expiration 7d",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        if self.pki:
            acl_file = self.folder / "acl"
            acl_file.write_text(self.acl)
            # The deployed flow and queue limits replace the plain broker's (unlimited in-flight, for the benches).
            lines = [line for line in lines if line.split()[0] not in DEPLOY_FLOW]
            base = {line.split()[0] for line in lines}
            lines += [line for line in deploy_tls_lines(ca=self.pki.ca, cert=self.pki.server.cert,
                                                        key=self.pki.server.key, acl_file=acl_file)
                      if line.split()[0] not in base]
        else:
            lines.append(f"allow_anonymous {'true' if self.anonymous else 'false'}")
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                self.proc = None
                raise RuntimeError(f"mosquitto exited at start: {err}\n{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=scaled(10))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
