"""Run a benchmark in quick mode into a temporary folder (never into benchmarks/results), and check
the provenance every results file carries."""

import json
import re
import subprocess
import sys

import pytest
from helpers import REPO

BENCH = REPO / "benchmarks"


def check_provenance(result: dict, script: str) -> None:
    """The block benchmarks/provenance.py writes: the commit, the files measured (the script among
    them), the packages they import, and what changed while the run went on."""
    block = result["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", block["commit"]) and block["dirty"] in (True, False)
    assert f"benchmarks/{script}" in block["files"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in block["files"].values())
    assert block["packages"] and isinstance(block["changed_during_run"], list)


@pytest.fixture
def run_quick(tmp_path):
    """run(script, *options, name=...) -> (the JSON it wrote, its Markdown table)."""

    def run(script: str, *options: str, name: str | None = None) -> tuple[dict, str]:
        proc = subprocess.run(
            [sys.executable, str(BENCH / script), "--quick", "--out-dir", str(tmp_path), *options],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        name = name or script.removesuffix(".py")
        result = json.loads((tmp_path / f"{name}.json").read_text())
        check_provenance(result, script)
        return result, (tmp_path / f"{name}.md").read_text()

    return run
