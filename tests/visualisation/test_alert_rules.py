"""The operator's alerts (snippets/visualisation/alert_rules.yml): valid for Prometheus, and each
one fires on the series its unit tests feed it and stays silent on the others
(snippets/visualisation/alert_rules_test.yml), both checked by promtool."""

import shutil
import subprocess

import pytest
import yaml
from helpers import SNIPPETS

RULES = SNIPPETS / "visualisation" / "alert_rules.yml"
RULE_TESTS = SNIPPETS / "visualisation" / "alert_rules_test.yml"


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


def alerts() -> list[dict]:
    """Every alerting rule in the file, across its groups."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules(promtool):
    proc = run(promtool, "check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout


def test_promtool_test_rules(promtool):
    proc = run(promtool, "test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_rule_fails_the_check(promtool, tmp_path):
    """Proof that the check can fail: a copy of the rules with one unbalanced parenthesis."""
    broken = tmp_path / "alert_rules.yml"
    rule = "embedding_queue_depth > 512"
    broken.write_text(RULES.read_text().replace(rule, "(" + rule))
    proc = run(promtool, "check", "rules", str(broken))
    assert proc.returncode != 0
    assert '"EmbeddingQueueBacklog": could not parse expression' in proc.stdout + proc.stderr


def test_every_alert_has_a_severity_and_says_what_to_check_first():
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "Check first:" in rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_tested_firing_and_silent():
    """Each alert appears in the unit tests at least once firing and at least once silent."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for name in (rule["alert"] for rule in alerts()):
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: tested firing/silent = {outcomes}"
