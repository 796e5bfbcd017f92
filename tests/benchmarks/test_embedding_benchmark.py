"""benchmarks/embedding_server.py: the script runs end to end, and the page's table is its output."""

import json
import subprocess
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


def test_quick_run_writes_json_table_and_plot(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "embedding_server.py"), "--quick", "--port", "8741",
         "--out-dir", str(tmp_path), "--plot", str(tmp_path / "plot.png")],
        capture_output=True, text=True, timeout=400, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "embedding_server.json").read_text())
    assert {(r["mode"], r["concurrency"]) for r in result["server"]} == {
        (m, c) for m in ("batching off", "batching on") for c in (1, 8, 32, 64)}
    assert all(r["requests"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in result["server"])
    assert set(result["ceiling"]) == {"1", "8", "16", "32", "64"}
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "embedding_server.md").read_text() == load_benchmark_module().markdown_table(result)


def test_published_table_is_rendered_from_published_json():
    """The figures on the page are the ones the last full run wrote: nothing typed by hand."""
    result = json.loads((BENCH / "results" / "embedding_server.json").read_text())
    assert not result["quick"]
    assert (BENCH / "results" / "embedding_server.md").read_text() == load_benchmark_module().markdown_table(result)
    assert (REPO / "docs" / "backends" / "img" / "embedding_server.png").exists()
