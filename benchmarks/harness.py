"""What every benchmark here does the same way: start a server in its own process group on a free
loopback port, wait until it is ready, drive it with the load generator (its own process), stop
it, and summarise repeated runs as medians with their spread.
"""

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
LOADGEN = REPO / "benchmarks" / "loadgen.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    import torch

    return {
        "cpu_cores": len(os.sched_getaffinity(0)),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


class Server:
    """A server process started for a benchmark: ready when `ready_path` answers 200. `env`
    replaces this process's environment (vLLM needs its own)."""

    def __init__(
        self,
        command: list[str],
        port: int,
        ready_path: str = "/health",
        timeout: float = 300,
        env: dict | None = None,
    ):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**(env or os.environ), "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited with {self.proc.returncode}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + ready_path, timeout=1).status_code == 200:
                    self.startup_s = time.perf_counter() - started
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{command[:3]} not ready after {timeout} s")

    def peak_memory_mb(self) -> float:
        """Peak resident memory of the server and every process it started (VmHWM, summed): Ray
        and LitServe run their workers as child processes."""
        total = 0
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        return round(total / 1024, 1)

    def stop(self) -> None:
        """SIGTERM first (Ray and LitServe then stop their own workers), SIGKILL for what is left."""
        family = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Running:
    """A server already running at `url`, measured in place of one a benchmark would start: the
    test suite's quick checks point contenders at its session servers (`--url`). There is
    nothing to stop, and no start-up time or memory of its own to report (0)."""

    startup_s = 0.0

    def __init__(self, url: str):
        self.url = url

    def peak_memory_mb(self) -> float:
        return 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def contender(name: str, urls: dict, command: list[str], port: int, **options) -> Server | Running:
    """Contender `name`: the server already at `urls[name]` if the run was given one, else a
    Server started from `command` (its keyword options as Server's)."""
    return Running(urls[name]) if name in urls else Server(command, port, **options)


def add_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="CONTENDER=URL",
        help="with --quick: measure the server already at URL as CONTENDER instead of starting "
        "one (the test suite points contenders at its running servers); repeatable",
    )


def contender_urls(parser: argparse.ArgumentParser, args, contenders) -> dict[str, str]:
    """The --url options as {contender: url}; a parser error for an unknown contender, a missing
    '=', or --url without --quick (a full run always starts its contenders)."""
    urls = {}
    for option in args.url:
        name, equals, url = option.partition("=")
        if not equals or name not in contenders:
            parser.error(
                f"--url {option!r}: expected CONTENDER=URL, CONTENDER one of {list(contenders)}"
            )
        urls[name] = url
    if urls and not args.quick:
        parser.error("--url only with --quick: a full run starts every contender itself")
    return urls


def descendants(root: int) -> list[int]:
    """`root` and every process below it in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit():
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def load(
    url: str,
    path: str,
    workload: Path,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    max_requests: int = 1000,
    max_seconds: float = 15,
    warmup: int = 1,
    api_key: str | None = None,
) -> dict:
    """One level of load from the load generator, in its own process; its JSON summary."""
    command = [
        sys.executable,
        str(LOADGEN),
        "--url",
        url,
        "--path",
        path,
        "--workload",
        str(workload),
        "--max-requests",
        str(max_requests),
        "--max-seconds",
        str(max_seconds),
        "--warmup",
        str(warmup),
    ]
    command += ["--concurrency", str(concurrency)] if concurrency else ["--rate", str(rate)]
    if api_key:
        command += ["--api-key", api_key]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=max_seconds * 4 + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def median_of(runs: list[dict], keys: list[str]) -> dict:
    """Median of each figure over repeated runs, with its spread (min and max) beside it."""
    out = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        if values:
            out[key] = round(statistics.median(values), 2)
            out[f"{key}_min"], out[f"{key}_max"] = round(min(values), 2), round(max(values), 2)
    out["repeats"] = len(runs)
    return out


def spread(row: dict, key: str) -> str:
    """'412 (398-430)': the median and its range over the repeats."""
    if f"{key}_min" not in row or row["repeats"] < 2:
        return f"{row[key]:g}"
    return f"{row[key]:g} ({row[f'{key}_min']:g}-{row[f'{key}_max']:g})"
