"""One event-loop exception handler for Koto's long-running processes (`koto run`, `koto-cloud serve`).

`cloud.mqtt` (as aiomqtt 2.x did before it) registers paho's socket writer from the thread that connects, with
`loop.call_soon_threadsafe(loop.add_writer, fd, ...)`. When the broker goes away between that call and the callback
running (seen when the broker restarted during a drain), the socket is already closed, `add_writer` raises
`OSError(EBADF)`, and asyncio prints a traceback for an error that changes nothing: the lost connection reaches us
through the connection's own path and we reconnect. A traceback in the
journal for it would send support staff looking for a bug that is not there, so it is logged at debug instead.
Every other unhandled callback error goes to asyncio's default handler, exactly as before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

log = logging.getLogger("koto.loop")


def is_closed_socket_race(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> bool:
    """True for an `add_reader`/`add_writer` callback that failed because its socket was closed meanwhile."""
    exc = context.get("exception")
    if not isinstance(exc, OSError) or exc.errno != errno.EBADF:
        return False
    callback = getattr(context.get("handle"), "_callback", None)
    return callback is not None and callback in (loop.add_writer, loop.add_reader)


def install_exception_handler(loop: asyncio.AbstractEventLoop) -> None:
    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if is_closed_socket_race(loop, context):
            log.debug("a socket closed before its reader/writer was registered (the connection was lost)")
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
