"""Figures for the GUI comparison: lines of code of each chat app, and how long each takes from
its documented command to a chat box a person can type into (headless Chromium).

    python benchmarks/gui_apps.py            # writes results/gui_apps.json and results/gui_apps.md
    python benchmarks/gui_apps.py --quick    # one start of each app, for the test suite

No model server is needed: an app starts, and shows its chat box, before anyone asks a question.
"""

import argparse
import ast
import contextlib
import datetime
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests
from playwright.sync_api import sync_playwright
from provenance import provenance
from publish import publish

REPO = Path(__file__).resolve().parents[1]
GUI = REPO / "snippets" / "gui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def code_lines(path: Path) -> int:
    """Lines a reader must read to follow the code: not blank, not a comment, not a docstring
    (Python); not blank and not inside an HTML comment (HTML)."""
    text = path.read_text()
    if path.suffix == ".html":
        text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
        lines = [line.strip() for line in text.splitlines()]
        return sum(1 for line in lines if line and not line.startswith("//"))
    documentation = set()
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and ast.get_docstring(node) is not None
        ):
            first = node.body[0]
            documentation.update(range(first.lineno, first.end_lineno + 1))
    return sum(
        1
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#") and number not in documentation
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamlit_command(port: int) -> tuple[list[str], dict, str]:
    return (
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(GUI / "chat_streamlit.py"),
            "--server.headless=true",
            f"--server.port={port}",
            "--browser.gatherUsageStats=false",
        ],
        {},
        "/_stcore/health",
    )


def gradio_command(port: int) -> tuple[list[str], dict, str]:
    return (
        [sys.executable, str(GUI / "chat_gradio.py")],
        {"GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"},
        "/",
    )


FILES = {
    "Streamlit": "chat_streamlit.py",
    "Gradio": "chat_gradio.py",
    "HTML and JavaScript": "chat.html",
}
APPS = {  # name: (command, the chat box a person types into)
    "Streamlit": (streamlit_command, "[data-testid=stChatInputTextArea]"),
    "Gradio": (gradio_command, "textarea[placeholder='Type a message...']"),
}


def start_once(browser, command, chat_box: str) -> tuple[float, float]:
    """Seconds from the command's start until its HTTP server answers, and until the chat box is
    visible in a fresh browser page."""
    port = free_port()
    args, env, ready_path = command(port)
    url = f"http://127.0.0.1:{port}"
    # A model server that is not there: the apps must start without one.
    env = {**os.environ, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1", **env}
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + ready_path, timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.perf_counter() - started > 120:
                raise RuntimeError(f"{args} did not start")
            time.sleep(0.05)
        http_ready = time.perf_counter() - started
        page = browser.new_page()
        page.goto(url, wait_until="load")
        page.locator(chat_box).wait_for(timeout=60_000)
        usable = time.perf_counter() - started
        page.close()
        return http_ready, usable
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one start of each app, for tests")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    started = provenance([Path(__file__), *(GUI / file for file in FILES.values())])
    load_before = os.getloadavg()[0]
    timings = {name: [] for name in APPS}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        for _ in range(runs):  # alternate the apps, so a busy moment hits both
            for name, (command, chat_box) in APPS.items():
                timings[name].append(start_once(browser, command, chat_box))
        browser.close()
    result = {
        "provenance": started,
        "quick": args.quick,
        "date": str(datetime.date.today()),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_before": round(load_before, 2),
        "runs": runs,
        "apps": {
            name: {
                "file": f"snippets/gui/{file}",
                "lines_of_code": code_lines(GUI / file),
                "http_ready_s": [round(h, 2) for h, _ in timings.get(name, [])],
                "chat_usable_s": [round(u, 2) for _, u in timings.get(name, [])],
            }
            for name, file in FILES.items()
        },
    }
    publish("gui_apps", result, table(result), args.out_dir)


def table(result: dict) -> str:
    rows = [
        "| app | lines of code | server answers | chat box usable in Chromium |",
        "|---|---:|---:|---:|",
    ]
    for name, app in result["apps"].items():
        if app["http_ready_s"]:
            timing = (
                f"{statistics.median(app['http_ready_s']):.1f} s",
                f"{statistics.median(app['chat_usable_s']):.1f} s",
            )
        else:
            timing = ("no server", "as soon as the page loads")
        rows.append(
            f"| {name} (`{app['file']}`) | {app['lines_of_code']} | {timing[0]} | {timing[1]} |"
        )
    return "\n".join(rows) + (
        f"\n\nTimes are medians of {result['runs']} starts each, on {result['cpu_cores']} CPU "
        f"cores ({result['machine']}), {result['date']}; load average "
        f"{result['load_average_before']} before the runs. Lines of code leave out blank lines, "
        "comments and docstrings.\n"
    )


if __name__ == "__main__":
    main()
