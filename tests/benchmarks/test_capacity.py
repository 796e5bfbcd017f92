"""benchmarks/capacity.py: a two-rate Poisson sweep of the suite's embedding server in quick mode,
the capacity the planner reads, and the plot the planning page shows."""

OURS = "this guide's embedding server"


def test_quick_run(run_quick, embedding_server, tmp_path):
    plot = tmp_path / "capacity.png"
    result, table = run_quick(
        "capacity.py", f"--url={OURS}={embedding_server.url}", f"--plot={plot}"
    )
    assert list(result["engines"]) == [OURS] and result["repeats"] == 1
    (sweep,) = result["engines"][OURS]["sweeps"]
    assert [row["rate"] for row in sweep] in ([50], [50, 100])  # a sweep stops at its first miss
    for row in sweep:
        assert (
            row["requests"] > 0 and row["latency_p50"] <= row["latency_p95"] <= row["latency_p99"]
        )
    within = [
        row["rate"]
        for row in sweep
        if not row["errors"] and row["latency_p95"] <= result["target_ms"]
    ]
    assert result["engines"][OURS]["capacity_rps"] == max(within, default=0)
    assert f"| {OURS} |" in table
    assert plot.read_bytes()[:4] == b"\x89PNG"
