"""Measure continuous batching against its alternatives and its off-the-shelf peer, in one run.

Contenders, all SmolLM2-135M-Instruct in bfloat16 with the same thread count and requests:
  one at a time              this guide's server with --max-running 1 (batching off);
  static batching            transformers `generate` on padded batches, in process (no HTTP);
  continuous batching        this guide's server (--max-running 16);
  transformers serve         the peer in its default mode (one request at a time);
  transformers serve --cb    the peer with --continuous-batching (its paged-attention manager).
Workload (benchmarks/workloads.py): streaming chat requests whose max_tokens cycle from 16 to 256,
each with its own sampling settings (greedy, and temperature / top_p / seed varying by request).
Closed-loop levels, then Poisson arrivals for the two continuous batchers. Every contender gets
the same warm-up (one request per client); three repeats alternate the contenders.

    python benchmarks/llm_server.py           # full run: JSON, Markdown table and plot
    python benchmarks/llm_server.py --quick   # one short repeat, for the test suite
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
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

SERVER = REPO / "snippets" / "backends" / "llm_server.py"
MODEL_DIR = REPO / "models" / "smollm2-135m-instruct"
# The peer's paged KV cache, sized for this workload. Left to its defaults on a CPU it sizes the cache
# from free RAM (60-90% of it) and ran 3 to 6 times slower here; these settings were its best of
# the three tried (see the page).
PEER_CACHE = ["--cb-num-blocks", "256", "--cb-block-size", "32", "--cb-max-batch-tokens", "512"]
FIGURES = [
    "output_tokens_per_s",
    "requests_per_s",
    "ttft_p50",
    "ttft_p95",
    "tpot_p50",
    "tpot_p95",
    "latency_p50",
    "latency_p95",
]


def contenders(threads: int, quick: bool) -> dict:
    """name -> (command builder for a port, model name in requests, closed levels, Poisson rates)."""
    ours = [
        sys.executable,
        str(SERVER),
        "--threads",
        str(threads),
        "--model",
        str(MODEL_DIR),
        "--dtype",
        "bfloat16",
    ]
    peer = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        "--host",
        "127.0.0.1",
        "--dtype",
        "bfloat16",
    ]
    # One client is the same for every contender (about 23 tok/s, one sequence): it is measured once,
    # for this guide's server, where the TTFT target needs it.
    rates = [] if quick else [1.0]
    return {
        "one at a time": (ours + ["--max-running", "1"], workloads.CHAT_MODEL, [8], []),
        "continuous batching": (
            ours + ["--max-running", "16"],
            workloads.CHAT_MODEL,
            [1, 8] if quick else [1, 8, 16],
            rates,
        ),
        "transformers serve": (peer, str(MODEL_DIR), [8], []),
        "transformers serve --continuous-batching": (
            peer + ["--continuous-batching", *PEER_CACHE],
            str(MODEL_DIR),
            [8] if quick else [8, 16],
            rates,
        ),
    }


def static_batching(bodies: list[dict], batch_size: int) -> dict:
    """generate() on padded batches: `batch_size` closed-loop clients send together and wait for
    the whole batch (it runs until its longest request is done), then send again. Greedy, since
    generate applies one set of sampling settings to the whole batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.bfloat16).eval()

    class FirstTokenClock(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:  # call 1 is the prompt, call 2 the first generated tokens
                self.first = time.perf_counter()

        def end(self):
            pass

    def run_batch(batch: list[dict]) -> list[dict]:
        sent = time.perf_counter()
        texts = [
            tokenizer.apply_chat_template(b["messages"], add_generation_prompt=True, tokenize=False)
            for b in batch
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True)
        clock = FirstTokenClock()
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max(b["max_tokens"] for b in batch),
                do_sample=False,
                streamer=clock,
            )
        done = time.perf_counter()
        records = []
        for row, body in enumerate(batch):
            new = out[row, inputs["input_ids"].shape[1] :].tolist()[: body["max_tokens"]]
            eos = [k for k, t in enumerate(new) if t == tokenizer.eos_token_id]
            tokens = eos[0] + 1 if eos else len(new)  # what this request really needed
            records.append(
                {
                    "status": 200,
                    "ttft": clock.first - sent,
                    "latency": done - sent,
                    "tokens": tokens,
                    "tpot": (done - clock.first) / max(tokens - 1, 1),
                }
            )
        return records

    run_batch(bodies[:batch_size])  # the same warm-up as the servers: one request per client
    records, started = [], time.perf_counter()
    for i in range(0, len(bodies), batch_size):
        records += run_batch(bodies[i : i + batch_size])
    elapsed = time.perf_counter() - started
    latency = np.array([r["latency"] for r in records]) * 1000
    ttft = np.array([r["ttft"] for r in records]) * 1000
    tpot = np.array([r["tpot"] for r in records]) * 1000
    return {
        "requests": len(records),
        "errors": 0,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(records) / elapsed, 3),
        "output_tokens_per_s": round(sum(r["tokens"] for r in records) / elapsed, 1),
        **{
            f"{name}_p{q}": round(float(np.percentile(values, q)), 1)
            for name, values in (("latency", latency), ("ttft", ttft), ("tpot", tpot))
            for q in (50, 95)
        },
    }


