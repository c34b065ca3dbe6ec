"""The household status page in a real browser (headless Chromium) against a running gateway with simulated
appliances: what a household sees, that it stays live, the chart, a locked appliance, and basic accessibility."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By

from tests.web.conftest import Household, wait_for


def power_of(browser: Any, appliance: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, f'[data-live="power"][data-appliance="{appliance}"]').text)


def test_the_page_shows_each_appliance_its_usage_the_unlocks_the_connection_and_health(
        browser: Any, household: Household) -> None:
    browser.get(household.url)
    assert browser.title == "Home appliances"
    for aid in ("washer", "kettle"):
        card = browser.find_element(By.ID, f"app-{aid}")
        assert card.find_element(By.TAG_NAME, "h2").text == aid
        assert card.find_element(By.CSS_SELECTOR, '[data-live="power"]').text.endswith(" W")
    washer = browser.find_element(By.ID, "app-washer")
    rows = {r.find_element(By.TAG_NAME, "th").text: r.text for r in washer.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert "heat" in rows and "kWh" in rows["heat"] and "EUR" in rows["heat"]  # energy and cost per function
    headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "section h2")]
    for section in ("Health", "Last 30 days", "Unlocks", "Connection", "Installer"):
        assert section in headings
    assert "counts usage locally only" in browser.find_element(By.CSS_SELECTOR, '[aria-labelledby="h-cloud"]').text
    assert browser.find_elements(By.CSS_SELECTOR, 'ul.health li')


def test_live_values_change_without_reloading_the_page(browser: Any, household: Household) -> None:
    browser.get(household.url)
    browser.execute_script("document.body.setAttribute('data-marker', 'same page')")
    first = power_of(browser, "washer")
    changed = wait_for(lambda: power_of(browser, "washer") != first and power_of(browser, "washer"),
                       "the washer's power to change on the page")
    assert changed.endswith(" W")
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-marker") == "same page"  # not reloaded


def test_the_chart_draws_bars_for_the_functions_that_have_usage(browser: Any, household: Household) -> None:
    browser.get(household.url)
    svg = browser.find_element(By.CSS_SELECTOR, "svg.chart")
    assert svg.get_attribute("role") == "img"
    bars = svg.find_elements(By.CSS_SELECTOR, "rect.bar")
    drawn = {b.get_attribute("data-function") for b in bars}
    assert {"washer/heat", "washer/wash", "washer/spin", "kettle/boil"} <= drawn  # the seeded 29 days
    assert all(float(b.get_attribute("height")) > 0 for b in bars)
    legend = {li.text for li in browser.find_elements(By.CSS_SELECTOR, "ul.legend li")}
    assert legend == {f.replace("/", ": ") for f in drawn}  # one legend entry per function drawn, no more
    assert "kWh in all" in svg.find_element(By.TAG_NAME, "desc").get_attribute("textContent")


def test_a_locked_appliance_says_why_and_how_to_unlock_it(browser: Any, household: Household) -> None:
    browser.get(household.url)
    lock = browser.find_element(By.CSS_SELECTOR, "#app-kettle .lock")
    assert "Locked: kettle cannot start" in lock.text
    assert "Why: it only starts when it is unlocked, and nothing is unlocked for it" in lock.text
    assert "How to unlock: unlock it with your provider" in lock.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#app-washer .lock")  # not gated: no lock shown
    assert "Locked now: kettle." in browser.find_element(By.CSS_SELECTOR, '[aria-labelledby="h-ent"]').text


# ------------------------------------------------------------------------------------------------ accessibility

UNLABELLED = """
const out = [];
for (const el of document.querySelectorAll('input, button, select, textarea, a')) {
  if (el.type === 'hidden') continue;
  let name = (el.getAttribute('aria-label') || '').trim();
  const by = el.getAttribute('aria-labelledby');
  if (!name && by) name = by.split(/\\s+/)
      .map(id => (document.getElementById(id) || {}).textContent || '').join(' ').trim();
  if (!name && el.labels && el.labels.length) name = Array.from(el.labels).map(l => l.textContent).join(' ').trim();
  if (!name && (el.tagName === 'BUTTON' || el.tagName === 'A')) name = el.textContent.trim();
  if (!name) out.push(el.outerHTML.slice(0, 120));
}
return out;
"""

# WCAG 2.x contrast of every piece of text against the background it is drawn on (the first opaque background
# of it or its ancestors), from the computed styles; large text (>= 24 px, or >= 18.66 px bold) needs 3:1, the rest
# 4.5:1. SVG text uses its fill.
CONTRAST = """
function rgb(s) { const m = s.match(/[\\d.]+/g) || [0, 0, 0, 0]; return m.map(Number).concat([1]).slice(0, 4); }
function lum(c) { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); }
function bg(el) { for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor); if (c[3] > 0.5) return c; } return [255, 255, 255, 1]; }
const bad = []; let checked = 0;
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
while (walker.nextNode()) {
  const t = walker.currentNode; if (!t.textContent.trim()) continue;
  const el = t.parentElement; const cs = getComputedStyle(el);
  if (cs.visibility === 'hidden' || cs.display === 'none') continue;
  if (el.closest('title, desc, script, style, noscript')) continue;
  const inSvg = el.closest('svg') !== null;
  const fg = rgb(inSvg ? (el.getAttribute('fill') || cs.fill) : cs.color);
  const b = bg(inSvg ? el.closest('svg').parentElement : el);
  const l1 = lum(fg), l2 = lum(b); const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
  const size = parseFloat(cs.fontSize), bold = parseInt(cs.fontWeight) >= 700;
  const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
  checked++;
  if (ratio < need) bad.push(t.textContent.trim().slice(0, 40) + ' ' + ratio.toFixed(2) + ' < ' + need);
}
return [checked, bad];
"""


def test_every_control_has_a_label_and_text_contrast_passes_wcag_aa(browser: Any, household: Household) -> None:
    for path in ("/", "/login"):
        browser.get(household.url + path)
        assert browser.execute_script(UNLABELLED) == [], path
        checked, bad = browser.execute_script(CONTRAST)
        assert checked > 5 and bad == [], path


def test_nothing_comes_from_the_internet_and_the_scripts_and_styles_stay_under_100_kb(
        browser: Any, household: Household) -> None:
    browser.get(household.url)
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(r => [r.name, r.encodedBodySize || r.transferSize]);")
    assert resources and all(name.startswith(household.url + "/") for name, _ in resources)
    import urllib.request

    total = 0
    for name in ("page.css", "page.js"):
        with urllib.request.urlopen(f"{household.url}/static/{name}", timeout=10) as r:
            total += len(r.read())
    assert 0 < total < 100_000
