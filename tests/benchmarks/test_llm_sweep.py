"""benchmarks/llm_sweep.py: guidellm's sweep runs end to end in quick mode against the suite's LLM
server, and every request keeps the length `ignore_eos` forces."""

OURS = "this guide's LLM server"
STRATEGIES = {"synchronous", "throughput", "constant"}


def test_quick_run(run_quick, llm_server):
    result, table = run_quick("llm_sweep.py", f"--url={OURS}={llm_server.url}")
    assert result["guidellm"] == "0.8.1" and result["quick"]
    (name,) = result["contenders"]
    entry = result["contenders"][name]
    assert name == OURS
    assert {row["strategy"].split("@")[0] for row in entry["strategies"]} == STRATEGIES
    for row in entry["strategies"]:
        assert row["errored"] == 0 and row["wrong_length"] == 0, row
        assert row["output_tokens_per_s"] > 0
        assert (
            row["time_to_first_token_ms_p50"]
            <= row["time_to_first_token_ms_p95"]
            <= row["time_to_first_token_ms_p99"]
        )
    assert entry["goodput"] >= 0
    assert f"| {OURS} |" in table and "guidellm 0.8.1 sweep" in table
