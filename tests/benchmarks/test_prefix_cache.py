"""benchmarks/prefix_cache.py runs end to end in quick mode, both arms pointed at the suite's LLM
server, and writes the JSON and table the prefix-caching page includes."""

ARMS = ("on (8 prompts kept)", "off (--prefix-cache 0)")


def test_quick_run(run_quick, llm_server):
    result, table = run_quick("prefix_cache.py", *(f"--url={arm}={llm_server.url}" for arm in ARMS))
    assert result["quick"] and set(result["summary"]) == set(ARMS)
    assert result["system_prompt_tokens"] > 500  # long enough for its prefill to matter
    for arm in ARMS:
        (run,) = result["runs"][arm]
        assert run["errors"] == 0 and 0 < run["ttft_p50"] <= run["latency_p50"]
        assert f"| {arm} |" in table
    assert result["ratio"] > 0
