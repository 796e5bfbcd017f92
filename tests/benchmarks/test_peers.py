"""benchmarks/peers.py runs end to end in quick mode on this guide's two servers (the suite's
session servers, by --only and --url) and writes the JSON, table and plot the scaling-out page
shows; a contender it does not know is refused by name."""

import subprocess
import sys

from helpers import REPO

OURS = {"embedding": "this guide's embedding server", "llm": "this guide's LLM server"}


def test_quick_run(run_quick, embedding_server, llm_server, tmp_path):
    urls = {OURS["embedding"]: embedding_server.url, OURS["llm"]: llm_server.url}
    result, table = run_quick(
        "peers.py",
        "--plot",
        str(tmp_path / "peers.png"),
        *(f"--only={name}" for name in urls),
        *(f"--url={name}={url}" for name, url in urls.items()),
    )
    for kind, name in OURS.items():
        (row,) = result[kind]
        assert row["contender"] == name and row["clients"] == 8
        assert f"| {name} |" in table
    assert result["embedding"][0]["requests_per_s"] > 0
    assert result["llm"][0]["output_tokens_per_s"] > 0
    assert set(result["ceiling"]) == {"arrival order", "length-sorted"}
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unknown_contender_is_refused_by_name():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "peers.py"), "--only", "Triton"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--only ['Triton']: unknown" in proc.stderr
    assert "Traceback" not in proc.stderr
