"""benchmarks/rebuild_speed.py runs end to end in quick mode: the old servers are read from git
(here HEAD, into a temporary folder), and every contender is pointed at the suite's servers."""

import re


def test_quick_run(run_quick, llm_server, embedding_server):
    urls = {"LLM": llm_server.url, "embeddings": embedding_server.url}
    result, table = run_quick(
        "rebuild_speed.py",
        "--old",
        "HEAD",
        *(f"--url={side} {kind}={url}" for side in ("old", "new") for kind, url in urls.items()),
        name="rebuild_speed_quick",
    )
    assert result["new_commit"] == result["provenance"]["commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", result["old_commit"])
    assert set(result["old_files"]) >= {
        "snippets/backends/llm_server.py",
        "snippets/backends/embedding_server.py",
        "snippets/backends/server_kit.py",
    }
    for name, figure in result["figures"].items():
        assert len(figure["old"]) == len(figure["new"]) == 1 and figure["ratio"] > 0
        assert f"| {name} |" in table
