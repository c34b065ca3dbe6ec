"""`koto-cloud` as operators use it: keys, registration, signed commands over a real broker, audit and summary."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import aiomqtt
import click
import pytest

from cloud.cli import main
from cloud.store import SqliteStore
from cloud.verify import parse_event
from koto.signing import load_public_key, verify_event
from tests.support.broker import Mosquitto, free_port
from tests.support.events import EventFactory
from tests.support.paths import REPO
from tests.support.schemas import errors


def test_keygen_writes_a_private_key_and_prints_the_public_pem(tmp_path, capsys):
    out = tmp_path / "operator.pem"
    assert main(["keygen", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("-----BEGIN PUBLIC KEY-----")
    assert (out.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "operator.pub.pem").read_text() == printed
    assert main(["keygen", "--out", str(out)]) == 1  # never silently replaces a key gateways have pinned
    assert "exists" in capsys.readouterr().err


def test_register_verify_and_usage(tmp_path, capsys):
    f = EventFactory("gw-1")
    pub = tmp_path / "gw.pub.pem"
    pub.write_text(f.public_pem)
    db = tmp_path / "cloud.db"
    assert main(["register", "gw-1", "--pubkey", str(pub), "--db", str(db)]) == 0
    with SqliteStore(db) as s:
        s.commit([parse_event(b) for b in f.chain(20)])
    assert main(["verify", "gw-1", "--db", str(db)]) == 0
    assert "gw-1: 20 records, 0 problems" in capsys.readouterr().out
    assert main(["usage", "gw-1", "--db", str(db), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"urn:koto:appliance:washer-1 wash_40":
                       {"records": 20, "uses": 2, "energy_mwh": 2400, "duration_ms": 1_200_000}}
    # Someone edits a stored record: the offline verification finds it.
    with sqlite3.connect(db) as conn:
        body = conn.execute("SELECT body FROM records WHERE id = '1-7'").fetchone()[0]
        conn.execute("UPDATE records SET body = ? WHERE id = '1-7'",
                     (body.replace('"energy_mwh":120', '"energy_mwh":1'),))
    assert main(["verify", "gw-1", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "seq 7: signature does not verify" in out and "seq 8: prevhash" in out
    assert main(["verify", "gw-9", "--db", str(db)]) == 2  # not registered: a usage error (docs/sync.md)


def test_register_refuses_a_file_that_is_not_a_p256_public_key(tmp_path, capsys):
    bad = tmp_path / "gw.pub.pem"
    bad.write_text("hello")
    assert main(["register", "gw-1", "--pubkey", str(bad), "--db", str(tmp_path / "c.db")]) == 1
    assert "cannot load the public key" in capsys.readouterr().err


def registered(tmp_path, gw: str = "gw-1"):
    """A receiver database with `gw` registered: commands go only to registered gateways."""
    pub, db = tmp_path / f"{gw}.pub.pem", tmp_path / "cloud.db"
    pub.write_text(EventFactory(gw).public_pem)
    assert main(["register", gw, "--pubkey", str(pub), "--db", str(db)]) == 0
    return db


class CommandSink:
    """A gateway-side peer: collects commands on its down/cmd and answers diagnostics like a gateway would."""

    def __init__(self, broker: Mosquitto, gw: str, *, verdict: str = "applied", reason: str = "",
                 tls_context=None) -> None:
        self.gw = gw
        self.verdict, self.reason = verdict, reason
        self.client = aiomqtt.Client(broker.host, broker.port, identifier=gw, protocol=aiomqtt.ProtocolVersion.V5,
                                     tls_context=tls_context)
        self.commands: list[dict] = []

    async def run(self, ready: asyncio.Event) -> None:
        async with self.client as c:
            await c.subscribe(f"koto/v1/{self.gw}/down/cmd", qos=1)
            ready.set()
            async for m in c.messages:
                cmd = json.loads(m.payload)
                self.commands.append(cmd)
                if cmd["type"] == "io.koto.cmd.diagnostics.v1":
                    reply = {"ack_of": cmd["id"], "status": self.verdict, "reason": self.reason, "dseq": cmd["dseq"],
                             "gateway": self.gw, "time": "2026-11-30T01:02:03.045Z", "report": {"unacked": 0}}
                    await c.publish(f"koto/v1/{self.gw}/up/reply", json.dumps(reply).encode(), qos=1)


async def test_commands_are_signed_addressed_sequenced_and_valid(broker, tmp_path, capsys):
    key, db = tmp_path / "operator.pem", registered(tmp_path)
    assert main(["keygen", "--out", str(key)]) == 0
    operator = load_public_key(capsys.readouterr().out)
    tariff = tmp_path / "tariff.toml"
    tariff.write_text('id = "home"\nversion = 3\ncurrency = "EUR"\n[[rates]]\nmatch = "*"\nper_kwh = "0.31"\n')
    bad_tariff = tmp_path / "bad.json"
    bad_tariff.write_text('{"id": "home", "version": 4, "currency": "euro"}')
    common = ["--operator-key", str(key), "--db", str(db), "--broker", broker.url]
    sink = CommandSink(broker, "gw-1")
    ready = asyncio.Event()
    task = asyncio.create_task(sink.run(ready))
    await ready.wait()
    run = lambda *argv: asyncio.to_thread(main, [*argv, *common])  # noqa: E731
    assert await run("tariff", "gw-1", "--file", str(tariff)) == 0
    assert await run("grant", "gw-1", "--appliance", "washer-1", "--function", "wash_40", "--uses", "10",
                     "--id", "e1", "--valid-until", "2027-01-01") == 0
    assert await run("revoke", "gw-1", "--id", "e1", "--entitlement-version", "2") == 0
    assert await run("profile", "gw-1", "--file", str(REPO / "metering/profiles/kettle.toml"),
                     "--name", "kettle", "--profile-version", "2") == 0
    assert await run("tariff", "gw-1", "--file", str(bad_tariff)) == 1  # refused before anything is sent
    assert "currency" in capsys.readouterr().err
    assert await run("diagnose", "gw-1", "--wait", "10") == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["report"] == {"unacked": 0}
    task.cancel()
    types = [c["type"].split(".")[3] for c in sink.commands]
    assert types == ["tariff", "entitlement", "entitlement", "profile", "diagnostics"]
    assert [c["dseq"] for c in sink.commands] == ["1", "2", "3", "4", "5"]
    for c in sink.commands:
        assert verify_event([operator], c)
        assert c["subject"] == "urn:koto:gw:gw-1"
        assert errors("command.json", c) == []
    assert sink.commands[1]["data"] == {"id": "e1", "version": 1, "action": "grant", "appliance": "washer-1",
                                        "function": "wash_40", "kind": "uses", "limit": 10,
                                        "valid_until": "2027-01-01T00:00:00.000Z"}
    assert sink.commands[0]["data"]["rates"] == [{"match": "*/*", "per_kwh": "0.31"}]
    with SqliteStore(db) as s:
        assert s.next_dseq("gw-1") == 6
        assert [r["status"] for r in s.replies("gw-1")] == ["applied"]


def test_a_bad_broker_url_is_a_plain_error(tmp_path, capsys):
    assert main(["serve", "--broker", "http://x", "--db", str(tmp_path / "c.db")]) == 1
    assert "mqtt://" in capsys.readouterr().err


async def test_exit_codes_say_whether_the_gateway_applied_rejected_or_never_answered(broker, tmp_path, capsys):
    key, db = tmp_path / "operator.pem", registered(tmp_path)
    assert main(["keygen", "--out", str(key)]) == 0
    common = ["--operator-key", str(key), "--db", str(db), "--broker", broker.url]
    grant = ["grant", "gw-1", "--appliance", "washer-1", "--uses", "3", *common]
    assert await asyncio.to_thread(main, ["diagnose", "gw-1", "--wait", "1", *common]) == 4
    assert "no reply from gw-1 within 1 s" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*grant, "--wait", "1"]) == 4
    assert await asyncio.to_thread(main, grant) == 0  # without --wait: queued at the broker, nothing to wait for
    for verdict, code in (("rejected", 3), ("applied", 0)):
        sink = CommandSink(broker, "gw-1", verdict=verdict, reason="bad signature: not an operator key")
        ready = asyncio.Event()
        task = asyncio.create_task(sink.run(ready))
        await ready.wait()
        try:
            assert await asyncio.to_thread(main, ["diagnose", "gw-1", "--wait", "10", *common]) == code
        finally:
            task.cancel()
        if code == 3:
            assert "gw-1 rejected the command: bad signature" in capsys.readouterr().err
    assert main(["grant", "gw-1", "--appliance", "w", *common]) == 2  # usage: one of --uses/--kwh/--until
    assert "exactly one of" in capsys.readouterr().err
    # Exit 4 (no reply) and 3 (rejected) are about the gateway: the broker took every one of these commands.
    assert {state for _, state, _ in command_rows(str(db))} == {"sent"}


def test_help_and_version_everywhere(capsys):
    from importlib.metadata import version

    for argv in (["-h"], ["--help"], *([c, "-h"] for c in main_commands())):
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        assert out.startswith("Usage: koto-cloud") and "Exit codes:" in out, argv
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"koto-cloud {version('koto-gateway')}\n"


def main_commands() -> list[str]:
    from cloud.cli import cli

    return sorted(cli.commands)


def test_no_option_name_means_two_things():
    """An option name lands in the same parameter in every subcommand (as `--key` did not: the TLS key in `serve`,
    the signing key elsewhere), and no visible option shadows the program's own `--version`."""
    from cloud.cli import cli

    dest: dict[str, set[str]] = {}
    for cmd in cli.commands.values():
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                for opt in p.opts:
                    dest.setdefault(opt, set()).add(str(p.name))
    assert {opt: names for opt, names in dest.items() if len(names) > 1} == {}
    assert {"--tls-key", "--tls-cert", "--ca", "--operator-key", "--wait"} <= set(dest)
    assert not {"--key", "--cert", "--cert-key", "--version"} & set(dest)


