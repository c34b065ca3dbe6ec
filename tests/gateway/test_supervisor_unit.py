"""The supervisor's parts in-process: the stop deadline's timer (its exit injected, not os._exit) and a guard that
turns a task's error into a clean stop instead of a task-group abort."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.errors import DaemonFailed
from gateway.supervisor import EXIT_DEADLINE, StopDeadline, Supervisor


def test_the_deadline_exits_once_started_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    exited: list[int] = []
    done = threading.Event()
    deadline = StopDeadline(0.05, exit=lambda code: (exited.append(code), done.set()))
    assert not deadline.started
    deadline.start()
    deadline.start()  # the first stop request counts; a second one does not restart the clock
    assert done.wait(5)
    assert exited == [EXIT_DEADLINE]
    assert "the stop did not finish within 0.05 s" in caplog.text


def test_a_finished_stop_leaves_with_its_own_status_and_last_words(capsys: pytest.CaptureFixture[str]) -> None:
    exited: list[int] = []
    done = threading.Event()
    deadline = StopDeadline(60, exit=lambda code: (exited.append(code), done.set()))
    deadline.start()
    deadline.finished(code=2, last_words="koto: the reason", grace_s=0.05)  # replaces the 60 s timer
    assert done.wait(5)
    assert exited == [2]
    assert capsys.readouterr().err == "koto: the reason\n"


async def test_a_task_error_becomes_one_failure_and_a_stop_not_an_abort() -> None:
    stop = asyncio.Event()
    sup = Supervisor(stop)

    async def broken() -> None:
        raise ZeroDivisionError("division by zero")

    async def healthy() -> None:
        await asyncio.sleep(3600)

    async with asyncio.TaskGroup() as tg:
        other = tg.create_task(healthy())
        tg.create_task(sup.guard("meter loop", broken()))
        await stop.wait()
        assert not other.done()  # the group was not aborted: the other task runs until the stop cancels it
        other.cancel()
    assert isinstance(sup.failure, DaemonFailed)
    assert str(sup.failure) == "meter loop failed: ZeroDivisionError: division by zero"
