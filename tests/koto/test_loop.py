"""The loop's exception handler: aiomqtt's closed-socket race is quiet, every other callback error still loud."""

from __future__ import annotations

import asyncio
import logging
import socket

from koto.loop import install_exception_handler


async def test_a_writer_registered_after_its_socket_closed_is_logged_at_debug_not_as_a_traceback(caplog):
    loop = asyncio.get_running_loop()
    install_exception_handler(loop)
    a, b = socket.socketpair()
    fd = a.fileno()
    with caplog.at_level(logging.DEBUG, logger="koto.loop"):  # the CLI tests leave the `koto` logger at INFO
        loop.call_soon(loop.add_writer, fd, lambda: None)  # what aiomqtt does with call_soon_threadsafe
        a.close()  # the broker went away first
        b.close()
        await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("socket closed before" in r.message for r in caplog.records if r.name == "koto.loop")


async def test_any_other_error_in_a_callback_still_reaches_the_default_handler(caplog):
    loop = asyncio.get_running_loop()
    install_exception_handler(loop)

    def broken() -> None:
        raise OSError(9, "Bad file descriptor")  # the same error, but not from add_reader/add_writer

    with caplog.at_level(logging.DEBUG):
        loop.call_soon(broken)
        loop.call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.05)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "asyncio"]
    assert len(errors) == 2
