"""The reference receiver's errors, all under `koto.errors.KotoError`; each says what is wrong and what to do."""

from __future__ import annotations

from koto.errors import KotoError


class ConfigError(KotoError, ValueError):
    """A command-line option, file or URL that cannot be used; names it and says what is allowed."""


class StoreError(KotoError):
    """The database cannot be opened or used (bad DSN, unreachable server, unwritable file)."""


class NoDatabase(StoreError, FileNotFoundError):
    """A SQLite path with no database at it, given to a command that must not create one (it only reads, or needs a
    registered gateway): a mistyped `--db`. `path` is the path; `exit_code` is `koto-cloud`'s usage error (2)."""

    exit_code = 2

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"no receiver database at {path}; check --db")


class UnknownGateway(KotoError, LookupError):
    """A command for a gateway the receiver's database does not know: nothing is sent (the gateway could not be
    audited, and a mistyped id would be a command queued at the broker for nobody). `gateway` and `db` (without a
    password) say which; `exit_code` is `koto-cloud`'s usage error (2)."""

    exit_code = 2

    def __init__(self, gateway: str, db: str) -> None:
        self.gateway = gateway
        self.db = db
        super().__init__(f"{gateway} is not registered in {db}; nothing was sent (register it first: koto-cloud "
                         f"register {gateway} --pubkey <the PEM koto provision printed> --db {db})")


class NotRegistered(KotoError, LookupError):
    """`verify` or `usage` of a gateway the receiver's database does not know (a mistyped id, most often): said, not
    an empty answer; `exit_code` is `koto-cloud`'s usage error (2), as for a command to one (`UnknownGateway`)."""

    exit_code = 2

    def __init__(self, gateway: str, db: str) -> None:
        self.gateway = gateway
        self.db = db
        super().__init__(f"{gateway} is not registered in {db}")


class Rejected(KotoError, ValueError):
    """An uplink message that is not stored: malformed, unknown gateway, bad signature, wrong topic.

    `kind` is a short stable counter name (e.g. ``"bad_signature"``); the message is the plain-words reason.
    """

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


class CommandError(KotoError):
    """A downlink command that cannot be built or sent (bad payload, no reply in time)."""


class NotSent(CommandError, ConnectionError):
    """A signed command, recorded with its dseq, that the broker did not take: it could not be reached (refused,
    unreachable, a TLS failure), it refused the publish (`refused`, e.g. its ACL), or the publish went out and no
    acknowledgement came back (`unconfirmed`: it may have reached the broker, and so the gateway). `gateway`, `dseq`,
    `command` (its short type, e.g. "tariff") and `problem` (the broker's error in plain words) say which and why.

    Its dseq stays used (the gateway applies only a dseq above the last it applied, and the publish may have reached
    the broker), so the message says to re-run the command, which takes the next dseq. `exit_code` is `koto-cloud`'s
    "failed, said in one line" (1)."""

    exit_code = 1

    def __init__(self, gateway: str, dseq: int, command: str, problem: str, *, refused: bool = False,
                 unconfirmed: bool = False, hint: str = "") -> None:
        self.gateway = gateway
        self.dseq = dseq
        self.command = command
        self.problem = problem
        self.refused = refused
        self.unconfirmed = unconfirmed
        which = f"the {command} command for {gateway} (dseq {dseq})"
        if unconfirmed:
            text = (f"not confirmed: the broker did not acknowledge {which} ({problem}); it may still reach the "
                    f"gateway: see `koto-cloud commands {gateway}` (its reply, once the receiver has one) before "
                    "re-running it (a re-run takes the next dseq)")
        elif refused:
            text = (f"not sent: the broker refused {which} ({problem}); check that the broker lets this client "
                    "publish commands (--tls-cert: the operator's certificate, deploy/mosquitto/acl), then re-run "
                    "it (it will take the next dseq)")
        else:
            text = (f"not sent: {which} did not reach the broker ({problem}); re-run it when the broker is "
                    "reachable (it will take the next dseq)")
        self.hint = hint
        super().__init__(f"{text}; {hint}" if hint else text)

    def with_hint(self, hint: str) -> NotSent:
        """The same failure, its line ending with `hint` (what the re-run needs that only the sender knows)."""
        return NotSent(self.gateway, self.dseq, self.command, self.problem, refused=self.refused,
                       unconfirmed=self.unconfirmed, hint=hint)


class ReplyTimeout(CommandError):
    """The command was sent but the gateway did not reply within the wait (it stays queued for the gateway).

    `exit_code` is what `koto-cloud` exits with (4)."""

    exit_code = 4


class CommandRejected(CommandError):
    """The gateway answered the command with `rejected` (or an unknown status); `reply` is its reply.

    `exit_code` is what `koto-cloud` exits with (3)."""

    exit_code = 3

    def __init__(self, message: str, reply: dict[str, object]) -> None:
        super().__init__(message)
        self.reply = reply
