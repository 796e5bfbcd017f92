"""Capacity at the SLO: the highest open-loop (Poisson) arrival rate an embedding server sustains
with its p95 latency within the spec's target. That, not closed-loop throughput, is what one
replica can promise, and what the planner sizes CPU replicas from.

This guide's embedding server, and vLLM's pooling runner for contrast, each swept over rising
rates until the p95 passes the target; three alternating repeats, the median capacity kept.

    python benchmarks/capacity.py            # writes results/capacity.json|md and the page's plot
    python benchmarks/capacity.py --quick --url "this guide's embedding server=URL"   # for tests
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import workloads
import yaml
from harness import (
    LOADGEN,
    REPO,
    add_url_option,
    contender,
    contender_urls,
    free_port,
    load,
    machine,
)
from provenance import provenance
from publish import publish
from vllm_cpu import vllm_command, vllm_version

sys.path.insert(0, str(REPO / "snippets" / "planning"))
from plan import sustained  # the rule the planner reads this file with

SPEC = REPO / "data" / "specs" / "embedding-api.yaml"
SERVER = REPO / "snippets" / "backends" / "embedding_server.py"
RATES = {  # offered requests/s, rising; a sweep stops at the first rate past the target
    "this guide's embedding server": [50, 100, 125, 150, 175, 200, 250, 300],
    "vLLM pooling runner (vllm-cpu)": [10, 20, 40, 60, 80, 100, 125, 150, 200, 250, 300],
}


def commands() -> dict[str, list[str]]:
    """Each engine's start command, without its port."""
    return {
        "this guide's embedding server": [sys.executable, str(SERVER)],
        "vLLM pooling runner (vllm-cpu)": vllm_command("start_embeddings", workloads.minilm_dir()),
    }


def sweep(url: str, workload: Path, rates: list[float], target_ms: float, seconds: float) -> list:
    """Open-loop runs at rising rates until one misses the target (that one is kept, as the
    first point past the knee), after a closed-loop warm-up that the figures leave out."""
    load(url, "/v1/embeddings", workload, concurrency=4, max_requests=100, max_seconds=5)
    rows = []
    for rate in rates:
        row = load(
            url,
            "/v1/embeddings",
            workload,
            rate=rate,
            max_requests=int(seconds * rate),
            max_seconds=seconds,
            warmup=0,
        )
        rows.append({"rate": rate, **row})
        if not sustained(rows[-1], target_ms):
            break
    return rows


def capacity(rows: list[dict], target_ms: float) -> float:
    """The highest offered rate of a sweep that met the target (0 when none did)."""
    return max((r["rate"] for r in rows if sustained(r, target_ms)), default=0.0)


def markdown_table(result: dict) -> str:
    lines = [
        (
            f"| embedding server | capacity at p95 <= {result['target_ms']:g} ms, requests/s | "
            "p95 ms at that rate | first rate past the target |"
        ),
        "|---|---:|---:|---|",
    ]
    for name, engine in result["engines"].items():
        last = engine["sweeps"][-1]
        at = next((r for r in last if r["rate"] == engine["capacity_rps"]), None)
        past = next((r for r in last if not sustained(r, result["target_ms"])), None)
        p95_at = f"{at['latency_p95']:.0f}" if at else "-"
        beyond = f"{past['rate']:g}/s: p95 {past['latency_p95']:.0f} ms" if past else "none tried"
        lines.append(f"| {name} | {engine['capacity_rps']:g} | {p95_at} | {beyond} |")
    lines += [
        "",
        (
            f"Poisson arrivals, {result['seconds']:g} s a rate, median capacity of {result['repeats']} "
            f"alternating repeats; inputs of 8-40 words. Target from `{result['spec']}`. "
            f"{result['cpu_cores']} cores ({result['processor']}), {result['vllm']}, {result['date']}."
        ),
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, engine in result["engines"].items():
        rows = engine["sweeps"][-1]
        ax.plot([r["rate"] for r in rows], [r["latency_p95"] for r in rows], "o-", label=name)
    ax.axhline(result["target_ms"], color="grey", linestyle="--", label="p95 target")
    ax.set(xlabel="offered requests/s (Poisson)", ylabel="p95 latency, ms", yscale="log")
    ax.set_title("Embedding capacity at the latency target (all-MiniLM-L6-v2, 2 CPU cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="two short rates of this guide's server"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "planning" / "img" / "capacity.png"
    )
    add_url_option(parser)
    args = parser.parse_args()
    engines = commands()
    if args.quick:
        engines = dict(list(engines.items())[:1])
    urls = contender_urls(parser, args, engines)
    target_ms = yaml.safe_load(SPEC.read_text())["latency_p95_ms"]
    repeats, seconds = (1, 2) if args.quick else (args.repeats, 10)
    from transformers import AutoTokenizer

    words = workloads.whole_words(AutoTokenizer.from_pretrained(workloads.minilm_dir()))
    texts = workloads.embedding_texts(words, 256 if args.quick else 2048)
    workload = workloads.write(
        workloads.embedding_bodies(texts), Path(tempfile.mkdtemp()) / "e.json"
    )
    result = {
        "provenance": provenance([Path(__file__), SERVER, LOADGEN]),
        **machine(),
        "quick": args.quick,
        "vllm": vllm_version(),
        "spec": str(SPEC.relative_to(REPO)),
        "target_ms": target_ms,
        "seconds": seconds,
        "repeats": repeats,
        "engines": {name: {"sweeps": []} for name in engines},
    }
    for _ in range(repeats):
        for name, command in engines.items():
            port = free_port()
            rates = RATES[name][:2] if args.quick else RATES[name]
            with contender(name, urls, [*command, "--port", str(port)], port) as server:
                rows = sweep(server.url, workload, rates, target_ms, seconds)
            result["engines"][name]["sweeps"].append(rows)
            print(name, [(r["rate"], r["latency_p95"]) for r in rows], flush=True)
    for engine in result["engines"].values():
        engine["capacity_rps"] = statistics.median(capacity(s, target_ms) for s in engine["sweeps"])
    publish("capacity", result, markdown_table(result), args.out_dir, plot, args.plot)


if __name__ == "__main__":
    main()
