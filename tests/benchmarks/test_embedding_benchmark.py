"""benchmarks/embedding_server.py: the script runs end to end (quick mode), and the page's table
is rendered from the published JSON of the last full run, nothing typed by hand."""

import json
import sys

from helpers import REPO

BENCH = REPO / "benchmarks"


def load_benchmark_module():
    sys.path.insert(0, str(BENCH))
    try:
        import embedding_server
    finally:
        sys.path.remove(str(BENCH))
    return embedding_server


def test_quick_run_writes_json_table_and_plot(run_quick, embedding_server, tmp_path):
    """Both contenders are the suite's embedding server: the run checks this script, not batching."""
    result, table = run_quick(
        "embedding_server.py",
        "--plot",
        str(tmp_path / "plot.png"),
        *(f"--url={mode}={embedding_server.url}" for mode in ("batching off", "batching on")),
    )
    assert {(r["mode"], r["load"]) for r in result["server"]} == {
        (m, load) for m in ("batching off", "batching on") for load in ("closed", "open")
    }
    assert all(
        r["requests_per_s"] > 0 and r["latency_p50"] <= r["latency_p95"] <= r["latency_p99"]
        for r in result["server"]
    )
    assert set(result["ceiling"]) == {"arrival order", "length-sorted"}
    assert set(result["ceiling"]["arrival order"]) == {"16", "32", "64"}
    assert result["health_under_big_bodies"]["probes"] > 10
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert table == load_benchmark_module().markdown_table(result)


def test_published_table_is_rendered_from_published_json():
    """The figures on the page are the ones the last full run wrote: three repeats, every level."""
    result = json.loads((BENCH / "results" / "embedding_server.json").read_text())
    assert not result["quick"] and result["repeats"] >= 3
    assert {r["level"] for r in result["server"] if r["load"] == "closed"} == {1, 8, 32, 64}
    assert (
        BENCH / "results" / "embedding_server.md"
    ).read_text() == load_benchmark_module().markdown_table(result)
    assert (REPO / "docs" / "backends" / "img" / "embedding_server.png").exists()
