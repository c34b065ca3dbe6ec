"""The status page's browser tests: one household gateway (tests/web/household.py) for the session, as its own
process with the page on, and real headless Chromium (Debian's /usr/bin/chromium) driven by Selenium through
Debian's /usr/bin/chromedriver — the driver that matches the browser's version, nothing downloaded.

One browser per test module (module-scoped), one with JavaScript on, one with it off. Every test leaves a
screenshot in its own pytest output folder (tmp_path/page.png).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import free_port
from tests.support.paths import REPO, process_folder
from tests.support.slow import scaled

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Chromium leaves a folder with its singleton socket in $TMPDIR each time chromedriver ends it (46 in /tmp after a
# day of runs): each pytest process gives its browsers a TMPDIR of their own, removed when the process ends.
BROWSER_TMP = process_folder("koto-chromium-")


@dataclass
class Household:
    url: str
    spare_port: str
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="session")
def household(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Household]:
    folder = tmp_path_factory.mktemp("household")
    log = folder / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.web.household", "--folder", str(folder / "gw"),
                                 "--port", str(free_port()), "--history", "--speed", "30"],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=err)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], scaled(60))
        line = proc.stdout.readline() if ready else b""
        if not line:
            proc.kill()
            raise RuntimeError(f"the household gateway did not start: {log.read_text()[-3000:]}")
        info = json.loads(line)
        try:
            yield Household(info["url"], info["spare_port"], Path(info["config"]), proc, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(scaled(20))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_browser(*, javascript: bool = True, width: int = 412, height: int = 915) -> Any:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are needed: make system-deps installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions", "--lang=en"):
        opts.add_argument(arg)
    if not javascript:
        opts.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": BROWSER_TMP}))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = make_browser(javascript=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def _screenshot(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Each test's last view of the page, in its own output folder."""
    yield
    for name in ("browser", "browser_nojs"):
        if name in request.fixturenames:
            driver = request.getfixturevalue(name)
            full = driver.execute_script("return document.documentElement.scrollHeight") or 915
            driver.set_window_size(driver.get_window_size()["width"], min(int(full), 4000))
            driver.save_screenshot(str(tmp_path / "page.png"))


def wait_for(check: Any, what: str, timeout_s: float = 20.0, every_s: float = 0.2) -> Any:
    """Poll `check()` until it returns something true; fail naming `what` after `timeout_s` (scaled)."""
    end = time.monotonic() + scaled(timeout_s)
    last_error: Exception | None = None
    while time.monotonic() < end:
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # the page reloading under us (a stale element): try again
            last_error = e
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


def click_and_wait(browser: Any, by: str, what: str, timeout_s: float = 30.0) -> None:
    """Click a control that loads a new page, and wait until the new page has replaced the old one."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element("tag name", "html")
    browser.find_element(by, what).click()

    def replaced(_: Any) -> bool:
        # ec.staleness_of, except that chromedriver sometimes reports the old page's node as "unknown error: ...
        # Node with given id does not belong to the document" instead of a stale reference: the same fact
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
        return False

    WebDriverWait(browser, scaled(timeout_s)).until(replaced)
