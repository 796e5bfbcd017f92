"""The operator's alerts: for this guide's servers (snippets/visualisation/alert_rules.yml) and for
vLLM (vllm_alert_rules.yml), valid for Prometheus, and each one fires on the series its unit tests
feed it and stays silent on the others (alert_rules_test.yml, vllm_alert_rules_test.yml), both
checked by promtool. The vLLM dashboard queries (vllm_queries.yml) parse and select vLLM-shaped
series, and vllm_metric_names.py finds every metric name the vLLM files use."""

import shutil
import subprocess
import sys

import pytest
import yaml
from helpers import SNIPPETS, free_port, load_snippet
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RULES = SNIPPETS / "visualisation" / "alert_rules.yml"
RULE_TESTS = SNIPPETS / "visualisation" / "alert_rules_test.yml"
VLLM_RULES = SNIPPETS / "visualisation" / "vllm_alert_rules.yml"
VLLM_RULE_TESTS = SNIPPETS / "visualisation" / "vllm_alert_rules_test.yml"
VLLM_QUERIES = SNIPPETS / "visualisation" / "vllm_queries.yml"
RULE_FILES = [(RULES, RULE_TESTS), (VLLM_RULES, VLLM_RULE_TESTS)]
names = load_snippet("visualisation/vllm_metric_names.py")


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool's path; a missing promtool fails the test, since the rules are then unchecked."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(apt-get install prometheus), which ships /usr/bin/promtool"
        )
    return path


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    """Run promtool in the rules' folder, where the test file finds alert_rules.yml."""
    return subprocess.run(
        [promtool, *args],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def alerts(rules=RULES) -> list[dict]:
    """Every alerting rule in the file, across its groups."""
    groups = yaml.safe_load(rules.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.mark.parametrize("rules", [RULES, VLLM_RULES], ids=lambda p: p.name)
def test_promtool_check_rules(promtool, rules):
    proc = run(promtool, "check", "rules", rules.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts(rules))} rules found" in proc.stdout


@pytest.mark.parametrize("rule_tests", [RULE_TESTS, VLLM_RULE_TESTS], ids=lambda p: p.name)
def test_promtool_test_rules(promtool, rule_tests):
    proc = run(promtool, "test", "rules", rule_tests.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_rule_fails_the_check(promtool, tmp_path):
    """Proof that the check can fail: a copy of the rules with one unbalanced parenthesis."""
    broken = tmp_path / "alert_rules.yml"
    rule = "embedding_queue_depth > 512"
    broken.write_text(RULES.read_text().replace(rule, "(" + rule))
    proc = run(promtool, "check", "rules", str(broken))
    assert proc.returncode != 0
    assert '"EmbeddingQueueBacklog": could not parse expression' in proc.stdout + proc.stderr


@pytest.mark.parametrize("rules", [RULES, VLLM_RULES], ids=lambda p: p.name)
def test_every_alert_has_a_severity_and_says_what_to_check_first(rules):
    for rule in alerts(rules):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "Check first:" in rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("rules, rule_tests", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_is_tested_firing_and_silent(rules, rule_tests):
    """Each alert appears in the unit tests at least once firing and at least once silent."""
    tests = yaml.safe_load(rule_tests.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for name in (rule["alert"] for rule in alerts(rules)):
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: tested firing/silent = {outcomes}"


def test_the_vllm_files_watch_what_the_page_says():
    """TTFT, whole-request latency, the queue, the KV cache, preemptions, finished requests and
    HTTP 5xx, on vLLM 0.32's names; never the per-output-token histogram 0.32 no longer has."""
    used = names.vllm_metric_names()
    assert used >= {
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:request_success_total",
        "http_requests_total",
    }
    assert not any("time_per_output_token" in name for name in used)
    assert "up" not in used  # Prometheus writes it; no /metrics page has it


def test_metric_names_are_read_from_promql():
    cases = {
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{x="}"}[5m]))) > 1.5e-3': {
            "a_bucket"
        },
        'up{job="vllm"} == 0 or absent(up{job="vllm"})': {"up"},
        "x:y_total unless on (instance) z offset 5m": {"x:y_total", "z"},
        "sum(rate(a[1m])) / ignoring(le) group_left b and bool c": {"a", "b", "c"},
        "max without (engine) (kv) > 0.9": {"kv"},
    }
    for promql, expected in cases.items():
        assert names.metric_names(promql) == expected, promql


