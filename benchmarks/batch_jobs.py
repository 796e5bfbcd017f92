"""Batch jobs: output tokens per second from vLLM's offline batch runner against the same vLLM
serving online at the most load that still meets an interactive target, and what a million output
tokens costs at each rate on a named host of data/hosts.yaml.

Workload: the requests of snippets/backends/batch_requests.jsonl repeated to `--requests`, greedy,
each writing exactly the internal-chat spec's output_tokens (ignore_eos). Offline: the file through
vLLM's batch runner (OFFLINE_COMMAND); its rate counts from the moment it starts reading the file
(its engine loaded) to its exit, output written. Online: the catalogue's vLLM server, streamed
requests from the load generator at closed-loop concurrency 1, 2, 4, 8 and 16; the online rate is
that of the busiest level whose p95 time to first token and p95 latency meet the internal-chat
spec's targets (data/specs/internal-chat.yaml). Both run the catalogue's engine flags. Cost: the
host's hourly price over the output tokens an hour holds at each rate.

    python benchmarks/batch_jobs.py            # writes results/batch_jobs.json and .md
    python benchmarks/batch_jobs.py --quick    # the page's file as it is; 8 online, eager
"""

import argparse
import collections
import datetime
import json
import subprocess
import tempfile
import time
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
from vllm_cpu import VLLM_PYTHON, vllm_command, vllm_env, vllm_version

BATCH = REPO / "snippets" / "backends" / "batch_requests.jsonl"
MODEL_DIR = REPO / "models" / "smollm2-135m-instruct"
SPEC = REPO / "data" / "specs" / "internal-chat.yaml"
HOSTS = REPO / "data" / "hosts.yaml"
DEFAULT_HOST = "AWS EC2 c7i.xlarge (4 vCPU, no GPU)"  # two cores with hyper-threading, as here
# The page's command: the module form, as for the catalogue's server (vllm-cpu's `vllm` script
# fails on a package-metadata lookup).
OFFLINE_COMMAND = (
    "python -m vllm.entrypoints.openai.run_batch -i batch_requests.jsonl -o answers.jsonl "
    "--model <folder> --served-model-name SmolLM2-135M-Instruct"
)
ENGINE_FLAGS = ["--dtype", "bfloat16", "--max-model-len", "2048"]  # the catalogue's `start`
ONLINE = "vLLM online"
LEVELS = [1, 2, 4, 8, 16]


def offline_argv(batch: Path, output: Path, folder: Path, *flags: str) -> list[str]:
    """OFFLINE_COMMAND for .venv-vllm with real paths, `flags` added."""
    words = OFFLINE_COMMAND.replace("batch_requests.jsonl", str(batch))
    words = words.replace("answers.jsonl", str(output)).replace("<folder>", str(folder))
    return [str(VLLM_PYTHON), *words.split()[1:], *flags]


def run_offline(argv: list[str], kv_cache_gib: int = 1) -> float:
    """Run vLLM's batch runner; return the seconds from when it starts reading the batch file (its
    engine loaded) to its exit. A failure raises with the end of its log."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=vllm_env(kv_cache_gib),
        cwd=REPO,
    )
    reading, tail = None, collections.deque(maxlen=40)
    for line in proc.stdout:
        tail.append(line)
        if reading is None and "Reading batch from" in line:
            reading = time.perf_counter()
    proc.wait()
    if proc.returncode != 0 or reading is None:
        raise RuntimeError(f"vLLM's batch runner exited with {proc.returncode}:\n{''.join(tail)}")
    return time.perf_counter() - reading


def bodies(n: int, max_tokens: int) -> list[dict]:
    """The batch file's request bodies repeated to `n`, each writing exactly `max_tokens`."""
    lines = [json.loads(line) for line in BATCH.read_text().splitlines()]
    return [
        {**lines[i % len(lines)]["body"], "max_tokens": max_tokens, "ignore_eos": True}
        for i in range(n)
    ]


