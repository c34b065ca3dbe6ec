"""The installer's side of the page in a real browser: the PIN guards every change, and "add an appliance" finds
a meter on a serial line, reads it live, adds it to the running gateway (config appended, comments kept, only that
source started) and undoes it in one click."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.web.conftest import Household, click_and_wait, wait_for
from tests.web.household import PIN


def log_in(browser: Any, household: Household, pin: str) -> None:
    browser.get(household.url + "/login")
    browser.find_element(By.ID, "pin").send_keys(pin)
    click_and_wait(browser, By.CSS_SELECTOR, "form[action='/login'] button")


def test_a_wrong_pin_is_refused_and_the_right_one_allows_changes(browser: Any, household: Household) -> None:
    browser.delete_all_cookies()
    browser.get(household.url + "/pair")
    assert browser.current_url.endswith("/login")  # no PIN, no pairing page
    log_in(browser, household, "0000")
    assert "That PIN is not right." in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    browser.get(household.url + "/pair")
    assert browser.current_url.endswith("/login")  # still refused
    log_in(browser, household, PIN)
    browser.get(household.url + "/pair")
    assert browser.current_url.endswith("/pair")
    assert browser.find_element(By.ID, "h-find").text == "1. Find the meter"
    cookie = browser.get_cookie("koto_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_a_post_without_the_forms_token_is_refused(browser: Any, household: Household) -> None:
    log_in(browser, household, PIN)
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/pairing', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                           body: 'on=1&csrf=guessed'}).then(r => done(r.status));""")
    assert status == 403


def test_pairing_adds_a_found_meter_that_then_shows_readings_and_undo_removes_it(
        browser: Any, household: Household) -> None:
    original = household.config.read_text()
    hh = household.config.parent / "state" / "household.toml"  # where pairing writes: the state folder
    hh_before = hh.read_text() if hh.exists() else ""
    log_in(browser, household, PIN)
    browser.get(household.url + "/pair")
    ports = browser.find_element(By.ID, "ports")
    ports.clear()
    ports.send_keys(household.spare_port)
    addresses = browser.find_element(By.ID, "addresses")
    addresses.clear()
    addresses.send_keys("1-2")
    click_and_wait(browser, By.CSS_SELECTOR, "form[action='/pair/search'] button")
    # progress while it searches (the page refreshes itself), then the meter found at address 2
    choice = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "label[for='meter-0']"), "the search result",
                      timeout_s=40, every_s=0.5)
    assert "Eastron SDM120" in choice[0].text and "address 2" in choice[0].text
    browser.find_element(By.ID, "name").send_keys("dryer")
    Select(browser.find_element(By.ID, "profile")).select_by_value("tumble_dryer")
    click_and_wait(browser, By.CSS_SELECTOR, "form[action='/pair/read'] button")
    shown = browser.find_elements(By.CSS_SELECTOR, ".confirm [role=status]")
    assert shown, browser.find_element(By.TAG_NAME, "main").text  # else: what the page said instead
    confirm = shown[0].text
    assert "Eastron SDM120 at address 2 reads" in confirm and " W now" in confirm
    click_and_wait(browser, By.XPATH, "//button[text()='Save dryer and start metering']")

    assert "dryer was added and is being metered now" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert household.config.read_text() == original  # the installer's file is never written
    added = hh.read_text()
    assert added.startswith(hh_before) and "# Added on the status page on" in added
    assert '[appliance.sources.dryer-meter]\ndriver = "modbus"' in added and f'port = "{household.spare_port}"' in added

    def dryer_power() -> str:
        browser.get(household.url)
        el = browser.find_elements(By.CSS_SELECTOR, '[data-live="power"][data-appliance="dryer"]')
        return el[0].text if el and el[0].text not in ("0.0 W", "0 W") else ""

    assert wait_for(dryer_power, "readings from the added dryer").endswith(" W")  # metered by the running gateway
    assert browser.find_elements(By.ID, "app-washer")  # the others run on

    click_and_wait(browser, By.XPATH, "//button[text()='Undo: remove dryer']")
    assert "dryer was removed again" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert not browser.find_elements(By.ID, "app-dryer")
    assert hh.read_text() == hh_before and household.config.read_text() == original  # exactly what was added is gone
    assert browser.find_elements(By.ID, "app-washer")


def test_pairing_mode_shows_on_the_status_page_until_it_is_turned_off(browser: Any, household: Household) -> None:
    log_in(browser, household, PIN)
    browser.get(household.url + "/pair")
    click_and_wait(browser, By.XPATH, "//button[text()='Turn pairing mode on (10 minutes)']")
    browser.get(household.url)
    card = browser.find_element(By.CSS_SELECTOR, "section.pairing")
    assert "Pairing is on" in card.text and card.find_element(By.LINK_TEXT, "Add an appliance")
    browser.get(household.url + "/pair")
    click_and_wait(browser, By.XPATH, "//button[text()='Turn pairing mode off']")
    browser.get(household.url)
    assert not browser.find_elements(By.CSS_SELECTOR, "section.pairing")