async def test_old_option_spellings_still_work_and_warn_once(broker, tmp_path, capsys):
    import cloud.cli

    cloud.cli._warned.clear()
    key, db = tmp_path / "operator.pem", registered(tmp_path)
    assert main(["keygen", "--out", str(key)]) == 0
    old = ["--key", str(key), "--db", str(db), "--broker", broker.url]
    capsys.readouterr()
    for _ in range(2):
        assert await asyncio.to_thread(main, ["revoke", "gw-1", "--id", "e1", "--version", "2", *old]) == 0
    err = capsys.readouterr().err
    assert err.count("--key is deprecated here; use --operator-key") == 1
    assert err.count("--version is deprecated here; use --entitlement-version") == 1
    with SqliteStore(db) as s:
        assert s.next_dseq("gw-1") == 3
    both = ["revoke", "gw-1", "--id", "e1", "--version", "2", "--operator-key", str(key), *old]
    assert main(both) == 2
    assert "not both" in capsys.readouterr().err


def test_commands_that_only_read_refuse_a_database_that_does_not_exist(tmp_path, capsys):
    """A mistyped --db is said in one line (exit 2) and leaves no new empty database behind; the commands that make
    a database (register, serve) still make it."""
    missing = tmp_path / "nope.db"
    for argv in (["verify", "gw-test"], ["usage", "gw-test"], ["usage", "gw-test", "--json"]):
        assert main([*argv, "--db", str(missing)]) == 2, argv
        assert capsys.readouterr().err == f"koto-cloud: no receiver database at {missing}; check --db\n", argv
        assert not missing.exists(), argv
    pub = tmp_path / "gw.pub.pem"
    pub.write_text(EventFactory("gw-test").public_pem)
    assert main(["register", "gw-test", "--pubkey", str(pub), "--db", str(missing)]) == 0
    assert main(["usage", "gw-test", "--db", str(missing)]) == 0
    assert capsys.readouterr().out.endswith("no usage stored for gw-test yet\n")
    assert main(["verify", "gw-test", "--db", str(missing)]) == 0


