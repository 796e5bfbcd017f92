"""benchmarks/request_log_cost.py runs end to end in quick mode, both arms pointed at the suite's
embedding server, and writes the JSON and table the data-flywheel page includes."""

ARMS = ("without the log", "with --log-db")


def test_quick_run(run_quick, embedding_server):
    result, table = run_quick(
        "request_log_cost.py", *(f"--url={arm}={embedding_server.url}" for arm in ARMS)
    )
    assert result["quick"] and set(result["summary"]) == set(ARMS)
    for arm in ARMS:
        (run,) = result["runs"][arm]
        assert run["errors"] == 0 and run["requests_per_s"] > 0
        assert f"| {arm} |" in table
    assert result["ratio"] > 0 and isinstance(result["met"], bool)
