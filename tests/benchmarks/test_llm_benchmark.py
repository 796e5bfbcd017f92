"""benchmarks/llm_server.py: runs end to end in quick mode; the page's table is its output."""

import json
import subprocess
import sys

from helpers import REPO

BENCH = REPO / "benchmarks"
CONTENDERS = {
    "one at a time",
    "static batching",
    "continuous batching",
    "transformers serve",
    "transformers serve --continuous-batching",
}


def markdown_table(result: dict) -> str:
    sys.path.insert(0, str(BENCH))
    try:
        import llm_server
    finally:
        sys.path.remove(str(BENCH))
    return llm_server.markdown_table(result)


def test_quick_run(tmp_path, smollm2_dir):
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "llm_server.py"),
            "--quick",
            "--out-dir",
            str(tmp_path),
            "--plot",
            str(tmp_path / "plot.png"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "llm_server.json").read_text())
    assert {r["mode"] for r in result["summary"]} == CONTENDERS
    for run in result["runs"]:
        assert run["errors"] == 0 and run["output_tokens_per_s"] > 0
        assert run["ttft_p50"] <= run["latency_p50"]
    assert result["bare_prefill_ms"] > 0
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "llm_server.md").read_text() == markdown_table(result)


def test_published_table_is_rendered_from_published_json():
    result = json.loads((BENCH / "results" / "llm_server.json").read_text())
    assert not result["quick"] and result["repeats"] >= 3 and result["requests_per_level"] >= 16
    assert {r["mode"] for r in result["summary"]} == CONTENDERS
    assert (BENCH / "results" / "llm_server.md").read_text() == markdown_table(result)
    assert (REPO / "docs" / "backends" / "img" / "llm_server.png").exists()
