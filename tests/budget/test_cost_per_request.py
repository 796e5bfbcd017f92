"""budget/cost_per_request.py: hand-checked arithmetic and clear errors."""

import subprocess
import sys

import pytest
from helpers import SNIPPETS, load_snippet, run_snippet


def test_hand_checked_costs():
    cost = load_snippet("budget/cost_per_request.py")
    # $3.60/h serving 1 request/s = 3600 requests/h -> $0.001 each; at 50% busy, twice that
    assert cost.cost_per_request(3.60, 1) == pytest.approx(0.001)
    assert cost.cost_per_request(3.60, 1, utilisation=0.5) == pytest.approx(0.002)
    # $2/h at 1000 tokens/s -> 3.6 M tokens/h -> $0.5556 per 1M tokens
    assert cost.cost_per_million_tokens(2.0, 1000) == pytest.approx(2.0 / 3.6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"price_per_hour": -1, "requests_per_second": 1},
        {"price_per_hour": 1, "requests_per_second": 0},
        {"price_per_hour": 1, "requests_per_second": 1, "utilisation": 1.5},
    ],
)
def test_bad_values_raise(kwargs):
    with pytest.raises(ValueError):
        load_snippet("budget/cost_per_request.py").cost_per_request(**kwargs)


def test_cli():
    out = run_snippet(
        "budget/cost_per_request.py", "--price-per-hour", "1.20", "--requests-per-second", "40"
    )
    assert out.strip() == "$0.0083 per 1,000 requests"
    bad = subprocess.run(
        [
            sys.executable,
            SNIPPETS / "budget/cost_per_request.py",
            "--price-per-hour",
            "1",
            "--requests-per-second",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: requests_per_second must be > 0"  # one line, no traceback
