"""The suite's vLLM checked against the planner and in operation: the KV cache it reports equals
the planner's figure, every metric the alert rules read is in its scrape, and SIGTERM drains a
stream in flight. benchmarks/vllm_limits.py publishes the limits for the page; its quick-mode test
(tests/benchmarks/test_vllm_limits.py) runs the too-small start and the queueing burst."""

import json
import re

import pytest
import requests
import vllm_limits
from helpers import load_snippet

pytestmark = pytest.mark.slow
GIB = 2**30
BLOCK = 16  # vLLM allocates the KV cache in blocks of 16 tokens


def test_the_kv_cache_vllm_reports_equals_the_planners_within_one_block(vllm_chat, smollm2_dir):
    compute = load_snippet("planning/compute.py")
    said = re.search(r"CPU KV cache size: ([\d,]+) tokens", vllm_chat.log())
    assert said, vllm_chat.log()[-3000:]
    reported = int(said.group(1).replace(",", ""))
    config = json.loads((smollm2_dir / "config.json").read_text())
    planned = compute.kv_cache_tokens(config, 1 * GIB, "float32")  # VLLM_CPU_KVCACHE_SPACE=1
    assert abs(planned - reported) < BLOCK, (planned, reported)


def test_every_vllm_metric_the_alert_rules_and_queries_use_is_in_its_scrape(vllm_chat):
    """Names read from the rule and query files themselves; after one answered request, so the
    per-request histograms and counters have samples. A rename in a vLLM release fails here."""
    names = load_snippet("visualisation/vllm_metric_names.py")
    hi = [{"role": "user", "content": "Hi"}]
    body = {"model": "SmolLM2-135M-Instruct", "messages": hi, "max_tokens": 8}
    requests.post(f"{vllm_chat.url}/v1/chat/completions", json=body, timeout=60).raise_for_status()
    assert len(names.vllm_metric_names()) >= 6
    assert names.missing(vllm_chat.url) == set()


@pytest.mark.stops_vllm
def test_sigterm_mid_stream_lets_the_answer_finish(vllm_chat):
    """With `--shutdown-timeout` (the suite's 30 s) vLLM drains: the stream ends with all its
    tokens, then the server exits cleanly. Runs last: the shared vLLM is gone after it."""
    drained = vllm_limits.drain_on_sigterm(vllm_chat.url, vllm_chat.proc)
    assert drained["finish_reason"] == "length"
    assert drained["completion_tokens"] == drained["asked"]
    assert drained["exit_code"] == 0
