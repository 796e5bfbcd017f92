"""Every LLM contender under the field's benchmark client: guidellm's sweep, the same inputs for all.

guidellm (its own venv, .venv-guidellm) runs its sweep profile against each server in turn:
one request at a time (synchronous), as many as it can (throughput), then constant rates spaced
between the two. Every request asks for a fixed length through `ignore_eos`; the script checks
each request's completion tokens and reports apart any contender that does not honour it.
Goodput: the highest rate the sweep measured whose TTFT p95 and ITL p95 both meet the targets.

    python benchmarks/llm_sweep.py            # writes results/llm_sweep.json and .md
    python benchmarks/llm_sweep.py --quick    # a tiny sweep of this guide's server only
    python benchmarks/llm_sweep.py --quick --url "this guide's LLM server=URL"   # one running
"""

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import requests
from harness import REPO, add_url_option, contender, contender_urls, free_port, machine
from llm_server import MODEL_DIR
from peers import llm_contenders
from provenance import provenance
from publish import publish
from vllm_cpu import vllm_version

GUIDELLM = REPO / ".venv-guidellm" / "bin" / "guidellm"
TTFT_P95_TARGET_MS = 2000  # a chat answer starts within 2 s
ITL_P95_TARGET_MS = 200  # then streams at 5 tokens/s or faster, about reading speed
PERCENTILES = ("p50", "p95", "p99")
LATENCIES = ("time_to_first_token_ms", "inter_token_latency_ms", "time_per_output_token_ms")


def guidellm(url: str, model: str, work: Path, shape: dict) -> dict:
    """One guidellm sweep against a running server; its JSON report."""
    report = work / "guidellm.json"
    sweep = f"kind=sweep,sweep_size={shape['strategies']},strategy_type=constant"
    data = f"kind=synthetic_text,prompt_tokens={shape['prompt']},output_tokens={shape['output']}"
    command = [
        str(GUIDELLM),
        "run",
        "--backend",
        f"kind=openai_http,target={url},model={model}",
        "--profile",
        sweep,
        "--data",
        data,
        "--tokenizer",
        f"kind=hf_auto,model={MODEL_DIR}",
        "--constraint",
        f"kind=max_requests,count={shape['requests']}",
        "--output",
        f"kind=json,path={report}",
        "--disable-console",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=3600)
    return json.loads(report.read_text())


def strategy_row(benchmark: dict, output_tokens: int) -> dict:
    """One strategy of a sweep: its rate, throughput, latency percentiles and length check."""
    metrics, strategy = benchmark["metrics"], benchmark["config"]["strategy"]
    row = {
        "strategy": strategy["type_"],
        "rate": strategy.get("rate"),
        "requests": metrics["request_totals"]["successful"],
        "errored": metrics["request_totals"]["errored"],
        "requests_per_s": metrics["requests_per_second"]["successful"]["mean"],
        "output_tokens_per_s": metrics["output_tokens_per_second"]["successful"]["mean"],
    }
    for name in LATENCIES:
        for p in PERCENTILES:
            row[f"{name}_{p}"] = metrics[name]["successful"]["percentiles"][p]
    lengths = [r["output_tokens"] for r in benchmark["requests"]["successful"]]
    row["wrong_length"] = sum(1 for n in lengths if n != output_tokens)
    return row


def goodput(rows: list[dict]) -> float:
    """Requests/s of the fastest strategy whose TTFT p95 and ITL p95 meet the targets (0 if none)."""
    meeting = [
        r["requests_per_s"]
        for r in rows
        if r["time_to_first_token_ms_p95"] <= TTFT_P95_TARGET_MS
        and r["inter_token_latency_ms_p95"] <= ITL_P95_TARGET_MS
        and r["errored"] == 0
    ]
    return max(meeting, default=0.0)


