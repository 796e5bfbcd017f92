"""What caching a shared system prompt's KV saves: time to first token with a long system prompt,
this guide's LLM server with its prefix cache on and off, alternating, three runs each.

    python benchmarks/prefix_cache.py            # writes results/prefix_cache.json and .md
    python benchmarks/prefix_cache.py --quick    # one short run each, for the test suite
"""

import argparse
import sys
import tempfile
from pathlib import Path

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
from llm_server import MODEL_DIR
from provenance import provenance
from publish import publish

SERVER = REPO / "snippets" / "backends" / "llm_server.py"
SYSTEM_PROMPT = (
    "You are the support assistant of a small online shop that sells bicycles, spare parts and "
    "repair services. Answer in two sentences at most. "
    + " ".join(
        f"Policy {i}: orders of category {i} ship within {i % 5 + 1} working days, can be returned "
        f"within {10 + i} days, and are covered by a {i % 3 + 1}-year warranty."
        for i in range(14)
    )
)
QUESTIONS = [
    "Where is my order?",
    "Can I return a helmet?",
    "How long is the warranty on brakes?",
    "Do you repair e-bikes?",
    "Can I change my delivery address?",
    "Is the chain lube in stock?",
]
FIGURES = ["ttft_p50", "ttft_p95", "latency_p50"]


def bodies(n: int, max_tokens: int) -> list[dict]:
    return [
        {
            "model": workloads.CHAT_MODEL,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
            ],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
        for i in range(n)
    ]


def markdown_table(result: dict) -> str:
    lines = [
        "| prefix cache | TTFT p50 ms | TTFT p95 ms | end-to-end p50 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["summary"].items():
        lines.append(
            f"| {name} | {spread(row, 'ttft_p50')} | {row['ttft_p95']:.0f} | {row['latency_p50']:.0f} |"
        )
    lines += [
        "",
        (
            f"A {result['system_prompt_tokens']}-token system prompt and a short question, one request at a "
            f"time, {result['requests']} requests per run; medians of {result['repeats']} alternating runs. "
            f"Time to first token with the cache is {result['ratio']:.0%} of without. {result['cpu_cores']} "
            f"cores, bfloat16, {result['date']}."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    add_url_option(parser)
    args = parser.parse_args()
    runs = {"on (8 prompts kept)": [], "off (--prefix-cache 0)": []}
    urls = contender_urls(parser, args, runs)
    from transformers import AutoTokenizer

    started = provenance([Path(__file__), SERVER, LOADGEN])
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    system_tokens = len(
        tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}], tokenize=True, return_dict=True
        )["input_ids"]
    )
    repeats, n, max_tokens = (1, 2, 2) if args.quick else (3, 24, 8)
    workload = workloads.write(bodies(n, max_tokens), Path(tempfile.mkdtemp()) / "prefix.json")
    for _ in range(repeats):
        for name, rows in runs.items():
            port = free_port()
            command = [sys.executable, str(SERVER), "--port", str(port), "--model", str(MODEL_DIR)]
            if name.startswith("off"):
                command += ["--prefix-cache", "0"]
            with contender(name, urls, command, port) as server:
                rows.append(
                    load(
                        server.url,
                        "/v1/chat/completions",
                        workload,
                        concurrency=1,
                        max_requests=n,
                        max_seconds=600,
                    )
                )
    summary = {name: median_of(rows, FIGURES) for name, rows in runs.items()}
    ratio = (
        summary["on (8 prompts kept)"]["ttft_p50"] / summary["off (--prefix-cache 0)"]["ttft_p50"]
    )
    result = {
        "provenance": started,
        "quick": args.quick,
        "repeats": repeats,
        "requests": n,
        "system_prompt_tokens": system_tokens,
        **machine(),
        "runs": runs,
        "summary": summary,
        "ratio": round(ratio, 3),
    }
    publish("prefix_cache", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
