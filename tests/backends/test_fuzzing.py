"""Schemathesis, the field's OpenAPI fuzzer, against each server's own schema: every route, with
bodies built to the schema (so most reach the model) and bodies built to break it.

Pass: no 5xx (the only 5xx a server may answer are 503s for not ready, queue full and shutting
down, none of which a fuzzing run should meet), no answer slower than 30 s, and /health ready
afterwards. The seed is random; a failure prints it (`Seed: N`) so the case can be replayed with
`st run ... --seed N`. `make bench` runs the same tests longer (FUZZ_EXAMPLES=200 per operation,
and every phase in both modes against the LLM server too).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import requests
from helpers import serve

ST = Path(sys.executable).with_name("st")  # schemathesis's command, from this environment
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))  # per operation; 0: each test's default


# CPython 3.11's AST construction can raise this spurious error when threads parse at once
# (python/cpython issue 106905); hypothesis parses source (to describe a strategy) in
# schemathesis's worker threads, and once in a while a case generator dies of it. That is the
# fuzzer failing, not the server: a run with no failure and one of these errors is repeated once.
# Reading source in those threads can also fail in `linecache` with a KeyError whose key is the
# source's lines.
FUZZER_THREAD_BUGS = (
    "SystemError: AST constructor recursion depth mismatch",
    "KeyError: ('from __future__ import annotations",
)


def schemathesis_run(command: list[str], report_dir: Path) -> tuple:
    """One schemathesis run writing its JSON report into `report_dir`; the process and report."""
    report_dir.mkdir()
    command = [*command, f"--report-dir={report_dir}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    [report_file] = report_dir.glob("*.json")
    return run, json.loads(report_file.read_text())


def fuzz(url: str, report_dir: Path, max_examples: int, *options: str, workers: int = 4) -> dict:
    """Run schemathesis against the server's schema (`options` added, such as the phases) in
    `workers` threads; return its JSON report, failing on any 5xx."""
    command = [
        str(ST),
        "run",
        url + "/openapi.json",
        "--checks=not_a_server_error",
        "--max-response-time=30",
        "--request-timeout=60",
        f"--max-examples={EXAMPLES or max_examples}",
        f"--workers={workers}",
        "--report=json",
        *options,
    ]
    run, report = schemathesis_run(command, report_dir)
    fuzzer_bug = any(bug in run.stdout for bug in FUZZER_THREAD_BUGS)
    if run.returncode != 0 and report["failures"] == [] and fuzzer_bug:
        run, report = schemathesis_run(command, report_dir.with_name(report_dir.name + "-again"))
    assert run.returncode == 0 and report["failures"] == [], run.stdout[-6000:]
    assert requests.get(url + "/health", timeout=10).json()["status"] == "ready"
    return report


def every_operation_tested(report: dict) -> bool:
    """Whether schemathesis sent requests to every operation in the schema. (How many requests
    varies from run to run, since hypothesis stops early once a small schema runs out of new
    cases: 279 to 338 against the intent router.)"""
    operations = report["operations"]
    return operations["tested"] == operations["total"] and operations["errored"] == 0


def accepted(report: dict, operation: str) -> int:
    """How many generated requests the server accepted (2xx) for one operation."""
    return sum(phase["accepted"] for phase in report["valid_rates"][operation].values())


def test_fuzz_the_embedding_server(embedding_server, tmp_path):
    report = fuzz(embedding_server.url, tmp_path / "report", max_examples=60)
    assert every_operation_tested(report)
    for operation in ("POST /v1/embeddings", "POST /v2/models/{name}/infer"):
        assert accepted(report, operation) >= 5, operation  # fuzzing reached the model
    assert report["warnings"]["validation_mismatch"] in ([], ["POST /v2/models/{name}/infer"])
    print("embedding server:", report["test_cases"]["generated"], "cases")


def test_fuzz_the_llm_server(smollm2_dir, tmp_path):
    """Two runs. Schemathesis's boundary values, negative: about 600 bodies each built to break
    the schema at one place, none of which may reach the model, sent from one thread (they are
    quick, and building them in four threads met the CPython bug above in most runs). Then its
    random bodies of both kinds, which do (at least 5 accepted per model route). Its valid boundary values are about 300
    more requests that each run the model, a minute here: `make bench`'s long run sends them too.
    A small context window caps every answer (prompt + output <= 64 tokens), and the request log
    is on, so every answer is logged too."""
    args = ["--model", str(smollm2_dir), "--max-context", "64", "--log-db", str(tmp_path / "l.db")]
    boundaries = "all" if EXAMPLES else "negative"
    with serve("backends/llm_server.py", *args) as srv:
        boundary_run = ("--phases=coverage", f"--mode={boundaries}")
        broken = fuzz(srv.url, tmp_path / "coverage", 10, *boundary_run, workers=1)
        drawn = fuzz(srv.url, tmp_path / "fuzzing", 40, "--phases=examples,fuzzing")
    assert broken["test_cases"]["generated"] >= 500
    for operation in ("POST /v1/chat/completions", "POST /v1/completions", "POST /generate"):
        assert accepted(drawn, operation) >= 5, operation
    cases = broken["test_cases"]["generated"] + drawn["test_cases"]["generated"]
    print("LLM server:", cases, "cases")


def test_fuzz_the_intent_router(embedding_server, minilm_heads_registry, tmp_path):
    args = ["--registry", str(minilm_heads_registry), "--stable", "v1"]
    args += ["--embedding-url", embedding_server.url, "--log-db", str(tmp_path / "router.db")]
    with serve("data_flywheel/intent_router.py", *args) as router:
        report = fuzz(router.url, tmp_path / "report", max_examples=60)
    assert every_operation_tested(report)
    assert accepted(report, "POST /v1/classify") >= 5
    print("intent router:", report["test_cases"]["generated"], "cases")
