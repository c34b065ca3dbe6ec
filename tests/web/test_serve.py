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
    code, log = meters_without_its_page(tmp_path, port, "status page: cannot listen on 127.0.0.1")
    assert code == 0
    assert log.count("status page: cannot listen") == 1


def test_a_venv_without_the_web_extra_says_so_once_and_meters_on(household: Household, tmp_path: Path) -> None:
    """An install made without the `web` extra (microdot absent): one warning that says what to install, no stop."""
    absent = tmp_path / "absent"
    absent.mkdir()
    (absent / "microdot.py").write_text("raise ImportError('No module named microdot', name='microdot')\n")
    port = urlparse(household.url).port  # the harness waits for a page there: the session's answers, ours never comes
    code, log = meters_without_its_page(tmp_path, port, "status page off: the Python package 'microdot'",
                                        path_first=absent)
    assert code == 0
    assert log.count("status page off") == 1


def meters_without_its_page(tmp_path: Path, port: int | None, warning: str, *,
                            path_first: Path | None = None) -> tuple[int, str]:
    """Run a second household gateway whose page cannot come up; wait for `warning` and for usage records."""
    log = tmp_path / "second.log"
    pythonpath = os.pathsep.join(str(p) for p in (path_first, REPO) if p is not None)
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.web.household", "--folder", str(tmp_path / "gw"),
                                 "--port", str(port)], cwd=REPO, env={**os.environ, "PYTHONPATH": pythonpath},
                                stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], scaled(60))
            assert ready and json.loads(proc.stdout.readline())["config"]
            wait_for(lambda: warning in log.read_text(), "the warning")

            def metered() -> bool:  # the second gateway's ledger grows: it meters without its page
                from tests.support.ledger_checks import borrowed

                with borrowed(tmp_path / "gw" / "state" / "ledger.db", read_only=True) as conn:
                    return bool(conn.execute("SELECT count(*) FROM records WHERE type='io.koto.usage.v1'")
                                .fetchone()[0])

            wait_for(metered, "usage records from the gateway without its page", timeout_s=60, every_s=1.0)
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(scaled(30))
    return code, log.read_text()
