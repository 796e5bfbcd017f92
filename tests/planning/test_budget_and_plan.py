"""planning/budget.py, hosts.py and plan.py: hand-checked costs, exclusions with reasons, plans on the site."""

import subprocess
import sys

import pytest

from helpers import REPO, SNIPPETS, load_snippet, run_snippet

budget = load_snippet("planning/budget.py")
hosts = load_snippet("planning/hosts.py")
SPECS = REPO / "data" / "specs"


def test_budget_arithmetic():
    assert budget.replicas_needed(600, 391, 0.7, spare=1) == 4  # ceil(600 / 273.7) = 3, plus a spare
    assert budget.always_on_monthly(1.0, 2) == 1460
    assert budget.per_request(730, 1000) == pytest.approx(730 / 30_400)
    # $0.15 in / $0.60 out per 1M tokens, 800 + 250 tokens: $0.00027 a request
    assert budget.api_monthly(1, 800, 250, 0.15, 0.60) == pytest.approx(0.00027 * 30.4)
    assert budget.break_even_requests_per_day(0.00027 * 30.4 * 1000, 800, 250, 0.15, 0.60) == pytest.approx(1000)


def test_scale_to_zero_billing():
    # one request an hour: each keeps the replica up 5 minutes, 24 x 5 min = 2 h a day
    assert budget.scale_to_zero_monthly(1.0, 24, capacity_rps=10) == pytest.approx(2 * 30.4)
    # a request every 10 s: never idle for 5 minutes, billed like always on, at most max_replicas
    assert budget.scale_to_zero_monthly(1.0, 8640, capacity_rps=10) == pytest.approx(24 * 30.4)
    assert run_snippet("planning/budget.py", "--price-per-hour", "1", "--replicas", "2",
                       "--requests-per-day", "1000").strip() == "$1,460 per month, $48.026 per 1,000 requests"


def test_host_rules():
    spec = {"privacy": {"pii": True, "data_residency": ["EU"], "on_premises": False}}
    by_name = {h["name"]: h for h in hosts.load_hosts()}
    assert hosts.rule_exclusion(spec, by_name["Lambda on-demand H100 SXM (per GPU)"]) == "no region in EU"
    assert hosts.rule_exclusion(spec, by_name["AWS EC2 g5.xlarge (1x A10G)"]) is None
    on_prem = {"privacy": {"pii": True, "data_residency": ["ANY"], "on_premises": True}}
    assert hosts.rule_exclusion(on_prem, by_name["Modal serverless L4"]) == "data must stay on premises"
    assert all(h["source"] and h["as_of"] for h in by_name.values())


def test_internal_chat_plan():
    plan = run_snippet("planning/plan.py", str(SPECS / "internal-chat.yaml"))
    assert plan.startswith("# Plan: Internal chat assistant")
    assert "**llama-3.1-8b**: 8.03 B parameters" in plan and "KV cache 128 KiB per token" in plan
    assert "- Lambda on-demand H100 SXM (per GPU): no region in EU" in plan
    assert "- AWS EC2 c7i.xlarge (4 vCPU, no GPU): no accelerator" in plan
    assert "too slow: " in plan  # the L4's 300 GB/s cannot give 250 tokens within 12 s
    assert "**Recommendation: " in plan and "## Against a per-token API" in plan


def test_embedding_plan_uses_the_measured_cpu_throughput():
    plan = run_snippet("planning/plan.py", str(SPECS / "embedding-api.yaml"))
    assert "(measured)" in plan and "**Recommendation: AWS EC2 c7i.xlarge" in plan


def test_on_premises_plan_excludes_every_cloud():
    plan = run_snippet("planning/plan.py", str(SPECS / "on-prem-regulated.yaml"))
    excluded = [line for line in plan.splitlines() if line.endswith(": data must stay on premises")]
    assert len(excluded) == sum(not h["on_premises"] for h in hosts.load_hosts()) >= 8
    assert "- On-premises server (1x L40S): 1 replica(s)" in plan


def test_bad_spec_gets_one_line_per_problem(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text((SPECS / "internal-chat.yaml").read_text().replace("budget_per_month_usd: 2500", ""))
    proc = subprocess.run([sys.executable, SNIPPETS / "planning/plan.py", path], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == f"{path}: 'budget_per_month_usd': missing"


def test_site_plans_are_generated_by_the_build():
    sys.path.insert(0, str(REPO / "hooks"))
    import render_data

    page = render_data.render((REPO / "docs" / "planning" / "index.md").read_text())
    for name in ("Internal chat assistant", "High-volume embedding API", "Regulated on-premises deployment"):
        assert f"## Plan: {name}" in page