def markdown_table(result: dict) -> str:
    """Per contender: its peak throughput, one stream, goodput and whether lengths held."""
    lines = [
        (
            "| LLM server | output tok/s, one stream | output tok/s, throughput | TTFT p50 / p95 / p99 ms, "
            "throughput | ITL p50 / p95 / p99 ms, throughput | goodput req/s | fixed lengths held |"
        ),
        "|---|---:|---:|---|---|---:|---|",
    ]
    for name, entry in result["contenders"].items():
        rows = {r["strategy"]: r for r in entry["strategies"]}
        one, full = rows["synchronous"], rows["throughput"]
        ttft = " / ".join(f"{full[f'time_to_first_token_ms_{p}']:.0f}" for p in PERCENTILES)
        itl = " / ".join(f"{full[f'inter_token_latency_ms_{p}']:.0f}" for p in PERCENTILES)
        wrong = sum(r["wrong_length"] for r in entry["strategies"])
        held = "yes" if wrong == 0 else f"no: {wrong} requests another length (apart)"
        lines.append(
            f"| {name} | {one['output_tokens_per_s']:.1f} | {full['output_tokens_per_s']:.1f} | "
            f"{ttft} | {itl} | {entry['goodput']:.2f} | {held} |"
        )
    shape = result["shape"]
    lines += [
        "",
        (
            f"guidellm {result['guidellm']} sweep ({shape['strategies']} strategies, {shape['requests']} "
            f"requests each), {shape['prompt']}-token prompts, {shape['output']} output tokens forced "
            f"with `ignore_eos`. Goodput: the fastest strategy with TTFT p95 at most "
            f"{TTFT_P95_TARGET_MS} ms and ITL p95 at most {ITL_P95_TARGET_MS} ms. {result['cpu_cores']} "
            f"cores ({result['processor']}), {result['vllm']}, {result['date']}."
        ),
    ]
    for name, answer in result["refused"].items():
        lines.append(
            f"\n- {name}: not measured, guidellm's run against it failed; one request of "
            f"guidellm's shape (streamed, `ignore_eos`) got `{answer}`."
        )
    return "\n".join(lines) + "\n"


def refusal(url: str, model: str) -> str:
    """A clue to why guidellm's run failed: the server's answer to one request of guidellm's shape
    (a streamed chat request with `ignore_eos`, the extension that fixes the output length)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    body |= {"stream": True, "ignore_eos": True}
    answer = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    return f"HTTP {answer.status_code}: {answer.text[:200]}"


def guidellm_version() -> str:
    out = subprocess.run([str(GUIDELLM), "--version"], capture_output=True, text=True)
    return out.stdout.strip().split()[-1] if out.stdout.strip() else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny sweep of this guide's server")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    add_url_option(parser)
    args = parser.parse_args()
    if not GUIDELLM.exists():
        raise SystemExit(f"{GUIDELLM} missing: make bench installs guidellm into .venv-guidellm")
    shape = {"strategies": 3, "requests": 4, "prompt": 32, "output": 8}
    if not args.quick:
        shape = {"strategies": 6, "requests": 24, "prompt": 128, "output": 64}
    contenders = llm_contenders()
    if args.quick:
        contenders = dict(list(contenders.items())[:1])
    urls = contender_urls(parser, args, contenders)
    result = {
        "provenance": provenance([Path(__file__)], ("transformers", "llama-cpp-python")),
        **machine(),
        "quick": args.quick,
        "vllm": vllm_version(),
        "guidellm": guidellm_version(),
        "shape": shape,
        "contenders": {},
        "refused": {},
    }
    for name, (command, model, _, _) in contenders.items():
        port = free_port()
        ready = "/v1/models" if "llama" in name else "/health"
        command = [*command, "--port", str(port)]
        with contender(name, urls, command, port, ready_path=ready, timeout=600) as server:
            try:
                report = guidellm(server.url, model, Path(tempfile.mkdtemp()), shape)
            except subprocess.CalledProcessError:
                result["refused"][name] = refusal(server.url, model)
                print(name, "refused:", result["refused"][name], flush=True)
                continue
        rows = [strategy_row(b, shape["output"]) for b in report["benchmarks"]]
        result["contenders"][name] = {
            "startup_s": round(server.startup_s, 1),
            "strategies": rows,
            "goodput": goodput(rows),
        }
        print(name, json.dumps(rows[-1]), flush=True)
    publish("llm_sweep", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
