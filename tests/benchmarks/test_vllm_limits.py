"""benchmarks/vllm_limits.py end to end in quick mode: its own vLLM start with a KV cache too small
for `--max-model-len` (the one extra vLLM start of the suite, failing within seconds of loading
the model), and a burst over `--max-num-seqs` on the suite's vLLM waiting in vLLM's queue. The
SIGTERM drain runs on the suite's vLLM last (tests/backends/test_vllm_operations.py)."""

from vllm_kit import MAX_NUM_SEQS


def test_quick_run(run_quick, vllm_chat):
    result, table = run_quick("vllm_limits.py", f"--url=vLLM={vllm_chat.url}")
    small = result["too_small"]
    assert small["exit_code"] != 0
    assert small["vllm_says"].startswith("To serve at least one request with the model's max seq")
    assert small["planner_tokens_that_fit"] < small["max_model_len"]
    assert small["planner_bytes_needed"] > small["kv_cache_bytes"]
    queue = result["queueing"]
    assert queue["max_num_seqs"] == MAX_NUM_SEQS and queue["requests"] == 2 * MAX_NUM_SEQS
    assert queue["queue_time_count"] == 2 * MAX_NUM_SEQS and queue["queue_time_mean_s"] > 0
    assert queue["ttft_slowest_s"] > 2 * queue["ttft_fastest_wave_s"]
    assert result["sigterm"] is None and "not run" in table