def bare_prefill_ms(prompt: list[dict]) -> float:
    """The model's own prefill time for the first prompt (next-token logits only): TTFT's floor."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.bfloat16).eval()
    ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    times = []
    with torch.inference_mode():
        for _ in range(7):
            started = time.perf_counter()
            model(**ids, logits_to_keep=1)
            times.append(time.perf_counter() - started)
    return round(float(np.median(times[2:])) * 1000, 1)


def summarise(result: dict) -> None:
    result["summary"] = []
    for mode, level in dict.fromkeys((r["mode"], r["load"]) for r in result["runs"]):
        runs = [r for r in result["runs"] if (r["mode"], r["load"]) == (mode, level)]
        result["summary"].append({"mode": mode, "load": level, **median_of(runs, FIGURES)})
    result["targets"] = targets(result)


def targets(result: dict) -> dict:
    row = {(r["mode"], r["load"]): r for r in result["summary"]}
    cb8 = row[("continuous batching", "8 clients")]["output_tokens_per_s"]
    peer8 = row[("transformers serve --continuous-batching", "8 clients")]["output_tokens_per_s"]
    one = row[("one at a time", "8 clients")]["output_tokens_per_s"]
    static8 = row[("static batching", "8 clients")]["output_tokens_per_s"]
    ttft1 = row[("continuous batching", "1 client")]["ttft_p50"]
    return {
        "continuous batching vs transformers serve --continuous-batching, tok/s at 8 clients": {
            "value": f"{cb8:g} vs {peer8:g} ({cb8 / peer8:.2f}x)",
            "target": ">= 1x",
            "met": bool(cb8 >= peer8),
        },
        "continuous batching vs one at a time, tok/s at 8 clients": {
            "value": f"{cb8 / one:.1f}x",
            "target": ">= 4x",
            "met": bool(cb8 >= 4 * one),
        },
        "continuous vs static batching, tok/s at 8 clients": {
            "value": f"{cb8:g} vs {static8:g}",
            "target": ">= 1x",
            "met": bool(cb8 >= static8),
        },
        "TTFT p50 at 1 client vs bare prefill": {
            "value": f"{ttft1:g} vs {result['bare_prefill_ms']:g} ms ({ttft1 / result['bare_prefill_ms']:.3f}x)",
            "target": "<= 1.2x",
            "met": bool(ttft1 <= 1.2 * result["bare_prefill_ms"]),
        },
    }


def markdown_table(result: dict) -> str:
    head = (
        "| contender | load | output tok/s | req/s | TTFT p50 / p95 ms | TPOT p50 / p95 ms | "
        "end-to-end p50 / p95 s | start-up s |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {r['mode']} | {r['load']} | {spread(r, 'output_tokens_per_s')} | {r['requests_per_s']:g} | "
        f"{r['ttft_p50']:.0f} / {r['ttft_p95']:.0f} | {r['tpot_p50']:.0f} / {r['tpot_p95']:.0f} | "
        f"{r['latency_p50'] / 1000:.1f} / {r['latency_p95'] / 1000:.1f} | {result['startup_s'].get(r['mode'], '-')} |"
        for r in result["summary"]
    ]
    notes = [
        (
            f"Medians of {result['repeats']} alternating repeats (range in brackets), {result['requests_per_level']} "
            f"requests per level; bare prefill of the first prompt {result['bare_prefill_ms']} ms. bfloat16, "
            f"{result['threads']} torch threads, {result['cpu_cores']} cores ({result['processor']}), torch "
            f"{result['torch']}, transformers {result['transformers']}, {result['date']}."
        ),
        "",
    ]
    notes += [
        f"- {name}: {c['value']} ({'met' if c['met'] else 'NOT met'}, target {c['target']})"
        for name, c in result["targets"].items()
    ]
    return "\n".join([head, *rows, "", *notes]) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [r for r in result["summary"] if r["load"].endswith(("client", "clients"))]
    fig, (tok_ax, ttft_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in dict.fromkeys(r["mode"] for r in closed):
        rows = [r for r in closed if r["mode"] == mode]
        clients = [int(r["load"].split()[0]) for r in rows]
        tok_ax.errorbar(
            clients,
            [r["output_tokens_per_s"] for r in rows],
            yerr=[
                [r["output_tokens_per_s"] - r["output_tokens_per_s_min"] for r in rows],
                [r["output_tokens_per_s_max"] - r["output_tokens_per_s"] for r in rows],
            ],
            fmt="o-",
            label=mode,
            capsize=3,
        )
        ttft_ax.plot(clients, [r["ttft_p50"] for r in rows], "o-", label=mode)
    tok_ax.set(xlabel="concurrent clients", ylabel="output tokens/s")
    ttft_ax.set(xlabel="concurrent clients", ylabel="TTFT p50 (ms)", yscale="log")
    for ax in (tok_ax, ttft_ax):
        ax.legend(fontsize=7)
    fig.suptitle(
        f"SmolLM2-135M-Instruct, bfloat16, {result['threads']} torch threads, {result['cpu_cores']} cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat, for a smoke test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "backends" / "img" / "llm_server.png"
    )
    add_url_option(parser)
    args = parser.parse_args()
    urls = contender_urls(parser, args, contenders(args.threads, args.quick))
    if not MODEL_DIR.exists():
        raise SystemExit(
            f"{MODEL_DIR} missing: run python snippets/servable_model/gguf_to_safetensors.py"
        )
    import transformers

    torch.set_num_threads(args.threads)
    repeats, n = (1, 4) if args.quick else (args.repeats, 16)
    bodies = workloads.chat_bodies(n, longest=4 if args.quick else 256)
    work = Path(tempfile.mkdtemp())
    result = {
        "provenance": provenance([Path(__file__), SERVER, LOADGEN]),
        "model": workloads.CHAT_MODEL,
        "dtype": "bfloat16",
        "threads": args.threads,
        "quick": args.quick,
        "repeats": repeats,
        "requests_per_level": n,
        **machine(),
        "transformers": transformers.__version__,
        "workload": "streaming chat, max_tokens cycling 16-256, per-request temperature/top_p/seed",
        "bare_prefill_ms": bare_prefill_ms(bodies[0]["messages"]),
        "runs": [],
        "startup_s": {},
        "peak_memory_mb": {},
    }
    for repeat in range(repeats):
        for batch_size in (8,):
            label = f"{batch_size} client" + ("s" if batch_size > 1 else "")
            result["runs"].append(
                {
                    "mode": "static batching",
                    "load": label,
                    "repeat": repeat,
                    **static_batching(bodies, batch_size),
                }
            )
        for mode, (command, model, closed, rates) in contenders(args.threads, args.quick).items():
            workload = workloads.write([{**b, "model": model} for b in bodies], work / "chat.json")
            port = free_port()
            with contender(
                mode, urls, command + ["--port", str(port)], port, timeout=600
            ) as server:
                result["startup_s"][mode] = round(server.startup_s, 1)
                for concurrency in closed:
                    label = f"{concurrency} client" + ("s" if concurrency > 1 else "")
                    row = load(
                        server.url,
                        "/v1/chat/completions",
                        workload,
                        concurrency=concurrency,
                        max_requests=n,
                        max_seconds=1800,
                    )
                    result["runs"].append({"mode": mode, "load": label, "repeat": repeat, **row})
                    print(json.dumps(result["runs"][-1]), flush=True)
                for rate in rates:
                    row = load(
                        server.url,
                        "/v1/chat/completions",
                        workload,
                        rate=rate,
                        max_requests=n,
                        max_seconds=1800,
                        warmup=0,
                    )
                    result["runs"].append(
                        {"mode": mode, "load": f"Poisson {rate:g} req/s", "repeat": repeat, **row}
                    )
                result["peak_memory_mb"][mode] = server.peak_memory_mb()
    summarise(result)
    publish("llm_server", result, markdown_table(result), args.out_dir, plot, args.plot)


if __name__ == "__main__":
    main()
