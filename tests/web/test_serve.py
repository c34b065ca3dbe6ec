"""The page is for people; metering never depends on it: a gateway whose web port is taken meters on, says so once
in the log, and stops cleanly."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from tests.support.paths import REPO
from tests.support.slow import scaled
from tests.web.conftest import Household, wait_for


def test_a_taken_web_port_is_said_once_and_the_gateway_meters_on(household: Household, tmp_path: Path) -> None:
    port = urlparse(household.url).port  # the session's gateway listens there already
    log = tmp_path / "second.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.web.household", "--folder", str(tmp_path / "gw"),
                                 "--port", str(port)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], scaled(60))
            assert ready and json.loads(proc.stdout.readline())["config"]
            wait_for(lambda: "status page: cannot listen on 127.0.0.1" in log.read_text(), "the warning")

            def metered() -> bool:  # the second gateway's ledger grows: it meters without its page
                import sqlite3

                db = tmp_path / "gw" / "state" / "ledger.db"
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    return bool(conn.execute("SELECT count(*) FROM records WHERE type='io.koto.usage.v1'")
                                .fetchone()[0])

            wait_for(metered, "usage records from the gateway without its page", timeout_s=60, every_s=1.0)
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(scaled(30))
    assert code == 0
    assert log.read_text().count("status page: cannot listen") == 1
