"""The real gateway against an independent cloud written from docs/contract.md alone (tests/support/contract_peer.py).

The peer is the only cloud here: no `cloud/` code runs. Each test states a rule of the contract and runs the real
gateway (tests/support/gw_child.py for the uplink, `koto run` for commands) against a real Mosquitto.

The last section walks the edges of the published schemas: a command they refuse, though signed, is rejected (the
gateway echoes nothing outside reply.json, keeps nothing outside birth.json), and one they accept is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.broker import Mosquitto
from tests.support.contract_peer import (
    DIAGNOSTICS,
    ENTITLEMENT,
    TARIFF,
    ZERO_HASH,
    ContractPeer,
    canonical,
    now_rfc3339,
    parse_object,
    public_pem,
    record_hash,
    sign,
    signature_ok,
)
from tests.support.paths import REPO
from tests.support.pki import TestPKI
from tests.support.slow import scaled

GW = "gw-peer"
EPOCH = 7  # gw_child's ledger epoch


# -- the gateway as a child process --------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


class Child:
    """tests/support/gw_child.py: a ledger fed `total` records at `rate`/s and the real Sync; exits 0 once every
    record is acked by the cloud. Its device key is made here, as `koto provision` would make it, so the peer can
    register the public half before the first record."""

    def __init__(self, folder: Path, broker: Mosquitto, *, total: int, rate: float = 400.0, ack_timeout: float = 2.0):
        self.state = folder / "gw"
        self.state.mkdir(parents=True, exist_ok=True)
        key_file = self.state / "device.pem"
        if not key_file.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            key_file.chmod(0o600)
        loaded = serialization.load_pem_private_key(key_file.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self.public_pem = public_pem(loaded)
        self.total = total
        self.cmd = [
            sys.executable,
            "-m",
            "tests.support.gw_child",
            "--state",
            str(self.state),
            "--gateway",
            GW,
            "--broker",
            broker.url,
            "--total",
            str(total),
            "--rate",
            str(rate),
            "--ack-timeout",
            str(ack_timeout),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "gw_child.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def exit_code(self, within: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + scaled(within)
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not exit within {within} s; log:\n{self.tail()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def wait_log(self, text: str, within: float) -> None:
        """Until the gateway's log says `text` (a fixed sleep raced the child's start on a loaded machine)."""
        deadline = time.monotonic() + scaled(within)
        while text not in (self.log.read_text(errors="replace") if self.log.exists() else ""):
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway never logged {text!r} within {within} s; log:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def child(folder: Path, broker: Mosquitto, **kw: Any) -> Iterator[Child]:
    c = Child(folder, broker, **kw)
    try:
        yield c
    finally:
        c.stop()


@contextlib.asynccontextmanager
async def peer_for(broker: Mosquitto, **kw: Any) -> AsyncIterator[ContractPeer]:
    async with ContractPeer(broker.host, broker.port, **kw) as peer:
        yield peer


def assert_clean(peer: ContractPeer) -> None:
    """Nothing refused, no alarm, nothing the contract says that the messages did not do."""
    assert not peer.rejected, f"refused: {peer.rejected[:5]}"
    assert not peer.alarms, f"alarms: {peer.alarms[:5]}"
    assert not peer.findings, f"findings: {peer.findings}"


def assert_holds_exactly(peer: ContractPeer, total: int) -> None:
    """Every seq 1..total once, each verified alone (signature, link to its predecessor), acked at the head."""
    assert peer.held(GW, EPOCH) == list(range(1, total + 1))
    records = peer.by_seq[(GW, EPOCH)]
    key = peer.gateways[GW]
    prev = ZERO_HASH
    for seq in range(1, total + 1):
        event = parse_object(records[seq].body, 1 << 16, "stored record")
        assert signature_ok(key, event), seq
        assert event["prevhash"] == prev, f"seq {seq} does not link to seq {seq - 1}"
        assert canonical(event) == records[seq].body
        prev = record_hash(event)
    chain = peer.chains[(GW, EPOCH)]
    assert (chain.acked_through, chain.head_hash) == (total, prev)
    assert len([k for k in peer.records if k[0] == f"urn:koto:gw:{GW}"]) == total


def acks_never_ran_ahead(peer: ContractPeer) -> None:
    """Every ack the peer sent names a record it held, with that record's hash (a self-check of the peer)."""
    for gw, ack, _ in peer.acks:
        rec = peer.by_seq[(gw, ack["epoch"])][ack["acked_through"]]
        assert rec.hash == ack["head_hash"]


# -- uplink: records, chain, acks -----------------------------------------------------------------------------------


async def test_every_record_arrives_signed_chained_and_the_gateway_sees_its_cumulative_ack(tmp_path, broker):
    """contract.md: one ledger record per up/usage message, a signed hash-chained CloudEvent; the cloud acks the
    contiguous linked prefix with its head hash, and the gateway marks records acked (gw_child exits 0)."""
    async with peer_for(broker) as peer:
        with child(tmp_path, broker, total=400) as gw:
            peer.register(GW, gw.public_pem)
            gw.start()
            assert await gw.exit_code(25) == 0, gw.tail()
        assert_holds_exactly(peer, 400)
        assert_clean(peer)
        acks_never_ran_ahead(peer)
        for rec in peer.by_seq[(GW, EPOCH)].values():  # gw_child's records span one second of both clocks
            data = rec.event["data"]
            assert data["end_mono_us"] - data["start_mono_us"] == 1_000_000, "monotonic stamps are microseconds"
            assert rec.event["time"] == data["end"], "time is the end of the interval"
        assert peer.acks[-1][1]["acked_through"] == 400
        assert all(a["acked_through"] >= 1 for _, a, _ in peer.acks), "acked_through 0 is never sent"