def test_vllm_queries_parse_and_select_vllm_series(promtool, tmp_path):
    """Each dashboard query parses and, run as an alert over series with vLLM's labels, returns a
    result with the labels it groups by. Whether vLLM exports the names is checked against the
    suite's running vLLM, with vllm_metric_names.py."""
    panels = yaml.safe_load(VLLM_QUERIES.read_text())["panels"]
    labels = {"job": "vllm", "instance": "vllm-1:8000", "model_name": "m", "engine": "0"}
    extra = {"finished_reason": "stop", "handler": "/v1/completions", "status": "2xx"}
    series = []
    for name in sorted(names.vllm_metric_names({VLLM_QUERIES})):
        own = {**labels, **({"le": "+Inf"} if name.endswith("_bucket") else {})}
        own |= (
            {k: v for k, v in extra.items() if k in ("handler", "status")} if "http" in name else {}
        )
        own |= {"finished_reason": "stop"} if name == "vllm:request_success_total" else {}
        text = ", ".join(f'{k}="{v}"' for k, v in own.items())
        series.append({"series": f"{name}{{{text}}}", "values": "0+60x10"})
    rules = tmp_path / "panels.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "panels",
                        "rules": [
                            {"alert": f"Panel{i}", "expr": p["expr"]} for i, p in enumerate(panels)
                        ],
                    }
                ]
            }
        )
    )
    grouped = [
        p["expr"].split("by (", 1)[1].split(")")[0] if "by (" in p["expr"] else "" for p in panels
    ]
    cases = [
        {
            "eval_time": "5m",
            "alertname": f"Panel{i}",
            "exp_alerts": [
                {
                    "exp_labels": {
                        k: extra[k]
                        for k in (g.replace(" ", "").split(",") if g else [])
                        if k != "le"
                    }
                }
            ],
        }
        for i, g in enumerate(grouped)
    ]
    tests = tmp_path / "panels_test.yml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [rules.name],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}],
            }
        )
    )
    check = run(promtool, "check", "rules", str(rules))
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.run(
        [promtool, "test", "rules", tests.name], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def serve_metrics(names_to_export: set[str]) -> tuple[object, int]:
    """A loopback /metrics page with one series per name (a counter for _total, a histogram for
    _bucket, else a gauge), as prometheus_client writes them; the server and its port."""
    registry, port = CollectorRegistry(), free_port()
    for name in names_to_export:
        if name.endswith("_total"):
            Counter(name.removesuffix("_total"), "test", registry=registry).inc()
        elif name.endswith("_bucket"):
            Histogram(name.removesuffix("_bucket"), "test", registry=registry).observe(1)
        else:
            Gauge(name, "test", registry=registry).set(1)
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server, port


def test_the_metric_check_names_what_a_server_does_not_export():
    """The command a reader runs after an upgrade: exit 0 when every name is there, 1 naming the
    one a release renamed."""
    used = names.vllm_metric_names()
    script = str(SNIPPETS / "visualisation" / "vllm_metric_names.py")
    for exported, status in ((used, 0), (used - {"vllm:num_preemptions_total"}, 1)):
        server, port = serve_metrics(exported)
        try:
            proc = subprocess.run(
                [sys.executable, script, f"http://127.0.0.1:{port}"], capture_output=True, text=True
            )
        finally:
            server.shutdown()
        assert proc.returncode == status, proc.stdout + proc.stderr
        assert ("missing: vllm:num_preemptions_total" in proc.stdout) == bool(status)