def write_batch_file(requests: list[dict], path: Path) -> Path:
    lines = [
        {"custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
        for i, b in enumerate(requests)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def host_price(name: str) -> dict:
    """The host's first listed price, with its basis, source, dates and whether it was verified."""
    host = next((h for h in yaml.safe_load(HOSTS.read_text())["hosts"] if h["name"] == name), None)
    if host is None:
        raise SystemExit(f"--host: no host named {name!r} in {HOSTS.relative_to(REPO)}")
    price = host["prices"][0]
    fields = ("region", "per_hour", "basis", "source", "as_of", "checked", "verified")
    return {"host": name} | {
        k: str(price[k]) if isinstance(price[k], datetime.date) else price[k] for k in fields
    }


def cost_per_million(per_hour: float, tokens_per_s: float) -> float:
    """Dollars per million output tokens for a machine billed `per_hour` making `tokens_per_s`."""
    return round(per_hour / (tokens_per_s * 3600) * 1e6, 2)


def meets(level: dict, spec: dict) -> bool:
    return (
        level.get("errors", 0) == 0
        and level["ttft_p95"] <= spec["ttft_p95_ms"]
        and level["latency_p95"] <= spec["latency_p95_ms"]
    )


def markdown_table(result: dict) -> str:
    price = result["price"]
    dollars = f"$ per million output tokens ({price['host']}, {price['region']})"
    lines = [
        f"| mode | output tokens/s | p95 TTFT (ms) | p95 latency (ms) | meets the target | {dollars} |",
        "|---|---:|---:|---:|---|---:|",
    ]
    offline = result["offline"]
    lines.append(
        f"| offline batch runner | {offline['output_tokens_per_s']:g} | - | - | no target | "
        f"{offline['cost_per_million']:.2f} |"
    )
    for level in result["online"]:
        lines.append(
            f"| online, {level['concurrency']} at a time | {level['output_tokens_per_s']:g} | "
            f"{level['ttft_p95']:.0f} | {level['latency_p95']:.0f} | "
            f"{'yes' if level['meets_target'] else 'no'} | {level['cost_per_million']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=64, help="requests per run (64)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="a host's name in data/hosts.yaml")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--answers", type=Path, help="where the batch runner writes its answers")
    add_url_option(parser)
    args = parser.parse_args()
    urls = contender_urls(parser, args, [ONLINE])
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    started = provenance([Path(__file__), LOADGEN, BATCH, SPEC, HOSTS])
    spec, price = yaml.safe_load(SPEC.read_text()), host_price(args.host)
    levels, flags = ([4], ["--enforce-eager"]) if args.quick else (LEVELS, [])
    folder = Path(tempfile.mkdtemp())
    if args.quick:  # the page's own file, as a reader runs it
        batch = BATCH
        requests = [json.loads(line)["body"] for line in BATCH.read_text().splitlines()]
    else:
        requests = bodies(args.requests, spec["output_tokens"])
        batch = write_batch_file(requests, folder / "batch.jsonl")
    n, max_tokens = len(requests), max(body["max_tokens"] for body in requests)
    output = args.answers or folder / "answers.jsonl"
    argv = offline_argv(batch, output, MODEL_DIR, *ENGINE_FLAGS, *flags)
    seconds = run_offline(argv, kv_cache_gib=4)
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    tokens = sum(a["response"]["body"]["usage"]["completion_tokens"] for a in answers)
    offline = {"seconds": round(seconds, 2), "output_tokens": tokens}
    offline["output_tokens_per_s"] = round(tokens / seconds, 1)
    offline["cost_per_million"] = cost_per_million(price["per_hour"], tokens / seconds)

    streamed = [{**b, "stream": True, "stream_options": {"include_usage": True}} for b in requests]
    workload = workloads.write(streamed, folder / "online.json")
    port = free_port()
    command = [*vllm_command("start", MODEL_DIR, *flags), "--port", str(port)]
    online = []
    with contender(ONLINE, urls, command, port, timeout=600) as server:
        for concurrency in levels:
            level = load(
                server.url,
                "/v1/chat/completions",
                workload,
                concurrency=concurrency,
                max_requests=8 if args.quick else n,
                max_seconds=3600,
            )
            level["concurrency"] = concurrency
            level["meets_target"] = meets(level, spec)
            level["cost_per_million"] = cost_per_million(
                price["per_hour"], level["output_tokens_per_s"]
            )
            online.append(level)
    best = max(
        (lv for lv in online if lv["meets_target"]),
        key=lambda lv: lv["output_tokens_per_s"],
        default=None,
    )
    result = {
        "provenance": started,
        "quick": args.quick,
        **machine(),
        "vllm": vllm_version(),
        "requests": n,
        "max_tokens": max_tokens,
        "target": {k: spec[k] for k in ("ttft_p95_ms", "latency_p95_ms")} | {"spec": SPEC.name},
        "price": price,
        "offline": offline,
        "online": online,
        "online_at_target": best,
        "offline_over_online": round(
            offline["output_tokens_per_s"] / best["output_tokens_per_s"], 2
        )
        if best
        else None,
    }
    publish("batch_jobs", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
