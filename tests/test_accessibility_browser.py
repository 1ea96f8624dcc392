"""Accessibility of the admin app in Debian's Chromium, on the demo data: every page passes axe-core's
WCAG 2.1 A/AA and best-practice rules (labels, names, contrast, landmarks, headings), every control on
it is reached by the Tab key in order with a visible focus indicator and nothing traps the focus, and a
segment can be built and saved with the keyboard alone.

axe-core is a test-only npm package (tests/a11y, installed by scripts/test); Playwright adds it as an
init script, which the pages' CSP does not govern, so the pages run under their real CSP.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from admin_pages import PAGES, Watcher, demo_server, signed_in
from conftest import LiveServer

AXE = Path(__file__).parent / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]

# What the Tab key must reach: every rendered, enabled control (the content of a closed <details> is not).
FOCUSABLE = """() => Array.from(document.querySelectorAll(
    'a[href], button, input, select, textarea, summary, [tabindex]'))
  .filter(el => !el.disabled && el.type !== 'hidden' && el.tabIndex >= 0 && !el.closest('[inert]'))
  .filter(el => el.checkVisibility({contentVisibilityAuto: true, visibilityProperty: true}))"""


# The pages read through stores whose API tests run on both engines; one engine suffices here.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def live(make_server) -> LiveServer:
    return demo_server(make_server)


def with_axe(context: BrowserContext) -> BrowserContext:
    assert AXE.is_file(), f"{AXE} is missing: scripts/test installs it (npm ci --prefix tests/a11y)"
    context.add_init_script(path=str(AXE))
    return context


def axe_violations(page: Page) -> list[str]:
    """axe-core's violations on the page as it is now, one line per rule and element."""
    result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", AXE_TAGS)
    return [
        f"{v['id']} ({v['impact']}): {node['html'][:160]} — {node['failureSummary'][:240]}"
        for v in result["violations"]
        for node in v["nodes"]
    ]


def tab_walk(page: Page) -> tuple[list[str], list[str], list[str]]:
    """Press Tab from the top of the page until the focus comes round again.

    Returns the controls the key never reached, those reached without a visible focus indicator, and
    those reached out of document order (each as a short HTML excerpt)."""
    count = page.evaluate(
        f"""() => {{
          const els = ({FOCUSABLE})();
          els.forEach((el, i) => el.setAttribute('data-kb', String(i)));
          document.activeElement && document.activeElement.blur();
          return els.length;
        }}"""
    )
    reached: list[int] = []
    unseen_focus: list[str] = []
    # Date and time inputs take one Tab per field (day, month, year), so allow several per control.
    for _ in range(4 * count + 10):
        page.keyboard.press("Tab")
        state = page.evaluate(
            """() => {
              const el = document.activeElement;
              if (!el || el === document.body || !el.hasAttribute('data-kb')) return null;
              const cs = getComputedStyle(el);
              const outline = cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0;
              // A date or time input shows focus on the highlighted field inside it.
              const fields = ['date', 'time', 'datetime-local', 'month', 'week'].includes(el.type);
              return {index: Number(el.getAttribute('data-kb')), shown: outline || cs.boxShadow !== 'none' || fields,
                      html: el.outerHTML.slice(0, 120)};
            }"""
        )
        if state is None:
            if reached:
                break  # past the last control: the focus left the page, as it should
            continue
        if reached and state["index"] == reached[0]:
            break
        if reached and state["index"] == reached[-1]:
            continue  # the next field of the same date input
        reached.append(state["index"])
        if not state["shown"]:
            unseen_focus.append(state["html"])
    missing = page.evaluate(
        "seen => Array.from(document.querySelectorAll('[data-kb]'))"
        ".filter(el => !seen.includes(Number(el.getAttribute('data-kb')))).map(el => el.outerHTML.slice(0, 120))",
        reached,
    )
    out_of_order = [str(b) for a, b in itertools.pairwise(reached) if b < a]
    return missing, unseen_focus, out_of_order


def test_every_page_passes_axe_and_the_keyboard_reaches_every_control(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    context = with_axe(signed_in(browser, live, "admin"))
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    problems: dict[str, list[str]] = {}
    for spec in PAGES:
        page.goto(f"{live.base_url}/app/projects/{pid}/{spec.path_on(live)}")
        page.wait_for_selector(spec.ready, state="attached")
        watcher.settle(page)
        found = axe_violations(page)
        missing, unseen_focus, out_of_order = tab_walk(page)
        found += [f"not reached by Tab: {html}" for html in missing]
        found += [f"no visible focus: {html}" for html in unseen_focus]
        found += [f"Tab order goes back to element {i}" for i in out_of_order]
        if found:
            problems[spec.key] = found
    assert problems == {}, problems
    assert watcher.problems == []
    context.close()


def test_a_segment_is_built_and_saved_with_the_keyboard_alone(live: LiveServer, browser: Browser):
    pid = live.project.project.id
    context = signed_in(browser, live, "admin")
    watcher = Watcher()
    page = watcher.attach(context.new_page())
    page.goto(f"{live.base_url}/app/projects/{pid}/segments/new")
    page.wait_for_selector("#rule-builder .rb-rule")
    page.evaluate("document.activeElement && document.activeElement.blur()")

    def tab_to(selector: str) -> None:
        for _ in range(200):
            page.keyboard.press("Tab")
            if page.evaluate("s => document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    def choose(value: str) -> None:
        """Arrow keys on the focused select until it holds `value` (Home first: from the top)."""
        page.keyboard.press("Home")
        for _ in range(100):
            if page.evaluate("() => document.activeElement.value") == value:
                return
            page.keyboard.press("ArrowDown")
        raise AssertionError(f"no option {value!r}")

    tab_to("#segment-name")
    page.keyboard.type("Keyboard regulars")
    tab_to("#rule-builder select.rb-attribute")
    choose("Total sessions")
    tab_to("#rule-builder select.rb-operator")
    choose("gte")
    tab_to("#rule-builder [data-field=a]")
    page.keyboard.type("2")
    expect(page.locator("#segment-editor")).to_have_attribute("data-preview-state", "counted")
    tab_to("#save")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/app/projects/{pid}/segments/seg_*")
    segment_id = page.url.rsplit("/", 1)[1]
    with live.admin() as admin:
        saved = admin.get(f"/api/projects/{pid}/segments/{segment_id}").json()
    assert saved["name"] == "Keyboard regulars"
    assert saved["rules"] == {
        "match": "all",
        "rules": [{"attribute": "Total sessions", "operator": "gte", "value": 2}],
    }
    assert watcher.problems == []
    context.close()
