"""Without Chromium the browser tests fail with the fix in the message; they never skip, so CI
cannot pass without having looked at the pages."""

import os
import subprocess
import sys

from helpers import REPO


def test_missing_chromium_fails_with_the_fix():
    one_test = "tests/browser/test_chat_html.py::test_a_down_server_is_named"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", one_test]
    proc = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "CHROMIUM": "/nonexistent/chromium"},
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "Chromium not found at /nonexistent/chromium" in proc.stdout
    assert "apt-get install chromium" in proc.stdout
    assert "skipped" not in proc.stdout