async def test_over_tls_with_certificate_identities_as_deployed(tmp_path):
    """contract.md: TLS with a client certificate whose CN is the gateway id; the broker (deploy/mosquitto's
    config and ACL) maps the CN to the username, and a receiver, CN koto-receiver, reads usage and status and
    writes acks. The same drain as above, end to end through what operators deploy."""
    pki = TestPKI(tmp_path / "pki")
    with Mosquitto(tmp_path / "broker", pki=pki) as broker:
        rx = pki.client("koto-receiver")
        tls = aiomqtt.TLSParameters(ca_certs=str(pki.ca), certfile=str(rx.cert), keyfile=str(rx.key))
        async with peer_for(broker, tls=tls, client_id="koto-receiver") as peer:
            with child(tmp_path, broker, total=200) as gw:
                pair = pki.client(GW)
                gw.cmd += ["--ca", str(pki.ca), "--cert", str(pair.cert), "--key", str(pair.key)]
                peer.register(GW, gw.public_pem)
                gw.start()
                assert await gw.exit_code(25) == 0, gw.tail()
            assert_holds_exactly(peer, 200)
            assert_clean(peer)
            assert peer.births[GW].body["gateway"] == GW


async def test_the_birth_states_what_the_gateway_holds_and_is_answered_with_the_current_ack(tmp_path, broker):
    """contract.md "Status": at every connect a retained birth with epoch, last seq and unacked count (birth.json);
    "When a birth arrives, the receiver recomputes and re-sends the ack for the birth's epoch". Here the cloud
    stored every record but its acks were lost; the restarted gateway's birth says all are unacked, and the ack
    that answers it (the only one: the resent records are lost too) ends the drain."""
    async with peer_for(broker, withhold_acks=True) as peer:
        with child(tmp_path, broker, total=60, ack_timeout=30.0) as gw:
            peer.register(GW, gw.public_pem)
            gw.start()
            await peer.wait_for(lambda: peer.stats.stored == 60, 15, "every record stored")
            first = peer.births[GW].body
            assert (first["gateway"], first["online"], first["epoch"], first["last_dseq"]) == (GW, True, EPOCH, "")
            gw.kill9()
            # From now on the cloud acks again but hears no record: only its answer to the birth can end the drain.
            peer.withhold_acks, peer.deaf_to_usage = False, True
            births = len(peer.birth_log)
            gw.start()
            await peer.wait_for(lambda: len(peer.birth_log) > births, 15, "a birth at the second connect")
            birth = peer.birth_log[-1].body
            assert (birth["epoch"], birth["last_seq"], birth["unacked"]) == (EPOCH, 60, 60), birth
            assert birth["boot_id"] and birth["gateway"] == GW
            assert await gw.exit_code(20) == 0, gw.tail()
        head = peer.chains[(GW, EPOCH)].head_hash
        assert {"epoch": EPOCH, "acked_through": 60, "head_hash": head} in [a for _, a, _ in peer.acks]
        assert_holds_exactly(peer, 60)
        assert_clean(peer)


async def test_the_retained_birth_reaches_a_cloud_that_subscribes_later(tmp_path, broker):
    """contract.md topics table: up/status is retained, so a receiver that starts after the gateway connected still
    gets its birth; and what the gateway sent while no cloud listened is resent after the ack timeout."""
    with child(tmp_path, broker, total=30, ack_timeout=2.0) as gw:
        gw.start()
        # Connected (its birth published first), sending its records to nobody: it says so when its first unacked
        # batch times out. Only then does the cloud subscribe, so the birth can only reach it as a retained message.
        await gw.wait_log("no cloud ack for", 30)
        async with peer_for(broker) as peer:
            peer.register(GW, gw.public_pem)
            await peer.wait_for(lambda: GW in peer.births, 5, "retained birth")
            birth = peer.births[GW]
            assert birth.retained, "up/status birth was not retained"
            assert birth.body["unacked"] == birth.body["last_seq"], "nothing was ever acked"
            assert await gw.exit_code(25) == 0, gw.tail()
            assert_holds_exactly(peer, 30)
            assert_clean(peer)


async def test_an_ack_never_crosses_a_gap_and_the_gateway_resends_what_was_lost(tmp_path, broker):
    """contract.md: "an ack never runs ahead of what is durable, never crosses a gap"; QoS 1 is not trusted to keep
    messages, so the gateway resends unacked records in seq order after an ack timeout. Record 50 is lost once in
    flight (the peer drops it before looking): no ack may pass 49 until it is back, and it must come back."""
    async with peer_for(broker, lose_once={(GW, 50)}) as peer:
        with child(tmp_path, broker, total=200, ack_timeout=2.0) as gw:
            peer.register(GW, gw.public_pem)
            gw.start()
            assert await gw.exit_code(25) == 0, gw.tail()
        assert peer.stats.dropped_in_flight == 1
        assert_holds_exactly(peer, 200)
        stored_50_at = peer.by_seq[(GW, EPOCH)][50]
        first_past = next(i for i, (_, a, _) in enumerate(peer.acks) if a["acked_through"] >= 50)
        assert all(a["acked_through"] <= 49 for _, a, _ in peer.acks[:first_past])
        assert stored_50_at is not None
        assert peer.stats.duplicates > 0, "the gateway resent from the acked point: records 51.. arrive twice"
        acks_never_ran_ahead(peer)
        assert_clean(peer)


