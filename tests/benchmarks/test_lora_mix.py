"""benchmarks/lora_mix.py in quick mode against the suite's vLLM (which serves the intent adapter):
both kinds of traffic are answered in full, at the forced length, and compared."""


def test_quick_run(run_quick, vllm_chat):
    result, table = run_quick("lora_mix.py", f"--url=vLLM={vllm_chat.url}")
    assert set(result["runs"]) == {"base only", "mixed"}
    for run in result["runs"].values():
        (level,) = run["repeats"]
        assert level["errors"] == 0 and level["requests"] == result["requests"]
        assert level["output_tokens"] == result["requests"] * result["tokens"]  # ignore_eos held
        assert run["output_tokens_per_s"] == level["output_tokens_per_s"] > 0
    ratio = (
        result["runs"]["mixed"]["output_tokens_per_s"]
        / result["runs"]["base only"]["output_tokens_per_s"]
    )
    assert result["mixed_over_base"] == round(ratio, 3)
    assert "| base only |" in table and "| mixed |" in table
