"""Check that a running vLLM exports every metric the vLLM alert rules and dashboard queries use.

    python snippets/visualisation/vllm_metric_names.py http://127.0.0.1:8000

The names are read from the PromQL in vllm_alert_rules.yml and vllm_queries.yml, not kept in a
list of their own, and looked up among the series of one scrape of /metrics. Run it after a vLLM
upgrade, once the server has served a request: a metric renamed in a release (vLLM 0.32 has no
vllm:time_per_output_token_seconds, which older guides still alert on) then fails here, not by an
alert that silently never fires. Exit status 1 names the missing ones.
"""

import argparse
import re
import sys
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent
VLLM_FILES = (HERE / "vllm_alert_rules.yml", HERE / "vllm_queries.yml")
PROMETHEUS_OWN = {"up"}  # series Prometheus writes about a scrape, never in /metrics
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
NAME = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:]*\s*\()")


def expressions(path: Path) -> list[str]:
    """The PromQL of a rules file (each rule's `expr`) or a queries file (each panel's)."""
    data = yaml.safe_load(path.read_text())
    if "groups" in data:
        return [rule["expr"] for group in data["groups"] for rule in group["rules"]]
    return [panel["expr"] for panel in data["panels"]]


def metric_names(promql: str) -> set[str]:
    """The series names an expression selects: what is left once label matchers, strings,
    ranges, grouping clauses, function calls, keywords and numbers are taken out."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", promql)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = GROUPING.sub(" ", bare)
    return {name for name in NAME.findall(bare) if name.lower() not in KEYWORDS}


def vllm_metric_names(files=VLLM_FILES) -> set[str]:
    """Every metric name the vLLM rule and query files use, Prometheus' own series left out."""
    found = {name for path in files for expr in expressions(path) for name in metric_names(expr)}
    return found - PROMETHEUS_OWN


def exported(metrics_text: str) -> set[str]:
    """The series names in a /metrics page: counters with _total, histograms with _bucket."""
    return {s.name for f in text_string_to_metric_families(metrics_text) for s in f.samples}


def missing(base_url: str) -> set[str]:
    """The names the rules and queries use that the server at `base_url` does not export."""
    page = requests.get(f"{base_url}/metrics", timeout=10)
    page.raise_for_status()
    return vllm_metric_names() - exported(page.text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="vLLM's base URL, e.g. http://127.0.0.1:8000")
    args = parser.parse_args()
    try:
        absent = missing(args.url)
    except requests.RequestException as error:
        sys.exit(f"{args.url}/metrics: {error}")
    for name in sorted(absent):
        print(f"missing: {name}")
    print(f"{len(vllm_metric_names()) - len(absent)} of {len(vllm_metric_names())} names exported")
    sys.exit(1 if absent else 0)
