"""A real RabbitMQ cluster for tests and benches: two or three nodes on loopback, MQTT plugin on, own ports.

    with RabbitCluster(tmp_path, nodes=3) as rc:
        rc.amqp_url            # amqp://guest:guest@127.0.0.1:PORT/ of the first running node
        rc.nodes[0].mqtt_port  # each node has its own MQTT listener
        rc.kill(1); rc.start(1) # kill -9 one node and bring it back (it rejoins with its data)

Each node is Debian's rabbitmq-server (3.10 here; /usr/lib/rabbitmq/bin, not the /usr/sbin wrapper, which switches
to the `rabbitmq` user and drops our environment) with its own RABBITMQ_NODENAME (`kotoNNNN-i@localhost`), AMQP,
distribution and MQTT ports picked free, RABBITMQ_MNESIA_BASE / RABBITMQ_LOG_BASE in the test's folder, and a
HOME holding the shared Erlang cookie (mode 0400) that the cluster's nodes and rabbitmqctl authenticate with. The
machine's own broker (rabbit@localhost on 5672, configured by /etc/rabbitmq) is never touched: RABBITMQ_CONF_ENV_FILE
points at our own file so /etc/rabbitmq/rabbitmq-env.conf is not read. The nodes register with whatever epmd runs on
the machine (Erlang starts one if none does).

The nodes' rabbitmq.conf is deploy/rabbitmq/rabbitmq.conf with the listeners swapped for the test's ports, so the
tests run what operators deploy. Nodes 2 and 3 join the first with `rabbitmqctl join_cluster`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.support.slow import scaled

from .ports import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "rabbitmq"
BIN = Path("/usr/lib/rabbitmq/bin")
INSTALL_HINT = "install RabbitMQ (Debian: apt-get install rabbitmq-server; `make system-deps` does it)"


def rabbit_available() -> bool:
    return (BIN / "rabbitmq-server").exists() and (BIN / "rabbitmqctl").exists()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def node_conf(*, amqp_port: int, mqtt_port: int) -> str:
    """deploy/rabbitmq/rabbitmq.conf with its listener lines replaced by this node's loopback ports."""
    out = [f"listeners.tcp.default = 127.0.0.1:{amqp_port}", f"mqtt.listeners.tcp.default = 127.0.0.1:{mqtt_port}"]
    for raw in (DEPLOY / "rabbitmq.conf").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split("=")[0].strip()
        if name.startswith(("listeners.", "mqtt.listeners.", "ssl_options.", "mqtt.ssl_cert", "ssl_cert_login")):
            continue  # plain loopback listeners, no TLS: the test PKI is Mosquitto's business (tests/cloud)
        if name == "mqtt.allow_anonymous":
            line = "mqtt.allow_anonymous = true"  # the plugin's default user guest, allowed on loopback
        if name.startswith("cluster_formation."):
            continue  # the tests join nodes with rabbitmqctl
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class RabbitNode:
    index: int
    name: str
    amqp_port: int
    mqtt_port: int
    dist_port: int
    root: Path
    home: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def beam_pid(self) -> int | None:
        """The Erlang VM's pid (the rabbitmq-server script's child), from the node's pid file; None if not running."""
        try:
            return int((self.root / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        out = subprocess.run([str(BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env, capture_output=True,
                             text=True, timeout=scaled(timeout))
        if check and out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.name} {' '.join(args)} failed ({out.returncode}): "
                               f"{out.stderr.strip() or out.stdout.strip()}")
        return out.stdout


class RabbitCluster:
    """`nodes` RabbitMQ nodes in one cluster on 127.0.0.1, gone (killed, files removed) after the block."""

    def __init__(self, folder: Path, *, nodes: int = 3) -> None:
        if not rabbit_available():
            raise RuntimeError(f"no RabbitMQ server binaries in {BIN}; {INSTALL_HINT}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        tag = secrets.token_hex(3)
        self.home = self.folder / "home"
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.folder / "rabbitmq-env.conf").write_text("# empty: the test sets every RABBITMQ_* variable\n")
        (self.folder / "enabled_plugins").write_text("[rabbitmq_mqtt,rabbitmq_consistent_hash_exchange].\n")
        self.nodes: list[RabbitNode] = []
        for i in range(nodes):
            root = self.folder / f"node{i + 1}"
            root.mkdir(exist_ok=True)
            node = RabbitNode(i, f"koto{tag}-{i + 1}@localhost", free_port(), free_port(), free_port(), root,
                              self.home)
            (root / "rabbitmq.conf").write_text(node_conf(amqp_port=node.amqp_port, mqtt_port=node.mqtt_port))
            node.env = self._env(node)
            self.nodes.append(node)

    def _env(self, node: RabbitNode) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            RABBITMQ_CONF_ENV_FILE=str(self.folder / "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_CONFIG_FILE=str(node.root / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.root / "advanced.config"),
            RABBITMQ_MNESIA_BASE=str(node.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.root / "log"),
            RABBITMQ_PID_FILE=str(node.root / "pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.folder / "enabled_plugins"),
            RABBITMQ_LOGS="-",  # the console: kept in the node's folder by Popen below
            ERL_EPMD_ADDRESS="127.0.0.1",
            # Erlang distribution (clustering, rabbitmqctl) on loopback only, like every other listener here.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    # -- one node ------------------------------------------------------------------------------------------
    def _spawn(self, node: RabbitNode) -> None:
        assert not node.running, f"{node.name} is already running"
        log = (node.root / "console.log").open("ab")
        node.proc = subprocess.Popen([str(BIN / "rabbitmq-server")], env=node.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=node.root, start_new_session=True)
        log.close()

    def _await_boot(self, node: RabbitNode, within: float = 90.0) -> None:
        """Until the node's broker runs (rabbitmqctl await_startup) and its MQTT listener accepts connections."""
        assert node.proc is not None
        deadline = time.monotonic() + scaled(within)
        while True:  # await_startup fails at once until the node has registered with epmd
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited at start: {node.root}/console.log")
            try:
                node.ctl("await_startup", "--timeout", str(int(scaled(within))), timeout=within + 10)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while not _listening(node.mqtt_port):
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not open MQTT port {node.mqtt_port}: {node.root}/console.log")
            time.sleep(0.1)

    def start(self, i: int) -> float:
        """Start node `i` (again: it rejoins the cluster from its own data); returns the seconds it took."""
        t0 = time.monotonic()
        self._spawn(self.nodes[i])
        self._await_boot(self.nodes[i])
        return time.monotonic() - t0

    def kill(self, i: int) -> None:
        """kill -9 the node's whole process group (beam and its port programs), as a power cut would."""
        node = self.nodes[i]
        if node.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait()
        node.proc = None

    # -- the cluster ---------------------------------------------------------------------------------------
    def __enter__(self) -> RabbitCluster:
        try:
            for node in self.nodes:
                self._spawn(node)
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(self._await_boot, self.nodes))
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
            for node in self.nodes[1:]:
                self._await_boot(node)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for i in range(len(self.nodes)):
            self.kill(i)
        shutil.rmtree(self.folder / "home", ignore_errors=True)

    @property
    def running(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n.running]

    @property
    def amqp_urls(self) -> list[str]:
        """Every node's AMQP URL: a client tries them in turn (cloud/amqp.py), as it would behind a load balancer."""
        return [n.amqp_url for n in self.nodes]

    def cluster_status(self) -> str:
        return self.running[0].ctl("cluster_status")
