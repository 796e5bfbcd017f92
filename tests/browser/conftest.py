"""Fixtures for the tests that look at things as a person does: headless Chromium (Debian's
`chromium` package, driven by Playwright) and the built site served on loopback. The LLM server
and the built site are the session's own (tests/conftest.py)."""

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from browser_kit import VIEWPORT, launch
from helpers import free_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one per test module. A missing browser fails the tests with the fix,
    never skips them. Not per session: Playwright's sync API keeps an event loop running in the
    main thread while it is open, and later tests that call asyncio.run() would fail."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install Debian's package "
            "(apt-get install chromium) or set CHROMIUM to its path.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page at 1280 px. Requests that would leave the machine are aborted and listed in
    `page.external_requests`, so a test can prove a page works offline."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.external_requests = []

    def local_only(route):
        if urlparse(route.request.url).hostname in (
            "127.0.0.1",
            "localhost",
        ) or not route.request.url.startswith("http"):
            return route.continue_()
        page.external_requests.append(route.request.url)
        return route.abort()

    context.route("**/*", local_only)
    yield page
    context.close()


@pytest.fixture(scope="session")
def site(built_site):
    """The session's built site, served on loopback; yields its URL."""
    port = free_port()
    with launch(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(built_site),
        ],
        {},
        f"http://127.0.0.1:{port}",
    ) as server:
        server.root = built_site
        yield server