def test_usage_of_a_gateway_that_is_not_registered_says_so(tmp_path, capsys):
    db = registered(tmp_path, "gw-1")
    assert main(["usage", "gw-l", "--db", str(db)]) == 2  # a mistyped id: said, not an empty answer
    assert capsys.readouterr().err == f"koto-cloud: gw-l is not registered in {db}\n"
    assert main(["verify", "gw-l", "--db", str(db)]) == 2  # docs/sync.md: a gateway not registered is exit 2
    assert capsys.readouterr().err == f"koto-cloud: gw-l is not registered in {db}\n"


async def test_commands_to_a_gateway_that_is_not_registered_are_refused_before_anything_is_sent(
        broker, tmp_path, capsys):
    """Every command sender refuses a gateway the database does not know (exit 2, one line naming both, the
    `register` command to run) and sends and records nothing; a --db with no database is refused the same way."""
    key, db = tmp_path / "operator.pem", registered(tmp_path, "gw-1")
    assert main(["keygen", "--out", str(key)]) == 0
    tariff = tmp_path / "tariff.toml"
    tariff.write_text('id = "home"\nversion = 3\ncurrency = "EUR"\n[[rates]]\nmatch = "*"\nper_kwh = "0.31"\n')
    sends = (["tariff", "--file", str(tariff)], ["grant", "--appliance", "washer-1", "--uses", "3"],
             ["revoke", "--id", "e1", "--entitlement-version", "2"],
             ["profile", "--file", str(REPO / "metering/profiles/kettle.toml"), "--name", "kettle",
              "--profile-version", "2"],
             ["diagnose", "--wait", "1"])
    sink = CommandSink(broker, "gw-2")
    ready = asyncio.Event()
    task = asyncio.create_task(sink.run(ready))
    await ready.wait()
    capsys.readouterr()
    try:
        for cmd, *args in sends:
            argv = [cmd, "gw-2", *args, "--operator-key", str(key), "--db", str(db), "--broker", broker.url]
            assert await asyncio.to_thread(main, argv) == 2, cmd
            assert capsys.readouterr().err == (
                f"koto-cloud: gw-2 is not registered in {db}; nothing was sent (register it first: "
                f"koto-cloud register gw-2 --pubkey <the PEM koto provision printed> --db {db})\n"), cmd
            missing = tmp_path / "nope.db"
            argv = [cmd, "gw-1", *args, "--operator-key", str(key), "--db", str(missing), "--broker", broker.url]
            assert await asyncio.to_thread(main, argv) == 2, cmd
            assert capsys.readouterr().err == f"koto-cloud: no receiver database at {missing}; check --db\n", cmd
            assert not missing.exists(), cmd
        await asyncio.sleep(0.5)  # a command that had been published would have reached the sink by now
    finally:
        task.cancel()
    assert sink.commands == []
    with SqliteStore(db) as s:
        assert s.next_dseq("gw-2") == 1  # nothing recorded as sent either


