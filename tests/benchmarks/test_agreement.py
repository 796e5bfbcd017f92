"""benchmarks/agreement.py end to end on the suite's two float32 servers: the cross-engine rule
holds for both, on ten prompts, at least nine answers identical to transformers' for 16 tokens,
every departure a near-tie. The reference runs on one torch thread (two fight for the cores
with the idle servers' threads)."""


def test_quick_run(run_quick, llm_server, vllm_chat):
    urls = {"this guide's server": llm_server.url, "vLLM": vllm_chat.url}
    result, table = run_quick(
        "agreement.py", "--threads=1", *(f"--url={name}={url}" for name, url in urls.items())
    )
    assert len(result["rows"]) == 10
    for engine, verdict in result["verdicts"].items():
        assert verdict["holds"], (engine, verdict, result["rows"])
    assert set(result["verdicts"]) == set(urls)
    assert table.startswith("| prompt | transformers (reference) | this guide's server | vLLM |")
