"""The receiver database's record of the commands it signed: what became of each publish, and databases made
before that was recorded (a `commands` table whose `sent_at` was set before the publish was tried).

Real peers: a SQLite file, and PostgreSQL (KOTO_TEST_PG_DSN's server, or one the tests start), each test in a schema
of its own. The sending itself, over a real broker, is tested in test_cloud_cli.py.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from cloud.store import PostgresStore, SqliteStore, Store
from cloud.store_commands import NOT_SENT, SENDING, SENT, UNCONFIRMED, UNKNOWN
from tests.support.events import EventFactory

# The `commands` table as koto-cloud made it before it recorded whether the broker took a command.
LEGACY_COMMANDS = """CREATE TABLE commands (
    gateway TEXT NOT NULL, dseq BIGINT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, body TEXT NOT NULL,
    sent_at TEXT NOT NULL, PRIMARY KEY (gateway, dseq))"""
LEGACY_ROWS = [("gw-1", 1, "c-1", "io.koto.cmd.tariff.v1", "{}", "2026-11-01T10:00:00.000Z"),
               ("gw-1", 2, "c-2", "io.koto.cmd.entitlement.v1", "{}", "2026-11-02T10:00:00.000Z")]
# What an older koto-cloud still writes into a table it shares with this one (a PostgreSQL fleet database).
OLD_INSERT = "INSERT INTO commands (gateway, dseq, id, type, body, sent_at) VALUES (?, ?, ?, ?, ?, ?)"


def command(dseq: int, type_: str = "io.koto.cmd.tariff.v1") -> dict:
    return {"id": f"c-{dseq}", "type": type_, "dseq": str(dseq)}


def states(store: Store) -> list[tuple]:
    return [(c.dseq, c.state, c.recorded_at is not None, c.sent_at is not None, c.problem)
            for c in store.commands("gw-1")]


def check_a_migrated_table(store: Store, old_insert) -> None:
    """The legacy rows are kept (their dseqs still used), say `unknown` with the old time as when they were recorded,
    and the table takes today's writes, and an older koto-cloud's."""
    store.register("gw-1", EventFactory("gw-1").public_pem)
    old = store.commands("gw-1")
    assert [(c.dseq, c.state, c.recorded_at, c.sent_at) for c in old] == [
        (1, UNKNOWN, "2026-11-01T10:00:00.000Z", None), (2, UNKNOWN, "2026-11-02T10:00:00.000Z", None)]
    assert store.next_dseq("gw-1") == 3
    for dseq, state in ((3, SENT), (4, NOT_SENT), (5, UNCONFIRMED)):
        store.add_command("gw-1", dseq, command(dseq))
        store.command_state("gw-1", dseq, state, None if state == SENT else "broker x:1: cannot connect")
    store.add_command("gw-1", 6, command(6))
    old_insert(("gw-1", 7, "c-7", "io.koto.cmd.tariff.v1", "{}", "2026-12-01T10:00:00.000Z"))
    assert states(store)[2:] == [(3, SENT, True, True, None), (4, NOT_SENT, True, False, "broker x:1: cannot connect"),
                                 (5, UNCONFIRMED, True, False, "broker x:1: cannot connect"),
                                 (6, SENDING, True, False, None), (7, UNKNOWN, False, True, None)]
    assert store.next_dseq("gw-1") == 8


def test_a_sqlite_commands_table_from_before_states_is_migrated_and_keeps_working(tmp_path: Path):
    db = tmp_path / "cloud.db"
    with sqlite3.connect(db) as conn:
        conn.execute(LEGACY_COMMANDS)
        conn.executemany(OLD_INSERT, LEGACY_ROWS)
    conn.close()
    with SqliteStore(db, create=False) as store:

        def old_insert(row: tuple) -> None:
            with sqlite3.connect(db) as other:
                other.execute(OLD_INSERT, row)
            other.close()

        check_a_migrated_table(store, old_insert)
    with SqliteStore(db, create=False) as again:  # opening a migrated database changes nothing
        assert [c.dseq for c in again.commands("gw-1")] == [1, 2, 3, 4, 5, 6, 7]
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        notnull = {r[1]: r[3] for r in conn.execute("PRAGMA table_info(commands)")}
    conn.close()
    assert "commands_migrating" not in tables
    assert notnull["sent_at"] == 0 and notnull["state"] == 1


@pytest.fixture
def pg_schema(pg_dsn: str):
    name = f"koto_test_{uuid.uuid4().hex[:10]}"
    yield name
    PostgresStore(pg_dsn, schema=name).drop_schema()


def test_a_postgresql_commands_table_from_before_states_is_migrated_and_keeps_working(pg_dsn: str, pg_schema: str):
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
        conn.execute(f'SET search_path TO "{pg_schema}"')
        conn.execute(LEGACY_COMMANDS)
        for row in LEGACY_ROWS:
            conn.execute(OLD_INSERT.replace("?", "%s"), row)
    with PostgresStore(pg_dsn, schema=pg_schema) as store, PostgresStore(pg_dsn, schema=pg_schema) as second:

        def old_insert(row: tuple) -> None:
            with psycopg.connect(pg_dsn) as other:
                other.execute(f'SET search_path TO "{pg_schema}"')
                other.execute(OLD_INSERT.replace("?", "%s"), row)

        check_a_migrated_table(store, old_insert)
        assert [c.dseq for c in second.commands("gw-1")] == [1, 2, 3, 4, 5, 6, 7]
    with psycopg.connect(pg_dsn) as conn:
        nullable = dict(conn.execute("SELECT column_name, is_nullable FROM information_schema.columns "
                                     "WHERE table_schema = %s AND table_name = 'commands'", (pg_schema,)).fetchall())
    assert nullable["sent_at"] == "YES" and nullable["state"] == "NO"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_new_database_records_each_publish_and_lists_the_gateways_reply(kind: str, tmp_path: Path, request):
    if kind == "sqlite":
        store: Store = SqliteStore(tmp_path / "cloud.db")
    else:
        schema = f"koto_test_{uuid.uuid4().hex[:10]}"
        pg_dsn = request.getfixturevalue("pg_dsn")
        request.addfinalizer(lambda: PostgresStore(pg_dsn, schema=schema).drop_schema())
        store = PostgresStore(pg_dsn, schema=schema)
    with store:
        store.register("gw-1", EventFactory("gw-1").public_pem)
        store.add_command("gw-1", 1, command(1))
        assert states(store) == [(1, SENDING, True, False, None)]
        store.command_state("gw-1", 1, SENT)
        store.add_reply("gw-1", {"ack_of": "c-1", "status": "rejected", "reason": "stale version", "dseq": "1"})
        store.add_command("gw-1", 2, command(2))
        store.command_state("gw-1", 2, NOT_SENT, "broker x:1: cannot connect")
        [first, second] = store.commands("gw-1")
        assert (first.state, first.reply) == (SENT, {"ack_of": "c-1", "status": "rejected",
                                                     "reason": "stale version", "dseq": "1"})
        assert (second.state, second.reply, second.problem) == (NOT_SENT, None, "broker x:1: cannot connect")
        assert store.next_dseq("gw-1") == 3  # a dseq is used once, sent or not
        with pytest.raises(ValueError, match="not 'sending'"):
            store.command_state("gw-1", 2, SENDING)