def test_a_postgresql_password_is_not_printed_with_the_database():
    from cloud.cli import _db_name

    assert _db_name("postgresql://koto:s3cret@db:5432/koto") == "postgresql://koto:***@db:5432/koto"
    assert _db_name("postgres://db/koto?password=s3cret&sslmode=require") == \
        "postgres://db/koto?password=***&sslmode=require"
    assert _db_name("postgresql://db/koto") == "postgresql://db/koto"
    assert _db_name("cloud.db") == "cloud.db"


@pytest.mark.parametrize("content", ["public", b"", b"garbage, not a key\n"])
def test_a_wrong_operator_key_file_gets_operator_advice(tmp_path, capsys, content):
    """The public key given by mistake (or an empty or garbage file) is said in one line with what the operator
    should give instead, not the gateway's advice (restore a device key, start a new epoch)."""
    key = tmp_path / "operator.pem"
    assert main(["keygen", "--out", str(key)]) == 0
    given = tmp_path / "operator.pub.pem" if content == "public" else tmp_path / "bad.pem"
    if content != "public":
        given.write_bytes(content)
    db = registered(tmp_path)
    capsys.readouterr()
    argv = ["grant", "gw-1", "--appliance", "washer-1", "--uses", "3", "--operator-key", str(given), "--db", str(db),
            "--broker", "mqtt://127.0.0.1:1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"koto-cloud: {given}") and err.count("\n") == 1, err
    assert "the operator's private key, the PEM `koto-cloud keygen --out` wrote" in err
    assert not [w for w in ("gateway", "epoch", "provision", "backup") if w in err.replace(str(given), "")], err
    if content == "public":
        assert f"koto-cloud: {given} is a public key;" in err


def test_a_postgresql_database_that_is_missing_or_a_server_that_is_down_is_one_line_saying_what_to_do(
        pg_dsn, tmp_path, capsys):
    """An operator's first `register --db postgresql://.../koto` before `createdb koto` printed psycopg's message
    (two lines for a server that is down) and nothing to do; register and serve make the tables, not the database."""
    from urllib.parse import urlsplit

    parts = urlsplit(pg_dsn)
    missing = parts._replace(path="/koto_no_such_db").geturl()
    host, port, user = parts.hostname, parts.port or 5432, parts.username or "postgres"
    pub = tmp_path / "gw.pub.pem"
    pub.write_text(EventFactory("gw-1").public_pem)
    assert main(["register", "gw-1", "--pubkey", str(pub), "--db", missing]) == 1
    assert capsys.readouterr().err == (
        f'koto-cloud: the PostgreSQL server at {host}:{port} has no database "koto_no_such_db": create it first '
        f"(createdb -h {host} -p {port} -U {user} koto_no_such_db; register and serve then make the tables), or "
        "check --db\n")
    down = parts._replace(netloc=f"{user}@127.0.0.1:{free_port()}").geturl()
    assert main(["usage", "gw-1", "--db", down]) == 1
    err = capsys.readouterr().err
    assert err.startswith("koto-cloud: cannot reach the PostgreSQL server at 127.0.0.1:") and err.count("\n") == 1
    assert err.endswith("is it running, and are --db's host and port right?\n")


# -- a command the broker did not take: recorded as such, its dseq used, the next run takes a new one ----------
@pytest.fixture(params=["sqlite", "postgresql"])
def cloud_db(request, tmp_path) -> str:
    """A receiver database (SQLite file, or PostgreSQL in a schema of its own) with gw-1 registered, as `--db`."""
    if request.param == "sqlite":
        return str(registered(tmp_path))
    import uuid

    from cloud.store import PostgresStore

    pg_dsn = request.getfixturevalue("pg_dsn")
    schema = f"koto_test_{uuid.uuid4().hex[:10]}"
    PostgresStore(pg_dsn, schema=schema).close()
    request.addfinalizer(lambda: PostgresStore(pg_dsn, schema=schema).drop_schema())
    db = f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}options=-csearch_path%3D{schema}"
    pub = tmp_path / "gw-1.pub.pem"
    pub.write_text(EventFactory("gw-1").public_pem)
    assert main(["register", "gw-1", "--pubkey", str(pub), "--db", db]) == 0
    return db


