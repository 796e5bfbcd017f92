"""What the browser tests share besides fixtures: a launcher for the apps and the screenshots.

Screenshots for the site are written only when asked (SCREENSHOTS=1), so a plain test run leaves
the working tree clean.
"""

import contextlib
import datetime
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import requests
from helpers import REPO, free_port

SCREENSHOTS = os.environ.get("SCREENSHOTS") == "1"
VIEWPORT = {"width": 1280, "height": 900}


@dataclass
class App:
    url: str
    startup_s: float  # from the command's start until its page answered 200


@contextlib.contextmanager
def launch(args: list[str], env: dict, url: str, ready_path: str = "/", timeout: float = 90):
    """Start an app (`streamlit run ...`, `python chat_gradio.py`) in its own process group and
    wait until `url + ready_path` answers 200; kill the whole group on exit."""
    with tempfile.TemporaryFile(mode="w+") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
            start_new_session=True,
            text=True,
        )
        try:
            wait_ready(proc, log, url + ready_path, started + timeout)
            yield App(url, time.perf_counter() - started)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def wait_ready(proc: subprocess.Popen, log, ready_url: str, deadline: float) -> None:
    """Poll `ready_url` until it answers 200; fail with the app's own output if it exits."""
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(ready_url, timeout=2).status_code == 200:
                return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{proc.args} not ready at {ready_url}")
        time.sleep(0.1)


def streamlit_app(script: str, env: dict):
    """`streamlit run snippets/<script>` on a free loopback port, as its page documents it."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "snippets" / script),
        "--server.headless=true",
        "--server.address=127.0.0.1",
        f"--server.port={port}",
        "--browser.gatherUsageStats=false",
    ]
    return launch(args, env, f"http://127.0.0.1:{port}", "/_stcore/health")


def screenshot(page, path: str, source: str, height: int | None = None) -> None:
    """When SCREENSHOTS=1, save the page to docs/<path> with the date and the test that took it
    stamped in its corner; otherwise do nothing. `height` makes the window taller first, for
    apps that scroll inside their own container (Streamlit)."""
    if not SCREENSHOTS:
        return
    if height:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        page.wait_for_timeout(1500)  # charts redraw at the new size
    stamp = f"{datetime.date.today()} · headless Chromium at {VIEWPORT['width']} px · {source}"
    page.evaluate(
        """stamp => {
        const note = document.createElement('div');
        note.textContent = stamp;
        note.style.cssText = 'position:fixed; right:6px; bottom:4px; z-index:99999; color:#555;' +
            'font:11px sans-serif; background:#fffc; padding:1px 4px; border-radius:3px';
        document.body.appendChild(note);
    }""",
        stamp,
    )
    target = REPO / "docs" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=target)


def watch_growth(locator, done, timeout: float = 90) -> list[int]:
    """The distinct text lengths `locator` shows until `done()` is true: several lengths mean the
    text arrived in pieces, not all at once."""
    lengths, deadline = [], time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "no complete answer in time"
        n = len(locator.inner_text()) if locator.count() else 0
        if n and (not lengths or n != lengths[-1]):
            lengths.append(n)
        time.sleep(0.02)
    return lengths


@contextlib.contextmanager
def new_ratings(log_db):
    """Yield a list that, after the block, holds the ratings the request log gained in it."""

    def rated() -> dict:
        with contextlib.closing(sqlite3.connect(log_db)) as db:
            return dict(db.execute("SELECT request_id, rating FROM feedback"))

    before, ratings = rated(), []
    yield ratings
    ratings += [rating for request_id, rating in rated().items() if request_id not in before]
