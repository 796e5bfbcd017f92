"""Choose hosts for a spec: keep those that satisfy its rules, pick the price of a region the spec
allows, and say why each other host is out.

    python snippets/planning/hosts.py data/specs/on-prem-regulated.yaml
"""

import argparse
import sys
from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parents[2] / "data"


def load_hosts() -> list[dict]:
    return yaml.safe_load((DATA / "hosts.yaml").read_text())["hosts"]


def load_gpus() -> dict:
    return yaml.safe_load((DATA / "gpus.yaml").read_text())["gpus"]


def usable_bytes(gpu: dict) -> int:
    """The memory a GPU really offers: nvidia-smi's total where data/gpus.yaml records it (the
    GDDR6 cards report about 6 % less than their nominal GB), else the nominal GiB."""
    if gpu.get("usable_mib"):
        return gpu["usable_mib"] * 2**20
    return gpu["memory_gib"] * 2**30


def rule_exclusion(spec: dict, host: dict) -> str | None:
    """The first rule of the spec that the host breaks, or None."""
    privacy = spec["privacy"]
    if privacy["on_premises"] and not host["on_premises"]:
        return "data must stay on premises"
    allowed = set(privacy["data_residency"])
    if "ANY" in allowed or "ANY" in host["regions"]:
        return None
    if not allowed & set(host["regions"]):
        return f"no region in {', '.join(sorted(allowed))}"
    if host.get("inputs_via") and host["inputs_via"] not in allowed:
        return (
            f"requests pass through {host['inputs_via']} (the provider's servers) before reaching a "
            f"container in {', '.join(sorted(allowed))}"
        )
    return None


def price_for(spec: dict, host: dict) -> dict | None:
    """The cheapest recorded price in a region the spec allows (any price when it allows ANY), or None."""
    allowed = set(spec["privacy"]["data_residency"])
    prices = [p for p in host["prices"] if "ANY" in allowed or p["region"] in allowed]
    return min(prices, key=lambda p: p["per_hour"], default=None)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from spec import SpecError, known_model_names, load_spec

    parser = argparse.ArgumentParser(
        description="Which hosts a spec's rules allow, and their prices"
    )
    parser.add_argument("spec", type=Path, help="the spec, a YAML file")
    args = parser.parse_args()
    try:
        spec = load_spec(args.spec, known_model_names())
    except SpecError as error:
        sys.exit(str(error))
    for host in load_hosts():
        reason = rule_exclusion(spec, host)
        price = None if reason else price_for(spec, host)
        detail = (
            f": {reason}"
            if reason
            else f": ${price['per_hour']:g}/h in {price['location']}"
            if price
            else ""
        )
        print(f"{'out' if reason else 'kept':>4}  {host['name']}{detail}")
