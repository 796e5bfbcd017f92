"""Helpers shared by the tests: run or import a snippet, start a server snippet on loopback."""

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
SNIPPETS = REPO / "snippets"
MODELS = REPO / "models"  # git-ignored cache of converted checkpoints


def run_snippet(relpath: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    """Run snippets/<relpath> as a reader would (`python file.py ...`); return its stdout."""
    proc = subprocess.run(
        [sys.executable, str(SNIPPETS / relpath), *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{relpath} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def load_snippet(relpath: str):
    """Import snippets/<relpath> as a module, to test its functions directly. Its folder goes on
    sys.path, as when a reader runs it: the servers import server_kit and request_log beside them."""
    path = SNIPPETS / relpath
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    name = "snippet_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(relpath: str, *args: str, ready_path: str = "/health", startup_timeout: float = 120):
    """Start a server snippet on a free loopback port in its own process group; yield its handle."""
    port = free_port()
    command = [sys.executable, str(SNIPPETS / relpath), "--host", "127.0.0.1", "--port", str(port)]
    with serve_command(
        [*command, *args], port, ready_path=ready_path, startup_timeout=startup_timeout
    ) as handle:
        yield handle


@contextlib.contextmanager
def serve_command(
    command: list[str],
    port: int,
    env: dict | None = None,
    ready_path: str = "/health",
    startup_timeout: float = 120,
):
    """Run any server command that listens on 127.0.0.1:`port` in its own process group; yield a
    handle once `ready_path` answers 200. The whole group is killed on exit, so no server (nor a
    worker process it started) outlives its test."""
    stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 -- open for the server's life; closed below
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=stderr,
        stderr=stderr,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    name = Path(command[1]).name if len(command) > 1 else command[0]
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                stderr.seek(0)
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}:\n{stderr.read()[-3000:]}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + ready_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {startup_timeout} s")
            time.sleep(0.2)
        yield ServerHandle(url, proc, stderr)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        stderr.close()


@contextlib.contextmanager
def serve_app(app, startup_timeout: float = 120):
    """Run an ASGI app in this process (uvicorn in a thread) on a free loopback port; yield its URL.

    For tests that reach inside a running server (to break its engine, say) while talking to it
    over real HTTP. Readiness is the lifespan's start-up, not the model: poll /health yourself.
    """
    import threading

    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def wait_until(condition, timeout: float = 60, interval: float = 0.05) -> bool:
    """Poll `condition()` until it is true or the timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return result


class ServerHandle:
    """A running server: its base URL and its process (for signals and exit codes)."""

    def __init__(self, url: str, proc: subprocess.Popen, stderr):
        self.url = url
        self.proc = proc
        self._stderr = stderr

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()
