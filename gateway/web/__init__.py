"""The household status page, served by the daemon on the local network (`[gateway] web_port`, 0 = off).

What it shows and how it reads without blocking the metering loop: gateway/web/model.py. The routes, sessions
and the installer's PIN: app.py and pin.py. The "add an appliance" flow: pairflow.py over gateway/pairing.py.
docs/household.md is the user's side of it. microdot is imported only here, when the page is on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ..daemon import Gateway

log = logging.getLogger("koto.web")

RETRY_S = 30.0  # a port that cannot be bound (taken, no permission) is tried again this often


async def serve(gw: Gateway) -> None:
    """Serve the page until cancelled. It is for people, metering never depends on it: a port that cannot be
    bound is said once and tried again every RETRY_S, and the daemon runs on."""
    try:
        from .app import build_app
    except ImportError as e:  # a venv installed without the `web` extra: metering must not stop for the page
        log.warning("status page off: the Python package %r is not installed; reinstall Koto with its `web` extra "
                    "(deploy/install.sh does) or set [gateway] web_port = 0", e.name)
        await asyncio.Event().wait()  # until the gateway stops: a page task that ends would read as a failure
        return
    web = build_app(gw)
    host, port = gw.cfg.web_host, gw.cfg.web_port
    said = False
    try:
        while True:
            try:
                server = cast(asyncio.Server, await web.app.start_server(host=host, port=port, start_serving=False))
            except OSError as e:
                if not said:
                    log.warning("status page: cannot listen on %s:%d (%s); trying again every %g s. Another "
                                "program may use the port: set [gateway] web_port to a free one (0 = off)",
                                host, port, e.strerror or e, RETRY_S)
                    said = True
                await asyncio.sleep(RETRY_S)
                continue
            log.info("status page on http://%s:%d/", "this-gateway" if host == "0.0.0.0" else host, port)
            async with server:
                await server.serve_forever()
    finally:
        await web.flow.close()
        await web.learn.close()