def command_rows(db: str, gw: str = "gw-1") -> list[tuple]:
    from cloud.store import open_store

    with open_store(db, create=False) as s:
        return [(c.dseq, c.state, c.sent_at is not None) for c in s.commands(gw)]


async def test_a_command_that_never_reached_the_broker_is_recorded_as_not_sent(cloud_db, tmp_path, capsys):
    """Broker refused (nothing listens) or TLS to a plain port: exit 1, one line saying it was not sent and to re-run
    when the broker is reachable; the record says "not sent" with why, and its dseq stays used, so the re-run takes
    the next one and the gateway, which only applies a dseq above the last, gets it."""
    key = tmp_path / "operator.pem"
    assert main(["keygen", "--out", str(key)]) == 0
    grant = ["grant", "gw-1", "--appliance", "washer-1", "--uses", "3", "--id", "e1", "--operator-key", str(key),
             "--db", cloud_db]
    refused = f"mqtt://127.0.0.1:{free_port()}"
    capsys.readouterr()
    assert await asyncio.to_thread(main, [*grant, "--broker", refused]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("koto-cloud: not sent: the entitlement command for gw-1 (dseq 1) did not reach the broker")
    assert "Connection refused" in err
    assert err.endswith("re-run it when the broker is reachable (it will take the next dseq)")
    assert command_rows(cloud_db) == [(1, "not_sent", False)]
    with Mosquitto(tmp_path / "broker") as broker:
        plain_as_tls = f"mqtts://{broker.host}:{broker.port}"
        assert await asyncio.to_thread(main, [*grant, "--broker", plain_as_tls]) == 1
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith("koto-cloud: not sent: the entitlement command for gw-1 (dseq 2)")
        assert "the port may not speak TLS" in err
        sink = CommandSink(broker, "gw-1")
        ready = asyncio.Event()
        task = asyncio.create_task(sink.run(ready))
        await ready.wait()
        try:
            assert await asyncio.to_thread(main, [*grant, "--broker", broker.url]) == 0
            await until_true(lambda: len(sink.commands) == 1)
        finally:
            task.cancel()
    assert [c["dseq"] for c in sink.commands] == ["3"]  # 1 and 2 never left: the broker saw only this one
    assert command_rows(cloud_db) == [(1, "not_sent", False), (2, "not_sent", False), (3, "sent", True)]
    capsys.readouterr()
    assert main(["commands", "gw-1", "--db", cloud_db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "not sent: broker 127.0.0.1:" in lines[0] and "Connection refused" in lines[0]
    assert "not sent: broker" in lines[1] and "sent: the broker took it at " in lines[2]
    assert main(["commands", "gw-1", "--db", cloud_db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(c["dseq"], c["state"]) for c in listed] == [(1, "not_sent"), (2, "not_sent"), (3, "sent")]
    assert listed[0]["sent_at"] is None and listed[2]["sent_at"] is not None


async def test_a_grant_not_sent_says_how_to_send_the_same_grant_again(cloud_db, tmp_path, capsys):
    """A grant without --id gets a new entitlement id on every run, so re-running one that may have reached the
    gateway (not confirmed) would grant twice: the line names the id to re-run it with (the gateway takes the same
    id and version again as a duplicate). With --id given, the line says nothing more."""
    key = tmp_path / "operator.pem"
    assert main(["keygen", "--out", str(key)]) == 0
    grant = ["grant", "gw-1", "--appliance", "washer-1", "--uses", "3", "--operator-key", str(key), "--db", cloud_db,
             "--broker", f"mqtt://127.0.0.1:{free_port()}"]
    capsys.readouterr()
    assert await asyncio.to_thread(main, grant) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("koto-cloud: not sent: the entitlement command for gw-1 (dseq 1)")
    hint = "; to send this same grant again, not a second one, re-run it with --id ent-washer-1-"
    assert hint in err and err.split("--id ")[-1].removeprefix("ent-washer-1-").isdigit()
    assert await asyncio.to_thread(main, [*grant, "--id", "e7"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert "--id" not in err and err.endswith("re-run it when the broker is reachable (it will take the next dseq)")


async def until_true(cond, within: float = 10.0) -> None:
    from tests.support.cloudpeer import until

    await until(cond, within)


async def test_a_command_the_broker_refuses_is_recorded_as_not_sent(tmp_path, capsys):
    """deploy/mosquitto's ACL lets only the operators' certificate write down/cmd; under MQTT 5 the broker answers
    another's publish with PUBACK 135 (Not authorized) and drops it. That PUBACK was taken for "sent" (exit 0)."""
    from tests.support.cloudpeer import tls_for
    from tests.support.pki import TestPKI

    key, db = tmp_path / "operator.pem", registered(tmp_path)
    assert main(["keygen", "--out", str(key)]) == 0
    pki = TestPKI(tmp_path / "pki")
    revoke = ["revoke", "gw-1", "--id", "e1", "--entitlement-version", "2", "--operator-key", str(key), "--db",
              str(db), "--ca", str(pki.ca)]
    with Mosquitto(tmp_path / "broker", pki=pki) as broker:
        sink = CommandSink(broker, "gw-1", tls_context=tls_for(broker, "gw-1"))
        ready = asyncio.Event()
        task = asyncio.create_task(sink.run(ready))
        await ready.wait()
        capsys.readouterr()
        try:
            for cn, code in (("koto-receiver", 1), ("koto-operator", 0)):
                pair = pki.client(cn)
                argv = [*revoke, "--broker", broker.url, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
                assert await asyncio.to_thread(main, argv) == code, cn
            await until_true(lambda: len(sink.commands) == 1)
            await asyncio.sleep(0.3)  # a refused command that had been delivered after all would be here by now
        finally:
            task.cancel()
    err = capsys.readouterr().err
    assert ("koto-cloud: not sent: the broker refused the entitlement command for gw-1 (dseq 1) (broker "
            f"127.0.0.1:{broker.port}: the broker refused the message to koto/v1/gw-1/down/cmd (Not authorized)); "
            "check that the broker lets this client publish commands") in err
    assert [c["dseq"] for c in sink.commands] == ["2"]
    assert command_rows(str(db)) == [(1, "not_sent", False), (2, "sent", True)]


async def test_a_publish_the_broker_never_acknowledged_is_recorded_as_not_confirmed(tmp_path, capsys):
    """The PUBLISH left but the connection died before the broker's PUBACK (a broker crash, a lost link): the command
    may have reached the broker, so it is neither "sent" nor "not sent". A scripted broker stands in for the real one
    here, because Mosquitto cannot be made to lose one PUBACK on demand: it answers CONNECT, reads the PUBLISH and
    hangs up."""
    got: list[int] = []

    async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        kind = (await reader.readexactly(1))[0] >> 4
        length, shift = 0, 0
        while True:
            b = (await reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return kind, await reader.readexactly(length)

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind, _ = await read_packet(reader)
        assert kind == 1  # CONNECT
        writer.write(b"\x20\x03\x00\x00\x00")  # MQTT 5 CONNACK: no session, success, no properties
        await writer.drain()
        kind, _ = await read_packet(reader)
        got.append(kind)
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    key, db = tmp_path / "operator.pem", registered(tmp_path)
    assert main(["keygen", "--out", str(key)]) == 0
    capsys.readouterr()
    try:
        argv = ["grant", "gw-1", "--appliance", "washer-1", "--uses", "3", "--operator-key", str(key), "--db",
                str(db), "--broker", f"mqtt://127.0.0.1:{port}"]
        assert await asyncio.to_thread(main, argv) == 1
    finally:
        server.close()
        await server.wait_closed()
    assert got == [3]  # the PUBLISH did leave
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("koto-cloud: not confirmed: the broker did not acknowledge the entitlement command "
                              "for gw-1 (dseq 1) (broker 127.0.0.1:")
    assert "before re-running it (a re-run takes the next dseq); to send this same grant again, not a second one, " \
           "re-run it with --id ent-washer-1-" in err[-1]  # (it may have arrived: a new id would grant twice)
    assert command_rows(str(db)) == [(1, "unconfirmed", False)]
    assert main(["commands", "gw-1", "--db", str(db)]) == 0
    assert "not confirmed: broker 127.0.0.1:" in capsys.readouterr().out
