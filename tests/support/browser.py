"""Debian's chromium driven by Playwright, for the tests that look at a page as a person does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
#: no network of its own: no updates, sync or QUIC probes beside the page's requests
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: skip a test module when the package is missing (scripts/setup.sh test installs it)
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is missing "
                                    "(scripts/setup.sh test installs it)")


@contextmanager
def chromium_page(profile: Path, width: int = 1400, height: int = 1000, timeout_ms: int = 30_000) -> Iterator[Any]:
    """A new page in a fresh headless chromium with its profile in ``profile``; closed afterwards."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()
