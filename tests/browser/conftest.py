"""Fixtures for the tests that look at things as a person does: headless Chromium (Debian's
`chromium` package, driven by Playwright), and one LLM server and one built site per session."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from browser_kit import VIEWPORT, launch
from helpers import REPO, free_port, serve

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
LLM_SERVER = "backends/llm_server.py"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium. A missing browser fails the tests with the fix, never skips them."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's package "
                    "(apt-get install chromium) or set CHROMIUM to its path.", pytrace=False)
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
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost") or \
                not route.request.url.startswith("http"):
            return route.continue_()
        page.external_requests.append(route.request.url)
        return route.abort()

    context.route("**/*", local_only)
    yield page
    context.close()


@pytest.fixture(scope="session")
def chat_page_origin() -> str:
    """The origin the plain HTML chat page is served from; the LLM server allows it by CORS."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory, chat_page_origin):
    """The real LLM server of the back-end section, with its request log (for feedback)."""
    log_db = tmp_path_factory.mktemp("llm") / "requests.db"
    with serve(LLM_SERVER, "--log-db", str(log_db), "--cors-origin", chat_page_origin) as server:
        server.log_db = log_db
        yield server


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The site built once with `mkdocs build --strict` and served on loopback; yields its URL."""
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)]
    build = subprocess.run(command,
                           cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr[-3000:]
    port = free_port()
    with launch([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", str(out)], {}, f"http://127.0.0.1:{port}") as server:
        server.root = out
        yield server
    shutil.rmtree(out, ignore_errors=True)
