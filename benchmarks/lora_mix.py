"""Does serving a LoRA adapter slow the requests around it? Base-model traffic alone against the
same traffic with half of it sent to the flywheel's intent adapter, on one vLLM.

vLLM starts from the catalogue's command with the LoRA flags docs/backends/features.md gives
(eager, so both runs share one engine). Each run sends the same 16 streamed chat requests, 8 at
a time, each writing exactly 32 tokens (`ignore_eos`): "base only" names the base model in every
request, "mixed" names the adapter (`model: intent`) in every other one. Three alternating repeats;
the medians of output tokens/s and their ratio.

    python benchmarks/lora_mix.py                             # results/lora_mix.json and .md
    python benchmarks/lora_mix.py --quick --url "vLLM=URL"    # the suite's vLLM, one short repeat
"""

import argparse
import statistics
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
)
from provenance import provenance
from publish import publish
from vllm_cpu import INTENT_ADAPTER, LORA_FLAGS, vllm_command, vllm_version

MODEL_DIR = REPO / "models" / "smollm2-135m-instruct"
ENGINE = "vLLM"
RUNS = {"base only": False, "mixed": True}
QUESTIONS = [
    "I was charged twice for my subscription this month.",
    "How do I reset my password?",
    "The app crashes when I open the settings page.",
    "Can I move my plan to the yearly billing option?",
]


def bodies(n: int, tokens: int, mixed: bool) -> list[dict]:
    """n streamed requests of exactly `tokens` output tokens; with `mixed`, every other one names
    the adapter instead of the base model."""
    return [
        {
            "model": "intent" if mixed and i % 2 else workloads.CHAT_MODEL,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(n)
    ]


def markdown_table(result: dict) -> str:
    lines = [
        "| traffic | output tokens/s (median) | each repeat |",
        "|---|---:|---|",
    ]
    for run, row in result["runs"].items():
        repeats = ", ".join(f"{r['output_tokens_per_s']:g}" for r in row["repeats"])
        lines.append(f"| {run} | {row['output_tokens_per_s']:g} | {repeats} |")
    settings = (
        f"{result['requests']} requests, {result['concurrency']} at a time, "
        f"{result['tokens']} output tokens each; mixed: every other request to the adapter. "
        f"Mixed over base only: {result['mixed_over_base']:.2f}."
    )
    lines += ["", settings]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    add_url_option(parser)
    args = parser.parse_args()
    urls = contender_urls(parser, args, [ENGINE])
    requests, concurrency, tokens, repeats = (4, 4, 8, 1) if args.quick else (16, 8, 32, 3)
    folder = Path(tempfile.mkdtemp())
    workload = {
        run: workloads.write(bodies(requests, tokens, mixed), folder / f"{run}.json")
        for run, mixed in RUNS.items()
    }
    result = {
        "provenance": provenance([Path(__file__), LOADGEN, INTENT_ADAPTER / "adapter_config.json"]),
        **machine(),
        "quick": args.quick,
        "vllm": vllm_version(),
        "requests": requests,
        "concurrency": concurrency,
        "tokens": tokens,
        "runs": {run: {"repeats": []} for run in RUNS},
    }
    port = free_port()
    command = [
        *vllm_command("start", MODEL_DIR, "--enforce-eager", *LORA_FLAGS),
        "--port",
        str(port),
    ]
    with contender(ENGINE, urls, command, port, timeout=600) as server:
        for _ in range(repeats):
            for run in RUNS:
                level = load(
                    server.url,
                    "/v1/chat/completions",
                    workload[run],
                    concurrency=concurrency,
                    max_requests=requests,
                    max_seconds=600,
                )
                if level["errors"]:
                    raise SystemExit(f"{run}: {level['errors']} of {requests} requests failed")
                result["runs"][run]["repeats"].append(level)
                print(run, level["output_tokens_per_s"], flush=True)
    for row in result["runs"].values():
        row["output_tokens_per_s"] = statistics.median(
            r["output_tokens_per_s"] for r in row["repeats"]
        )
    runs = result["runs"]
    result["mixed_over_base"] = round(
        runs["mixed"]["output_tokens_per_s"] / runs["base only"]["output_tokens_per_s"], 3
    )
    publish("lora_mix", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
