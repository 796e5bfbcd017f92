"""benchmarks/decode_step.py in quick mode: the bare model's decode step at batch 1 and 8."""


def test_quick_run(run_quick):
    result, table = run_quick("decode_step.py")
    assert [row["batch"] for row in result["rows"]] == [1, 8] and result["steps"] == 8
    for row in result["rows"]:
        assert row["step_ms"] > 0
        assert abs(row["tokens_per_s"] - row["batch"] * 1000 / row["step_ms"]) < 1
    assert "| 8 |" in table
