"""Learn mode on the page, in a real browser: the installer records the kettle's boil while it runs, sees the trace
and the derived rule on a chart, and saves it into the kettle's own profile (used from the next start)."""

from __future__ import annotations

import json
import time
import tomllib
import urllib.request
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from metering.profile import load_profile
from tests.web.conftest import Household, click_and_wait, wait_for
from tests.web.household import PIN
from tests.web.test_pairing import log_in
from tests.web.test_status_page import CONTRAST, UNLABELLED


def at_rest_for(household: Household, appliance: str, *, seconds: float) -> None:
    """Wait until the appliance has drawn nothing for `seconds` (real time), from the page's JSON."""
    since: float | None = None

    def rested() -> bool:
        nonlocal since
        with urllib.request.urlopen(household.url + "/api/live", timeout=10) as r:
            power = json.load(r)["appliances"][appliance]["power_mw"]
        now = time.monotonic()
        since = (since or now) if power < 5000 else None
        return since is not None and now - since >= seconds

    wait_for(rested, f"{appliance} at rest", timeout_s=30, every_s=0.1)


@pytest.mark.slow  # a boil of the kettle, and the rest before and after it
def test_a_function_is_recorded_shown_with_its_rule_and_saved_to_the_profile(
        browser: Any, household: Household) -> None:
    log_in(browser, household, PIN)
    browser.get(household.url + "/learn")
    assert browser.execute_script(UNLABELLED) == []
    Select(browser.find_element(By.ID, "learn-appliance")).select_by_value("kettle")
    browser.find_element(By.ID, "learn-function").send_keys("boil")
    at_rest_for(household, "kettle", seconds=2.2)  # as a person would: start with the kettle off (its clock: 66 s)
    click_and_wait(browser, By.XPATH, "//button[text()='Start recording']")
    assert "Recording boil on kettle" in browser.find_element(By.CSS_SELECTOR, "[data-live=learn]").text
    # the kettle boils every 200 s of its clock (about 7 s here); the recording ends by itself at rest
    heading = wait_for(lambda: browser.find_elements(By.ID, "h-learned"), "the learned rule", timeout_s=60,
                       every_s=0.5)
    assert heading[0].text == "Learned: boil on kettle"
    summary = browser.find_element(By.CSS_SELECTOR, "ul.learned").text
    assert "boil: relearned" in summary and "rule: starts at" in summary and "replayed: the rule finds" in summary
    chart = browser.find_element(By.CSS_SELECTOR, "#h-learned ~ svg.chart, section svg.chart")
    assert chart.get_attribute("role") == "img" and chart.find_elements(By.TAG_NAME, "polyline")
    checked, bad = browser.execute_script(CONTRAST)
    assert checked > 5 and bad == []

    before = household.config.read_bytes()
    click_and_wait(browser, By.XPATH, "//button[text()=\"Save boil into kettle's profile\"]")
    flash = browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert "Saved 'boil' into kettle's profile" in flash and "from its next start" in flash
    state = household.config.parent / "state"  # the service writes there, never the installer's koto.toml
    override = tomllib.loads((state / "household.toml").read_text())["override"]["kettle"]
    assert override["profile"] == "profiles/kettle.toml"
    profile = load_profile(state / override["profile"])  # the kettle's own profile, used from its next start
    assert profile.name == "kettle-kettle" and "boil" in profile.function_names()
    assert household.config.read_bytes() == before
