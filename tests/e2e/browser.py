"""Shared parts of the status page's browser tests: Debian's Chromium under playwright, the
artifacts directory for screenshots, and checks made on a live page.

Screenshots go to ``$ERPWATCH_TEST_ARTIFACTS`` when set (as pytest starts), else to
``test-artifacts/`` at the top of the repository (ignored by git); each test prints the
paths it wrote (``pytest -s`` or ``-rP`` shows them).
"""

from __future__ import annotations

import base64
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEFAULT_ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Read at import: the suite's autouse fixture hides every ERPWATCH_* variable from the tests.
ARTIFACTS_ENV = os.environ.get("ERPWATCH_TEST_ARTIFACTS")
_SVG_NS = "{http://www.w3.org/2000/svg}"

# On CI (CI=true) a missing browser is a failure, never a silent skip.
_MISSING = "needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
if not CHROMIUM.exists() and os.environ.get("CI", "").lower() == "true":
    raise RuntimeError(f"CI=true but the status page's browser tests cannot run: {_MISSING}")

MARKS = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=_MISSING)]


def artifacts_dir() -> Path:
    directory = Path(ARTIFACTS_ENV or DEFAULT_ARTIFACTS)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def screenshot(page: Page, name: str) -> Path:
    path = artifacts_dir() / name
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def favicon_fill(href: str | None) -> str | None:
    """The disc colour of a ``data:image/svg+xml;base64,`` favicon."""
    assert href is not None and href.startswith("data:image/svg+xml;base64,"), href
    root = ET.fromstring(base64.b64decode(href.split(",", 1)[1]))
    circle = root.find(f"{_SVG_NS}circle")
    assert circle is not None
    return circle.get("fill")


class Requests:
    """Every URL the page asked for (documents, scripts, images, fetches, EventSource), and
    every script error and console error it reported."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"console: {message.text}") if message.type == "error" else None
            ),
        )

    def foreign(self, origin: str) -> list[str]:
        return [u for u in self.urls if not (u.startswith(origin) or u.startswith("data:"))]


async def assert_self_contained(page: Page, requests: Requests, origin: str) -> None:
    """Nothing was or would be loaded from elsewhere: no request left the server's origin
    and no element names another address to load (src/href, CSS url()); and the page's
    script reported no error."""
    assert requests.urls, "no request recorded"
    assert requests.errors == []
    assert requests.foreign(origin) == []
    refs: list[str] = await page.evaluate(
        """() => Array.from(document.querySelectorAll('[src],[href]'))
                 .map(e => e.getAttribute('src') || e.getAttribute('href'))"""
    )
    assert all(ref.startswith(("data:", "#")) for ref in refs), refs
    styles: str = await page.evaluate(
        "() => Array.from(document.querySelectorAll('style')).map(s => s.textContent).join('')"
    )
    assert "url(" not in styles and "@import" not in styles


async def assert_fits(page: Page) -> None:
    """No sideways scrolling: nothing is wider than the viewport."""
    width = await page.evaluate("window.innerWidth")
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    too_wide = await page.evaluate(
        """(w) => Array.from(document.querySelectorAll('body *'))
                 .filter(e => e.getClientRects().length
                              && e.getBoundingClientRect().right > w + 0.5)
                 .map(e => e.tagName + '.' + e.className)""",
        width,
    )
    assert too_wide == []


OVERLAPS_JS = """(selector) => {
  const out = [];
  for (const row of document.querySelectorAll(selector)) {
    if (!row.offsetParent) continue;  // not displayed
    const cells = Array.from(row.children).filter(c => c.getClientRects().length);
    const boxes = cells.map(c => [c.className || c.tagName, c.getBoundingClientRect()]);
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const [an, a] = boxes[i], [bn, b] = boxes[j];
        const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
        const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (w > 0.5 && h > 0.5) out.push(`${row.textContent.trim().slice(0, 60)}: ${an} / ${bn}`);
      }
    }
  }
  return out;
}"""


async def overlapping(page: Page, selector: str) -> list[str]:
    """Pairs of children of each ``selector`` element whose boxes intersect."""
    result: Any = await page.evaluate(OVERLAPS_JS, selector)
    return list(result)


async def boxes(page: Page, selector: str) -> list[dict[str, float]]:
    result: Any = await page.evaluate(
        """(s) => Array.from(document.querySelectorAll(s))
                 .filter(e => e.getClientRects().length)
                 .map(e => { const r = e.getBoundingClientRect();
                             return {left: r.left, right: r.right, top: r.top,
                                     bottom: r.bottom}; })""",
        selector,
    )
    return list(result)
