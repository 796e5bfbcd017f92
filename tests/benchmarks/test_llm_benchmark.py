"""benchmarks/llm_server.py: runs end to end in quick mode; the page's table is its output."""

import json
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


def test_quick_run(run_quick, llm_server, tmp_path):
    """This guide's two contenders are the suite's LLM server; the peer is started as in a full run."""
    ours = ("one at a time", "continuous batching")
    result, table = run_quick(
        "llm_server.py",
        "--plot",
        str(tmp_path / "plot.png"),
        *(f"--url={mode}={llm_server.url}" for mode in ours),
    )
    assert {r["mode"] for r in result["summary"]} == CONTENDERS
    for run in result["runs"]:
        assert run["errors"] == 0 and run["output_tokens_per_s"] > 0
        assert run["ttft_p50"] <= run["latency_p50"]
    assert result["bare_prefill_ms"] > 0
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert table == markdown_table(result)


def test_published_table_is_rendered_from_published_json():
    result = json.loads((BENCH / "results" / "llm_server.json").read_text())
    assert not result["quick"] and result["repeats"] >= 3 and result["requests_per_level"] >= 16
    assert {r["mode"] for r in result["summary"]} == CONTENDERS
    assert (BENCH / "results" / "llm_server.md").read_text() == markdown_table(result)
    assert (REPO / "docs" / "backends" / "img" / "llm_server.png").exists()
