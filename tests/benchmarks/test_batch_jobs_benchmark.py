"""benchmarks/batch_jobs.py in quick mode: vLLM's batch runner answers the page's own batch file
(the page's command, eager), every custom_id once in output lines of OpenAI's shape, and the same
requests go to the suite's vLLM online; the cost of each comes from a named host's price."""

import json
import re

from helpers import REPO, SNIPPETS

BATCH = SNIPPETS / "backends" / "batch_requests.jsonl"
OUTPUT_KEYS = {"id", "custom_id", "response", "error"}  # OpenAI's batch output line


def test_quick_run(run_quick, vllm_chat, tmp_path):
    from batch_jobs import OFFLINE_COMMAND

    page = (REPO / "docs" / "backends" / "features.md").read_text()
    assert OFFLINE_COMMAND in re.sub(r"\s*\\\n\s*", " ", page)  # continuation lines joined
    answers = tmp_path / "answers.jsonl"
    result, table = run_quick(
        "batch_jobs.py", f"--answers={answers}", f"--url=vLLM online={vllm_chat.url}"
    )
    requests = [json.loads(line) for line in BATCH.read_text().splitlines()]
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(r["custom_id"] for r in requests)
    assert all(set(line) == OUTPUT_KEYS and line["error"] is None for line in lines)
    assert all(line["response"]["status_code"] == 200 for line in lines)
    limit = {r["custom_id"]: r["body"]["max_tokens"] for r in requests}
    for line in lines:
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"]
        assert 0 < body["usage"]["completion_tokens"] <= limit[line["custom_id"]]
    offline = result["offline"]
    assert offline["output_tokens"] == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in lines
    )
    assert offline["output_tokens_per_s"] > 0 and offline["cost_per_million"] > 0
    (online,) = result["online"]
    assert online["concurrency"] == 4 and online["errors"] == 0
    assert result["price"]["per_hour"] > 0 and result["price"]["source"].startswith("http")
    assert "| offline batch runner |" in table
