"""Choose hosts for a spec: keep those that satisfy its rules and budget, and say why each other is out.

    python snippets/planning/hosts.py data/specs/on-prem-regulated.yaml
"""

import sys
from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parents[2] / "data"


def load_hosts() -> list[dict]:
    return yaml.safe_load((DATA / "hosts.yaml").read_text())["hosts"]


def load_gpus() -> dict:
    return yaml.safe_load((DATA / "gpus.yaml").read_text())["gpus"]


def rule_exclusion(spec: dict, host: dict) -> str | None:
    """The first rule of the spec that the host breaks, or None."""
    privacy = spec["privacy"]
    if privacy["on_premises"] and not host["on_premises"]:
        return "data must stay on premises"
    allowed = set(privacy["data_residency"])
    if "ANY" not in allowed and "ANY" not in host["regions"] and not allowed & set(host["regions"]):
        return f"no region in {', '.join(sorted(allowed))}"
    return None


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from spec import SpecError, known_model_names, load_spec

    try:
        spec = load_spec(Path(sys.argv[1]), known_model_names())
    except (SpecError, IndexError) as error:
        sys.exit(str(error) or "usage: python snippets/planning/hosts.py SPEC.yaml")
    for host in load_hosts():
        reason = rule_exclusion(spec, host)
        print(f"{'out' if reason else 'kept':>4}  {host['name']}" + (f": {reason}" if reason else ""))
