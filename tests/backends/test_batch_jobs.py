"""backends/batch_client.py and backends/batch_requests.jsonl: one OpenAI batch file, run offline by
vLLM's batch runner and sent to this guide's LLM server by the resumable client.

What the page claims: the client, killed midway (SIGKILL) and run again, ends with every
custom_id in the output exactly once, and the server's request log shows at most as many repeated
requests as the client's concurrency; a line cut short by the kill is dropped and its request
sent again; requests the server could not take stay unanswered for the next run; a bad batch
file is a one-line error. vLLM's runner answers the same file with output lines of the same shape
(tests/benchmarks/test_batch_jobs_benchmark.py, which runs it through the batch benchmark).
"""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
from helpers import SNIPPETS, free_port, load_snippet, wait_until

CLIENT = "backends/batch_client.py"
BATCH = SNIPPETS / "backends" / "batch_requests.jsonl"
CONCURRENCY = 4
OUTPUT_KEYS = {"id", "custom_id", "response", "error"}  # OpenAI's batch output line


def batch_requests() -> list[dict]:
    return [json.loads(line) for line in BATCH.read_text().splitlines()]


def answered(output) -> list[dict]:
    """The output's whole lines (a kill may leave the last one cut short)."""
    data = output.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def client(output, url: str) -> list[str]:
    return [sys.executable, str(SNIPPETS / CLIENT), str(BATCH), str(output), "--url", url]


def test_a_killed_run_resumes_and_answers_every_request_once(llm_server, tmp_path):
    output, since = tmp_path / "answers.jsonl", time.time()
    command = [*client(output, llm_server.url), "--concurrency", str(CONCURRENCY)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: output.exists() and len(answered(output)) >= 5, timeout=240)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = len(answered(output))
    assert before < len(batch_requests()), "the first run finished before the kill"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    left = len(batch_requests()) - before
    assert rerun.stdout.strip() == (
        f"{left} answered, {before} already in {output}, 0 left for a rerun"
    )
    lines = answered(output)
    assert sorted(line["custom_id"] for line in lines) == sorted(
        r["custom_id"] for r in batch_requests()
    )
    assert all(set(line) == OUTPUT_KEYS for line in lines)
    assert all(line["response"]["status_code"] == 200 for line in lines)

    prompts = {r["body"]["messages"][0]["content"] for r in batch_requests()}
    sent = Counter(
        prompt
        for prompt in logged_prompts(llm_server.log_db, since)
        if prompt in prompts  # the suite's other tests share the server
    )
    assert set(sent) == prompts
    assert sum(n - 1 for n in sent.values()) <= CONCURRENCY, sent


def logged_prompts(log_db, since: float) -> list[str]:
    """The first message of every chat request the server logged since `since`."""
    with sqlite3.connect(log_db) as db:
        rows = db.execute(
            "SELECT input FROM requests WHERE route = '/v1/chat/completions' AND created_at >= ?",
            (since,),
        ).fetchall()
    return [json.loads(messages)[0]["content"] for (messages,) in rows]


def test_a_line_cut_short_by_a_kill_is_dropped_and_sent_again(tmp_path):
    batch_client = load_snippet(CLIENT)
    output = tmp_path / "answers.jsonl"
    whole = json.dumps({"id": "1", "custom_id": "ticket-01", "response": None, "error": None})
    output.write_text(whole + '\n{"id": "2", "custom_id": "tick')
    assert batch_client.answered_ids(output) == {"ticket-01"}
    assert output.read_text() == whole + "\n"


def test_requests_the_server_cannot_take_are_left_for_a_rerun(tmp_path):
    output, nobody = tmp_path / "answers.jsonl", f"http://127.0.0.1:{free_port()}"
    run = subprocess.run(client(output, nobody), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stdout.strip() == (
        f"0 answered, 0 already in {output}, {len(batch_requests())} left for a rerun"
    )
    assert output.read_text() == ""


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}'] * 2,
         "2: custom_id 'a' appears twice"),
        (['{"custom_id": "a", "method": "GET", "url": "/v1/models", "body": {}}'],
         "1: method must be POST"),
        (["not json"], "1: not JSON"),
    ],
)  # fmt: skip
def test_a_bad_batch_file_is_a_one_line_error(tmp_path, lines, message):
    batch = tmp_path / "bad.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    command = [sys.executable, str(SNIPPETS / CLIENT), str(batch), str(tmp_path / "out.jsonl")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {batch}:{message}")
    assert len(run.stderr.strip().splitlines()) == 1