@pytest.mark.slow
async def test_a_broker_restart_mid_drain_loses_nothing(tmp_path, broker):
    """contract.md "Why it looks like this": a broker restart can lose messages in flight; the ledger is the queue,
    so every record still arrives, and the cloud stores each exactly once by (source, id)."""
    total = 1500
    async with peer_for(broker) as peer:
        with child(tmp_path, broker, total=total, rate=300.0, ack_timeout=2.0) as gw:
            peer.register(GW, gw.public_pem)
            gw.start()
            await peer.wait_for(lambda: peer.stats.stored >= total // 3, 15, "a third of the records")
            broker.stop()
            await asyncio.sleep(0.5)
            restarted = now_rfc3339()
            broker.start()
            assert await gw.exit_code(30) == 0, gw.tail()
        assert peer.stats.connects >= 2, "the peer did not see the broker go"
        assert any(b.body["time"] >= restarted for b in peer.birth_log), "no birth at the gateway's reconnect"
        assert_holds_exactly(peer, total)
        acks_never_ran_ahead(peer)
        assert_clean(peer)


@pytest.mark.slow
async def test_a_gateway_killed_mid_drain_loses_nothing_and_its_resends_are_dropped_by_id(tmp_path, broker):
    """contract.md: the gateway "resends unacked records in seq order with identical bytes on reconnect"; a resend
    (same id, same hash) is a no-op at the cloud, counted as a duplicate; a different hash under a known id would be
    an alarm. kill -9 twice in the middle of the drain; the restarted gateway must still reach the end."""
    total = 1200
    async with peer_for(broker) as peer:
        with child(tmp_path, broker, total=total, rate=300.0, ack_timeout=2.0) as gw:
            peer.register(GW, gw.public_pem)
            gw.start()
            for fraction in (3, 2):
                await peer.wait_for(lambda f=fraction: peer.stats.stored >= total // f, 15, "records")
                gw.kill9()
                gw.start()
            assert await gw.exit_code(30) == 0, gw.tail()
        assert_holds_exactly(peer, total)
        assert peer.stats.received == peer.stats.stored + peer.stats.duplicates
        # gw_child's registers chain from record to record: the billed energy is the register's rise, nothing twice.
        data = [peer.by_seq[(GW, EPOCH)][seq].event["data"] for seq in range(1, total + 1)]
        assert all(a["register_end_mwh"] == b["register_start_mwh"] for a, b in itertools.pairwise(data))
        assert sum(d["energy_mwh"] for d in data) == data[-1]["register_end_mwh"] - data[0]["register_start_mwh"]
        assert len({id_ for _, id_ in peer.records}) == total
        acks_never_ran_ahead(peer)
        assert_clean(peer)


def wrong_hash(ack: dict[str, Any]) -> dict[str, Any]:
    return {**ack, "head_hash": hashlib.sha256(ack["head_hash"].encode()).hexdigest()}


def other_epoch(ack: dict[str, Any]) -> dict[str, Any]:
    return {**ack, "epoch": ack["epoch"] + 1}


def beyond_head(ack: dict[str, Any]) -> dict[str, Any]:
    return {**ack, "acked_through": ack["acked_through"] + 1000}


@pytest.mark.parametrize("mutate", [wrong_hash, other_epoch, beyond_head], ids=lambda f: f.__name__)
async def test_an_ack_that_is_not_for_the_gateways_own_records_prunes_nothing(tmp_path, broker, mutate):
    """contract.md "Acks are cumulative and carry a hash": the gateway marks records acked only when head_hash
    equals its own hash of record acked_through of its epoch (a mismatch is an alarm, never a prune). A cloud whose
    acks name another hash, another epoch or records the gateway never made leaves everything unacked: the gateway
    resends and does not finish; once the cloud acks what it holds, it finishes."""
    async with peer_for(broker, ack_mutator=mutate) as peer:
        with child(tmp_path, broker, total=40, ack_timeout=1.0) as gw:
            peer.register(GW, gw.public_pem)
            gw.start()
            await peer.wait_for(lambda: peer.stats.duplicates >= 40, 15, "a resend of every record")
            assert gw.proc is not None and gw.proc.poll() is None, "the gateway took a false ack as an ack"
            peer.ack_mutator = None
            assert await gw.exit_code(15) == 0, gw.tail()
        assert_holds_exactly(peer, 40)
        assert_clean(peer)


async def test_the_peer_itself_refuses_what_the_contract_refuses(tmp_path, broker):
    """A check on this file's cloud, so that a green run above means something: given the gateway's real records,
    altered as the contract's receiver rules describe, the peer refuses each by its kind, raises the two alarms and
    never acks past a broken link."""
    async with peer_for(broker) as peer:
        with child(tmp_path, broker, total=5) as gw:
            peer.register(GW, gw.public_pem)
            gw.start()
            assert await gw.exit_code(20) == 0, gw.tail()
        key = serialization.load_pem_private_key((gw.state / "device.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        held = peer.by_seq[(GW, EPOCH)]
        five = parse_object(held[5].body, 1 << 16, "record")

        def signed(event: dict[str, Any]) -> bytes:
            event = {k: v for k, v in event.items() if k != "sig"}
            event["sig"] = sign(key, event)
            return canonical(event)

        forged = {**five, "data": {**five["data"], "energy_mwh": five["data"]["energy_mwh"] + 1}}
        six = {**five, "id": f"{EPOCH}-6", "sequence": f"{6:020d}", "data": {**five["data"], "seq": 6}}
        stranger = {**five, "source": "urn:koto:gw:gw-stranger"}
        sends = [
            (GW, canonical(forged), "bad_signature"),  # the sig no longer covers the bytes
            ("gw-other", held[3].body, "wrong_topic"),  # gw-peer's record on gw-other's topic
            ("gw-stranger", canonical(stranger), "unknown_gateway"),
            (GW, b'{"a":' * 40 + b"1" + b"}" * 40, "too_deep"),
            (GW, held[2].body[:-1] + b',"id":"x"}', "malformed"),  # a key twice
            (GW, held[2].body.replace(b'"uses":0', b'"uses":NaN'), "malformed"),
            (GW, held[2].body.replace(b'"uses":0', b'"uses":0.0'), "malformed"),  # not canonical: a float
            (GW, b"x" * (65 * 1024), "too_large"),
            (GW, held[2].body, None),  # a resend: a duplicate, no alarm
            (GW, signed(forged), None),  # same id, another hash, really signed: an alarm, the first one stays
            (GW, signed(six), None),  # seq 6 whose prevhash is not the hash of 5: stored, chain_break, no ack past 5
        ]
        async with aiomqtt.Client(broker.host, broker.port, identifier="fake") as fake:
            for gateway, payload, _ in sends:
                await fake.publish(f"koto/v1/{gateway}/up/usage", payload, qos=1)
        want = Counter(kind for _, _, kind in sends if kind)
        await peer.wait_for(lambda: peer.stats.received >= 5 + len(sends), 10, "every message")
        assert peer.rejections == want, peer.rejected
        assert peer.stats.duplicates == 1
        assert len(peer.alarms) == 2, peer.alarms
        assert peer.records[(f"urn:koto:gw:{GW}", f"{EPOCH}-5")].body == held[5].body
        assert any(a.startswith("chain_break") for a in peer.alarms)
        assert peer.chains[(GW, EPOCH)].acked_through == 5
        assert max(a["acked_through"] for _, a, _ in peer.acks) == 5
        assert any(f.startswith("up/usage content type None") for f in peer.findings), "fake sent no content type"


# -- downlink: signed commands to `koto run` ---------------------------------------------------------------------


class Daemon:
    """The production gateway, `koto run`, provisioned as README says: `koto provision --operator-key` pins the
    operator's public key in `[cloud] operator_keys` and prints the device key for the cloud to register."""

    def __init__(self, folder: Path, broker: Mosquitto, operator_pub: bytes, *, protocol: int = 5):
        self.folder = folder
        self.config = folder / "koto.toml"
        folder.mkdir(parents=True, exist_ok=True)
        op = folder / "operator-peer.pub.pem"
        op.write_bytes(operator_pub)
        out = subprocess.run(
            [
                *self.koto(),
                "provision",
                "--config",
                str(self.config),
                "--state-dir",
                str(folder / "state"),
                "--id",
                GW,
                "--timezone",
                "UTC",
                "--broker",
                broker.url,
                "--operator-key",
                str(op),
                "--no-input",
            ],
            cwd=REPO,
            env=child_env(),
            capture_output=True,
            timeout=scaled(30),
            check=True,
        )
        self.public_pem = out.stdout
        text = self.config.read_text()
        # No status page, and lifecycle records go out with the next batch instead of waiting up to a minute.
        text = text.replace("[gateway]\n", "[gateway]\nweb_port = 0\nhold_use_s = 0\n", 1)
        if protocol != 5:
            text = text.replace("[cloud]\n", f"[cloud]\nprotocol = {protocol}\n", 1)
            assert f"protocol = {protocol}" in text, text
        self.config.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "koto.log"

    @staticmethod
    def koto() -> list[str]:
        return [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'koto'; from gateway.entry import main; sys.exit(main())",
        ]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.koto(), "run", "--config", str(self.config)],
                cwd=REPO,
                env=child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it and wait for its exit without blocking the event loop (the peer must go on acking meanwhile:
        on SIGTERM the gateway sends its stop record and waits a moment for the cloud's ack)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        deadline = time.monotonic() + scaled(20)
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"koto run did not stop within 20 s of signal {sig}; log:\n{self.tail()}")
            await asyncio.sleep(0.02)
        code = self.proc.returncode
        self.proc = None
        return code

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@contextlib.asynccontextmanager
async def daemon_and_peer(
    tmp_path: Path, broker: Mosquitto, *, protocol: int = 5
) -> AsyncIterator[tuple[Daemon, ContractPeer]]:
    async with peer_for(broker) as peer:
        d = Daemon(tmp_path / "koto", broker, public_pem(peer.operator_key), protocol=protocol)
        peer.register(GW, d.public_pem)
        d.start()
        try:
            await peer.wait_for(lambda: GW in peer.births, 20, f"birth from koto run; log:\n{d.tail()}")
            yield d, peer
        finally:
            if d.proc is not None:
                await d.stop(signal.SIGKILL)


def tariff(version: int) -> dict[str, Any]:
    """contract.md commands table: Tariff.to_dict() fields, as cmd-tariff.json describes them."""
    return {
        "id": "peer-tariff",
        "version": version,
        "currency": "EUR",
        "exponent": 2,
        "rates": [{"match": "*/*", "per_kwh": "0.30"}],
        "windows": [],
    }


async def test_a_signed_command_is_applied_once_a_replay_is_a_duplicate_and_a_forgery_is_rejected(tmp_path, broker):
    """contract.md "Commands": the gateway applies a command signed by its pinned operator key whose dseq is above
    its last applied one; a replay of an applied id is answered `duplicate`; bad signatures are rejected with a
    reply. "Replies": every reply carries ack_of, status, reason, dseq, gateway, time (reply.json)."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        cmd, payload = peer.command(GW, DIAGNOSTICS, {})
        seen = len(peer.replies)
        await peer.publish_command(GW, payload)
        applied = (await peer.next_reply(GW, after=seen)).body
        assert (applied["status"], applied["ack_of"], applied["dseq"]) == ("applied", cmd["id"], cmd["dseq"]), applied
        assert isinstance(applied.get("report"), dict), "diagnostics replies carry a report"

        seen = len(peer.replies)
        await peer.publish_command(GW, payload)  # the very same bytes again
        replay = (await peer.next_reply(GW, after=seen)).body
        assert (replay["status"], replay["ack_of"]) == ("duplicate", cmd["id"]), replay

        forger = ec.generate_private_key(ec.SECP256R1())
        _, forged = peer.command(GW, DIAGNOSTICS, {}, key=forger)
        seen = len(peer.replies)
        await peer.publish_command(GW, forged)
        rejected = (await peer.next_reply(GW, after=seen)).body
        assert rejected["status"] == "rejected", rejected

        # After a forgery the next honest dseq still applies: a rejected command does not use up anything.
        cmd2, reply2 = await peer.send(GW, DIAGNOSTICS, {})
        assert (reply2.body["status"], reply2.body["ack_of"]) == ("applied", cmd2["id"]), reply2.body
        assert not peer.rejected, peer.rejected


async def test_an_applied_command_is_in_the_usage_stream_as_a_signed_lifecycle_record(tmp_path, broker):
    """contract.md "Replies": applied commands are also recorded in the ledger as io.koto.lifecycle.v1 records
    {"event":"command_applied","command_type":T,"command_id":id,"dseq":...,"version":...}, and reach the cloud on
    up/usage like any record (signed, chained, acked)."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        cmd, reply = await peer.send(GW, TARIFF, tariff(1))
        assert reply.body["status"] == "applied", reply.body

        def lifecycle() -> list[dict[str, Any]]:
            return [
                r.event["data"]
                for r in peer.records.values()
                if r.event["type"] == "io.koto.lifecycle.v1" and r.event["data"].get("event") == "command_applied"
            ]

        await peer.wait_for(lambda: bool(lifecycle()), 15, "a command_applied record")
        data = lifecycle()[0]
        assert data["command_type"] == TARIFF and data["command_id"] == cmd["id"]
        assert str(data["dseq"]) == cmd["dseq"] and data["version"] == 1
        epoch = peer.births[GW].body["epoch"]
        top = max(peer.held(GW, epoch))
        assert peer.held(GW, epoch) == list(range(1, top + 1))
        await peer.wait_for(lambda: peer.chains[(GW, epoch)].acked_through == top, 10, "an ack of every record")
        # A version not above the current one is rejected as stale, though its dseq is new; being rejected, its
        # dseq was not applied, so the next command may carry the same dseq ("only a dseq above its last applied").
        stale_cmd, stale = await peer.send(GW, TARIFF, tariff(1))
        assert stale.body["status"] == "rejected", stale.body
        again, reply = await peer.send(GW, TARIFF, tariff(2), dseq=int(stale_cmd["dseq"]))
        assert (reply.body["status"], reply.body["ack_of"]) == ("applied", again["id"]), reply.body
        assert_clean(peer)


async def test_a_command_for_another_gateway_an_expired_one_and_an_old_dseq_are_rejected(tmp_path, broker):
    """contract.md "Commands": `subject` binds a command to one gateway; `expirytime` bounds how long it stays valid;
    the gateway applies only a dseq above its last applied one ("anything else old `rejected`")."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        _, other = await peer.send(GW, DIAGNOSTICS, {}, subject_gateway="gw-someone-else")
        assert other.body["status"] == "rejected", other.body
        _, expired = await peer.send(GW, DIAGNOSTICS, {}, at=time.time() - 7200, expires_in=3600)
        assert expired.body["status"] == "rejected", expired.body
        _, applied = await peer.send(GW, DIAGNOSTICS, {}, dseq=10)
        assert applied.body["status"] == "applied", applied.body
        _, old = await peer.send(GW, DIAGNOSTICS, {}, dseq=5)
        assert (old.body["status"], old.body["dseq"]) == ("rejected", "5"), old.body
        assert not peer.rejected, peer.rejected


async def test_the_birth_carries_the_last_applied_dseq_and_a_vanished_gateway_leaves_its_will(tmp_path, broker):
    """contract.md "Status": the birth carries `last_dseq` so a new command's dseq is always above what the gateway
    applied; the MQTT Will (retained, QoS 1) is {"online":false,"gateway":GW} (will.json)."""
    async with daemon_and_peer(tmp_path, broker) as (d, peer):
        _, reply = await peer.send(GW, DIAGNOSTICS, {}, dseq=41)
        assert reply.body["status"] == "applied", reply.body
        wills = len(peer.wills)
        await d.stop(signal.SIGKILL)
        await peer.wait_for(lambda: len(peer.wills) > wills, 10, "the Will after kill -9")
        _, will, _ = peer.wills[-1]
        assert will == {"online": False, "gateway": GW}
        peer.forget_dseqs()  # as if the operator's database were restored from a backup: only the birth can tell
        births = len(peer.birth_log)
        d.start()
        await peer.wait_for(lambda: len(peer.birth_log) > births, 20, "a birth after the restart")
        assert peer.birth_log[-1].body["last_dseq"] == "41"
        assert peer.next_dseq(GW) == 42
        assert_clean(peer)


async def test_what_cannot_be_believed_is_rejected_with_a_reply(tmp_path, broker):
    """contract.md "Commands": "payloads above 64 KiB, unknown types, wrong types and bad signatures are rejected
    with a reply"; "Replies": `ack_of` is "" when the command could not be parsed."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        for payload in (b"not json", b"[1, 2]", b'{"specversion": "1.0"}'):
            seen = len(peer.replies)
            await peer.publish_command(GW, payload)
            body = (await peer.next_reply(GW, after=seen)).body
            assert (body["status"], body["ack_of"], body["dseq"]) == ("rejected", "", ""), (payload, body)

        _, unknown = peer.command(GW, "io.koto.cmd.reboot.v1", {}, check_schema=False)
        seen = len(peer.replies)
        await peer.publish_command(GW, unknown)
        assert (await peer.next_reply(GW, after=seen)).body["status"] == "rejected"

        _, huge = peer.command(GW, TARIFF, {**tariff(1), "timezone": "x" * (65 * 1024)}, check_schema=False)
        assert len(huge) > 64 * 1024
        seen = len(peer.replies)
        await peer.publish_command(GW, huge)
        assert (await peer.next_reply(GW, after=seen)).body["status"] == "rejected"

        # None of them used up a dseq: the next honest command applies.
        cmd, reply = await peer.send(GW, TARIFF, tariff(1))
        assert (reply.body["status"], reply.body["ack_of"]) == ("applied", cmd["id"]), reply.body
        assert not peer.rejected, peer.rejected


async def test_a_replay_of_an_earlier_applied_command_is_still_a_duplicate(tmp_path, broker):
    """contract.md "Commands": "a replay of an applied id is answered `duplicate`, anything else old `rejected`",
    also once a later command has been applied since."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        first, payload = peer.command(GW, TARIFF, tariff(1))
        seen = len(peer.replies)
        await peer.publish_command(GW, payload)
        assert (await peer.next_reply(GW, after=seen)).body["status"] == "applied"
        _, second = await peer.send(GW, TARIFF, tariff(2))
        assert second.body["status"] == "applied", second.body
        seen = len(peer.replies)
        await peer.publish_command(GW, payload)
        replay = (await peer.next_reply(GW, after=seen)).body
        assert (replay["status"], replay["ack_of"], replay["dseq"]) == ("duplicate", first["id"], first["dseq"])


async def test_a_command_sent_while_the_gateway_is_away_is_applied_when_it_returns(tmp_path, broker):
    """contract.md "Topics": gateways connect with clean start off and a 7-day session expiry, "so the broker
    queues acks and commands while a gateway is away"; its next birth carries the tariff version and last dseq."""
    async with daemon_and_peer(tmp_path, broker) as (d, peer):
        await d.stop(signal.SIGKILL)
        cmd, payload = peer.command(GW, TARIFF, tariff(3), dseq=7)
        seen = len(peer.replies)
        await peer.publish_command(GW, payload)
        births = len(peer.birth_log)
        d.start()
        reply = (await peer.next_reply(GW, after=seen, within=20)).body
        assert (reply["status"], reply["ack_of"]) == ("applied", cmd["id"]), reply
        await peer.wait_for(lambda: len(peer.birth_log) > births, 10, "a birth")
        await d.stop(signal.SIGTERM)
        births = len(peer.birth_log)
        d.start()
        await peer.wait_for(lambda: len(peer.birth_log) > births, 20, "a birth after the restart")
        birth = peer.birth_log[-1].body
        assert (birth["tariff_version"], birth["last_dseq"]) == (3, "7"), birth
        assert_clean(peer)


async def test_a_clean_stop_leaves_the_offline_status_of_will_json_and_the_cloud_in_step(tmp_path, broker):
    """contract.md "Status": the Will is {"online":false,"gateway":GW} (will.json: "online" const false), and a
    clean stop, which does not fire the Will, leaves the same offline status retained (docs/sync.md). After a clean
    stop the gateway knows exactly what the cloud acked: its next birth's unacked is its last seq minus the cloud's
    acked_through ("State, not queues, resynchronises")."""
    async with daemon_and_peer(tmp_path, broker) as (d, peer):
        _, reply = await peer.send(GW, DIAGNOSTICS, {})
        assert reply.body["status"] == "applied"
        assert await d.stop(signal.SIGTERM) == 0, d.tail()
        epoch = peer.births[GW].body["epoch"]
        acked = peer.chains[(GW, epoch)].acked_through
        assert acked == max(peer.held(GW, epoch)), "the cloud holds and acked everything the gateway sent"
        births = len(peer.birth_log)
        async with peer_for(broker, client_id="late-peer") as late:
            await late.wait_for(lambda: bool(late.wills) or bool(late.rejected), 5, "the retained status")
            assert not late.rejected, late.rejected
            assert not late.findings, late.findings
            _, status, retained = late.wills[-1]
            assert retained and status == {"online": False, "gateway": GW}
        d.start()
        await peer.wait_for(lambda: len(peer.birth_log) > births, 20, "a birth after the restart")
        birth = peer.birth_log[-1].body
        assert birth["unacked"] == birth["last_seq"] - acked, (birth, acked)
        assert_clean(peer)


async def test_a_gateway_on_mqtt_3_1_1_is_the_same_to_the_cloud_but_for_mqtt_5_properties(tmp_path, broker):
    """contract.md: "MQTT 5 (3.1.1 must also work, structured mode)". With `[cloud] protocol = 311` the gateway's
    birth, records, acks, commands and replies are the ones an MQTT 5 gateway sends, byte for byte the same rules;
    only the MQTT 5 content type property is absent (the CloudEvent carries `datacontenttype` itself)."""
    async with daemon_and_peer(tmp_path, broker, protocol=311) as (d, peer):
        cmd, reply = await peer.send(GW, DIAGNOSTICS, {})
        assert (reply.body["status"], reply.body["ack_of"]) == ("applied", cmd["id"]), reply.body
        _, reply = await peer.send(GW, TARIFF, tariff(1))
        assert reply.body["status"] == "applied", reply.body
        assert await d.stop(signal.SIGTERM) == 0, d.tail()
        epoch = peer.births[GW].body["epoch"]
        held = peer.held(GW, epoch)
        assert held == list(range(1, len(held) + 1)) and len(held) >= 3  # start, two commands applied, stop
        assert peer.chains[(GW, epoch)].acked_through == held[-1]
        assert all(r.event["datacontenttype"] == "application/json" for r in peer.by_seq[(GW, epoch)].values())
    assert not peer.rejected and not peer.alarms, (peer.rejected, peer.alarms)
    # The one difference: no MQTT 5 content type property (which also shows the session really was 3.1.1).
    assert [f for f in peer.findings if "content type None" not in f] == [] and peer.findings, peer.findings


def resigned(peer: ContractPeer, cmd: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`cmd` with some fields changed (None: removed), signed again by the peer's operator key."""
    out = {k: v for k, v in {**cmd, **changes}.items() if k != "sig" and v is not None}
    out["sig"] = sign(peer.operator_key, out)
    return out


async def test_commands_as_another_implementation_may_write_them_are_applied(tmp_path, broker):
    """The signature is over the canonical bytes of the command *value* (contract.md "Canonical bytes"), so the
    bytes on the wire may be any JSON of it; text outside ASCII is signed as UTF-8 without escapes; common.json's
    commandEnvelope does not require `time` or `datacontenttype`; RFC 3339 allows offsets and whole seconds; a
    command id may be any string up to 128 characters, a dseq up to 16 digits; entitlement and tariff data as small
    as cmd-entitlement.json and cmd-tariff.json allow."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):

        async def applied(what: str, payload: bytes) -> None:
            seen = len(peer.replies)
            await peer.publish_command(GW, payload)
            body = (await peer.next_reply(GW, after=seen)).body
            assert body["status"] == "applied", (what, body)

        cmd, _ = peer.command(GW, DIAGNOSTICS, {})
        await applied("indented, keys reversed", json.dumps(dict(reversed(cmd.items())), indent=2).encode())
        cmd, _ = peer.command(GW, DIAGNOSTICS, {})
        await applied("non-ASCII escaped as \\u", json.dumps(cmd, ensure_ascii=True).encode())
        text = 'Nacht\u2028\u0001 "q" \\ é 🙂 /'
        t = {**tariff(1), "id": "tarif-été-🙂"}
        t["windows"] = [
            {
                "name": text,
                "days": ["mon"],
                "start": "22:00",
                "end": "06:00",
                "rates": [{"match": "*/*", "per_kwh": "0.1"}],
            }
        ]
        await applied("non-ASCII and control characters", peer.command(GW, TARIFF, t)[1])
        cmd, _ = peer.command(GW, DIAGNOSTICS, {})
        await applied("no time, no datacontenttype", canonical(resigned(peer, cmd, time=None, datacontenttype=None)))
        later = time.gmtime(time.time() + 3 * 3600)  # in +02:00: one hour from now
        cmd, _ = peer.command(GW, DIAGNOSTICS, {})
        offset = resigned(
            peer,
            cmd,
            expirytime=time.strftime("%Y-%m-%dT%H:%M:%S+02:00", later),
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        await applied("offset expirytime, whole seconds", canonical(offset))
        cmd, _ = peer.command(GW, DIAGNOSTICS, {})
        await applied("128-character id", canonical(resigned(peer, cmd, id="i" * 128)))
        grant = {"id": "e1", "version": 1, "action": "grant", "appliance": "washer", "kind": "uses", "limit": 10}
        await applied("grant without function", peer.command(GW, ENTITLEMENT, grant)[1])
        await applied(
            "revoke, minimal", peer.command(GW, ENTITLEMENT, {"id": "e1", "version": 2, "action": "revoke"})[1]
        )
        await applied("tariff, minimal", peer.command(GW, TARIFF, {"id": "min", "version": 1, "currency": "EUR"})[1])
        await applied("16-digit dseq", peer.command(GW, DIAGNOSTICS, {}, dseq=9_999_999_999_999_999)[1])
        assert_clean(peer)


async def test_a_lower_ack_after_a_higher_one_is_ignored(tmp_path, broker):
    """contract.md "Several receivers": "Acks from two receivers may arrive out of order (an ack for 90 after one
    for 100); gateways treat acks as cumulative and ignore lower ones." After the cloud acked record 2, an ack for
    record 1 (with its true hash) must not make record 2 unacked again: the next birth counts only what came
    after."""
    async with daemon_and_peer(tmp_path, broker) as (d, peer):
        _, reply = await peer.send(GW, DIAGNOSTICS, {})  # the ledger: 1 start, 2 command_applied
        assert reply.body["status"] == "applied"
        epoch = peer.births[GW].body["epoch"]
        await peer.wait_for(lambda: peer.chains[(GW, epoch)].acked_through >= 2, 10, "an ack of record 2")
        await asyncio.sleep(0.5)  # the gateway has the ack for 2
        one = peer.by_seq[(GW, epoch)][1]
        ack = canonical({"epoch": epoch, "acked_through": 1, "head_hash": one.hash})
        assert peer._client is not None
        await peer._client.publish(f"koto/v1/{GW}/down/ack", ack, qos=1)
        await asyncio.sleep(0.5)
        peer.withhold_acks = True  # no later ack may hide a step back: the stop record stays unacked
        assert await d.stop(signal.SIGTERM) == 0, d.tail()
        births = len(peer.birth_log)
        d.start()
        await peer.wait_for(lambda: len(peer.birth_log) > births, 20, "a birth after the restart")
        birth = peer.birth_log[-1].body
        # Acked through 2 still: unacked are the stop record (3) and the new start record (4), not 2 as well.
        assert (birth["last_seq"], birth["unacked"]) == (4, 2), birth
        assert_clean(peer)


# -- the edges of the published schemas: what they refuse the gateway rejects, what they accept it applies -------

SEVENTEEN_DIGITS = str(10**16)


async def test_a_dseq_beyond_16_digits_is_rejected_and_replies_and_births_stay_within_their_schemas(tmp_path, broker):
    """common.json: a command's dseq is ^[1-9][0-9]{0,15}$; contract.md "What the receiver checks": a dseq of at
    most 16 digits, a birth's last_dseq empty or at most 16 digits (out_of_range otherwise), a reply checked against
    reply.json. A gateway that applied a 17-digit dseq would answer outside reply.json, announce it in every birth
    (refused by every receiver from then on) and refuse every command the contract allows."""
    async with daemon_and_peer(tmp_path, broker) as (d, peer):
        cmd, _ = peer.command(GW, DIAGNOSTICS, {})
        seen, refused = len(peer.replies), len(peer.rejected)
        await peer.publish_command(GW, canonical(resigned(peer, cmd, dseq=SEVENTEEN_DIGITS)))
        reply = (await peer.reply_or_refusal(GW, after=seen, refused=refused)).body
        assert reply["status"] == "rejected", reply
        births = len(peer.birth_log)
        await d.stop(signal.SIGTERM)
        d.start()
        await peer.wait_for(lambda: len(peer.birth_log) > births, 20, "a birth that birth.json accepts")
        assert not peer.rejected, peer.rejected


async def test_a_command_id_beyond_128_characters_is_rejected_with_a_reply_within_reply_json(tmp_path, broker):
    """common.json: a command id has 1..128 characters; reply.json and contract.md "Status": a reply's ack_of is at
    most 128 characters, and a reply outside reply.json is refused by the receiver. So the one reply such a command
    gets must be a rejection the receiver can read."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        cmd, _ = peer.command(GW, DIAGNOSTICS, {})
        seen, refused = len(peer.replies), len(peer.rejected)
        await peer.publish_command(GW, canonical(resigned(peer, cmd, id="i" * 129)))
        reply = (await peer.reply_or_refusal(GW, after=seen, refused=refused)).body
        assert reply["status"] == "rejected", reply
        assert not peer.rejected, peer.rejected


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"dseq": "007"}, id="dseq-leading-zeros"),
        pytest.param({"specversion": "0.3"}, id="specversion-0.3"),
        pytest.param({"id": ""}, id="empty-id"),
        pytest.param({"source": "urn:evil"}, id="source"),
        pytest.param({"extra": "x"}, id="extra-attribute"),
        pytest.param({"time": "yesterday"}, id="time"),
        pytest.param({"expirytime": "2099-01-01"}, id="expirytime-a-date"),
        pytest.param({"datacontenttype": "text/plain"}, id="datacontenttype"),
        pytest.param({"data": {"x": 1}}, id="diagnostics-data"),
    ],
)
async def test_a_signed_command_outside_command_json_is_rejected(tmp_path, broker, changes):
    """contract.md "Commands" gives the envelope and the data per type, and command.json (common.json's
    commandEnvelope, cmd-*.json) is their machine-readable form: a command outside it, though signed by the pinned
    key, is not a contract command and is answered `rejected`."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        cmd, _ = peer.command(GW, DIAGNOSTICS, {})
        changed = resigned(peer, cmd, **changes)
        assert peer.schemas.errors("command.json", changed), "the changed command should be outside the schema"
        seen = len(peer.replies)
        await peer.publish_command(GW, canonical(changed))
        reply = (await peer.next_reply(GW, after=seen)).body
        assert reply["status"] == "rejected", reply


def window(**changes: Any) -> dict[str, Any]:
    w = {
        "name": "night",
        "days": ["mon"],
        "start": "22:00",
        "end": "06:00",
        "rates": [{"match": "*/*", "per_kwh": "0.1"}],
    }
    return {k: v for k, v in {**w, **changes}.items() if v is not None}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"id": "t", "version": 1, "currency": "EUR"}, id="minimal"),
        pytest.param({**tariff(1), "windows": [window(start="22:00:30")]}, id="window-seconds"),
        pytest.param({**tariff(1), "currency": "JPY", "exponent": 0}, id="exponent-0"),
        pytest.param(
            {**tariff(1), "rates": [{"match": "*/*", "per_minute": "0.000000001", "per_use": "123456789012.5"}]},
            id="rate-digits",
        ),
        pytest.param({**tariff(1), "windows": [window(days=None)]}, id="window-every-day"),
        pytest.param({**tariff(1), "windows": [window(start="00:00", end="24:00")]}, id="window-whole-day"),
    ],
)
async def test_a_tariff_that_cmd_tariff_json_accepts_is_applied(tmp_path, broker, data):
    """contract.md commands table and cmd-tariff.json: the data of a tariff command. One the schema accepts, with a
    version above the current one, is applied."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        cmd, reply = await peer.send(GW, TARIFF, data)
        assert not peer.schemas.errors("command.json", cmd)
        assert reply.body["status"] == "applied", reply.body


