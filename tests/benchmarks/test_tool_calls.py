"""benchmarks/tool_calls.py in quick mode against the suite's LLM server, the forced modes only
(the free ones write to max_tokens): every forced call (named and "required") comes back as a
call with schema-valid arguments, and a tool with an invalid parameter schema gets a 400 naming
the field."""

OURS = "this guide's server"


def test_quick_run(run_quick, llm_server):
    result, table = run_quick(
        "tool_calls.py",
        f"--url={llm_server.url}",
        f"--engine={OURS}",
        "--modes",
        "named",
        "required",
    )
    entry = result["engines"][OURS]
    assert set(entry["modes"]) == {"named", "required"}
    for mode in ("named", "required"):
        row = entry["modes"][mode]
        assert row["all_three"] == row["requests"] == 5 and row["refused"] == 0, (mode, row)
        assert row["finish_reasons"] == {"tool_calls": 5}
    assert entry["invalid_schema"]["status"] == 400
    assert "tools[0].function.parameters" in entry["invalid_schema"]["body"]
    assert f"| {OURS} | named | 5 | 5 | 5 | 5 | 5 | 0 |" in table
