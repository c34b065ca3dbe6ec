"""The receiver's record of the commands it signed, the gateways' replies and their births (the `commands`,
`replies` and `births` tables of `cloud.store`): what became of each command, so an operator can tell a command the
broker never took from one it has (docs/sync.md, "What the receiver's database records of a command")."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from koto.canonical import rfc3339

from .intake import MAX_DSEQ_DIGITS

log = logging.getLogger("koto.cloud.store")

# What the receiver's database knows of a command it signed. A dseq is used once whatever happened to its command (the
# gateway applies only a dseq above the last it applied, and a publish that failed may still have reached the
# broker), so a command that was not sent stays recorded as such and a re-run takes the next dseq.
SENDING = "sending"          # recorded, the publish not answered yet (left so: the tool stopped before an answer)
SENT = "sent"                # the broker acknowledged the publish (its PUBACK): it has the command
NOT_SENT = "not_sent"        # the broker never had it: no connection (refused, TLS, unreachable), or it refused it
UNCONFIRMED = "unconfirmed"  # the publish went out but no acknowledgement came back: it may have reached the broker
UNKNOWN = "unknown"          # recorded before koto-cloud tracked sending (a migrated row, or an older koto-cloud's)
COMMAND_STATES = (SENDING, SENT, NOT_SENT, UNCONFIRMED, UNKNOWN)
MIGRATED = ("commands recorded before now are listed as `unknown`: whether they reached the broker was not "
            "recorded")


def now() -> str:
    """The time now, as the tables store it (RFC 3339)."""
    return rfc3339(time.time())


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command as the receiver's database recorded it, with the gateway's last reply to it (None: none stored)."""

    gateway: str
    dseq: int
    id: str
    type: str
    state: str
    recorded_at: str | None
    sent_at: str | None
    problem: str | None
    reply: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "dseq": self.dseq, "id": self.id, "type": self.type, "state": self.state,
                "recorded_at": self.recorded_at, "sent_at": self.sent_at, "problem": self.problem,
                "reply": self.reply}


class CommandLog:
    """The commands, replies and births half of `cloud.store.Store`, which supplies the connection and the
    transaction methods below."""

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _done(self) -> None:
        raise NotImplementedError

    def _undo(self) -> None:
        raise NotImplementedError

    def next_dseq(self, gateway: str) -> int:
        """One above the highest dseq sent to this gateway or reported in its last birth."""
        row = self._x("SELECT MAX(dseq) FROM commands WHERE gateway = ?", (gateway,)).fetchone()
        sent = int(row[0]) if row and row[0] is not None else 0
        birth = self.birth(gateway)
        text = str(birth.get("last_dseq") or "0") if birth is not None else "0"
        # The receiver refuses a birth whose last_dseq does not fit (cloud/intake.py); a database written before
        # that check may still hold one, and it must not block every command to the gateway (issue 14).
        if not (text.isascii() and text.isdigit() and len(text) <= MAX_DSEQ_DIGITS):
            log.warning("%s: ignoring the last_dseq %r of its stored birth (not a dseq of at most %d digits)",
                        gateway, text[:40], MAX_DSEQ_DIGITS)
            text = "0"
        return max(sent, int(text)) + 1

    def add_command(self, gateway: str, dseq: int, event: dict[str, Any]) -> None:
        """Record a signed command before it is published (state `sending`): from now on its dseq is used."""
        self._begin()
        try:
            self._x("INSERT INTO commands (gateway, dseq, id, type, body, recorded_at, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (gateway, dseq, event["id"], event["type"], json.dumps(event, sort_keys=True), now(), SENDING))
            self._done()
        except BaseException:
            self._undo()
            raise

    def command_state(self, gateway: str, dseq: int, state: str, problem: str | None = None) -> None:
        """What became of the publish of a recorded command: SENT (sets `sent_at`), NOT_SENT or UNCONFIRMED (with
        the `problem` in plain words)."""
        if state not in (SENT, NOT_SENT, UNCONFIRMED):
            raise ValueError(f"a command's publish ends {SENT}, {NOT_SENT} or {UNCONFIRMED}, not {state!r}")
        self._begin()
        try:
            self._x("UPDATE commands SET state = ?, sent_at = ?, problem = ? WHERE gateway = ? AND dseq = ?",
                    (state, now() if state == SENT else None, problem, gateway, dseq))
            self._done()
        except BaseException:
            self._undo()
            raise

    def commands(self, gateway: str) -> list[CommandRecord]:
        """Every command recorded for `gateway`, by dseq, each with the last reply stored for it."""
        rows = self._x("SELECT dseq, id, type, state, recorded_at, sent_at, problem FROM commands WHERE gateway = ? "
                       "ORDER BY dseq", (gateway,)).fetchall()
        replies = self._x("SELECT ack_of, body FROM replies WHERE gateway = ? ORDER BY received_at",
                          (gateway,)).fetchall()
        self._done()
        last = {str(ack_of): dict(json.loads(body)) for ack_of, body in replies}
        return [CommandRecord(gateway, int(dseq), str(id_), str(type_), str(state), recorded_at, sent_at, problem,
                              last.get(str(id_)))
                for dseq, id_, type_, state, recorded_at, sent_at, problem in rows]

    def add_reply(self, gateway: str, reply: dict[str, Any]) -> None:
        self._begin()
        try:
            self._x("INSERT INTO replies (gateway, ack_of, status, reason, dseq, body, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, ack_of, status, dseq) DO NOTHING",
                    (gateway, str(reply.get("ack_of", "")), str(reply.get("status", "")),
                     str(reply.get("reason", "")), str(reply.get("dseq", "")), json.dumps(reply, sort_keys=True),
                     now()))
            self._done()
        except BaseException:
            self._undo()
            raise

    def replies(self, gateway: str) -> list[dict[str, Any]]:
        rows = self._x("SELECT body FROM replies WHERE gateway = ? ORDER BY received_at", (gateway,)).fetchall()
        self._done()
        return [json.loads(r[0]) for r in rows]

    def set_birth(self, gateway: str, birth: dict[str, Any]) -> None:
        self._begin()
        try:
            self._x("INSERT INTO births (gateway, body, received_at) VALUES (?, ?, ?) ON CONFLICT (gateway) "
                    "DO UPDATE SET body = excluded.body, received_at = excluded.received_at",
                    (gateway, json.dumps(birth, sort_keys=True), now()))
            self._done()
        except BaseException:
            self._undo()
            raise

    def birth(self, gateway: str) -> dict[str, Any] | None:
        row = self._x("SELECT body FROM births WHERE gateway = ?", (gateway,)).fetchone()
        self._done()
        return None if row is None else dict(json.loads(row[0]))
