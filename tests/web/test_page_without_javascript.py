"""With JavaScript off the page is still the whole read-only view: values, chart, locks; it reloads itself (a
<noscript> meta refresh) instead of polling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.web.conftest import Household, make_browser, wait_for


@pytest.fixture(scope="module")
def browser_nojs() -> Iterator[Any]:
    driver = make_browser(javascript=False)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_read_only_view_works_with_javascript_off(browser_nojs: Any, household: Household) -> None:
    b = browser_nojs
    b.get(household.url)
    assert b.find_element(By.CSS_SELECTOR, '[data-live="power"][data-appliance="washer"]').text.endswith(" W")
    assert b.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
    assert "Locked: kettle cannot start" in b.find_element(By.CSS_SELECTOR, "#app-kettle .lock").text
    refresh = b.find_element(By.CSS_SELECTOR, "noscript").get_attribute("innerHTML")
    assert 'http-equiv="refresh"' in refresh


@pytest.mark.slow  # the page reloads every 10 s
def test_without_javascript_the_page_reloads_itself_with_new_values(browser_nojs: Any, household: Household) -> None:
    b = browser_nojs
    b.get(household.url)
    b.find_element(By.TAG_NAME, "body")
    marker = b.find_element(By.TAG_NAME, "h1")  # an element of this load; a reload makes it stale
    from selenium.common.exceptions import StaleElementReferenceException

    def reloaded() -> bool:
        try:
            marker.text  # noqa: B018
        except StaleElementReferenceException:
            return True
        return False

    wait_for(reloaded, "the page to reload itself", timeout_s=25, every_s=0.5)
    # the bundled script never ran (it marks the page when it has polled): the reload is the <noscript> one
    assert b.execute_script("return document.documentElement.getAttribute('data-updated')") is None