# Signed, above the last dseq, not expired, but data the type's schema refuses: (what, type, data).
REFUSED_DATA = [
    ("window without rates", TARIFF, {**tariff(2), "windows": [window(rates=None)]}),
    ("window on no day", TARIFF, {**tariff(2), "windows": [window(days=[])]}),
    ("window starting at 25:00", TARIFF, {**tariff(2), "windows": [window(start="25:00")]}),
    ("window ending at 06:60", TARIFF, {**tariff(2), "windows": [window(end="06:60")]}),
    ("rate with no price", TARIFF, {**tariff(2), "rates": [{"match": "*/*"}]}),
    (
        "uses grant with a string limit",
        ENTITLEMENT,
        {"id": "e1", "version": 1, "action": "grant", "appliance": "washer", "kind": "uses", "limit": "10"},
    ),
    (
        "uses grant without a limit",
        ENTITLEMENT,
        {"id": "e1", "version": 1, "action": "grant", "appliance": "washer", "kind": "uses"},
    ),
    (
        "until grant without valid_until",
        ENTITLEMENT,
        {"id": "e1", "version": 1, "action": "grant", "appliance": "washer", "kind": "until"},
    ),
    (
        "until grant with a limit",
        ENTITLEMENT,
        {
            "id": "e1",
            "version": 1,
            "action": "grant",
            "appliance": "washer",
            "kind": "until",
            "limit": 3,
            "valid_until": "2099-01-01T00:00:00Z",
        },
    ),
    (
        "grant of an empty function",
        ENTITLEMENT,
        {
            "id": "e1",
            "version": 1,
            "action": "grant",
            "appliance": "washer",
            "function": "",
            "kind": "uses",
            "limit": 1,
        },
    ),
]


async def test_command_data_that_its_schema_refuses_is_rejected(tmp_path, broker):
    """cmd-tariff.json and cmd-entitlement.json are the data's machine-readable form: a signed command whose data
    one refuses (a window without rates or days, a clock past 23:59, a rate with no price; a uses grant without an
    integer limit, an until grant without valid_until or with a limit) is answered `rejected`, and nothing moves:
    the next command the schemas accept is applied."""
    async with daemon_and_peer(tmp_path, broker) as (_, peer):
        for what, type_, data in REFUSED_DATA:
            cmd, payload = peer.command(GW, type_, data, check_schema=False)
            assert peer.schemas.errors("command.json", cmd), f"{what}: the schema should refuse it"
            seen = len(peer.replies)
            await peer.publish_command(GW, payload)
            reply = (await peer.next_reply(GW, after=seen)).body
            assert reply["status"] == "rejected", (what, reply)
        _, reply = await peer.send(GW, TARIFF, tariff(2))
        assert reply.body["status"] == "applied", reply.body
        assert_clean(peer)
