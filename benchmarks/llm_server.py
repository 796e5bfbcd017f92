"""Measure why continuous batching matters for LLM serving, four ways, in one run.

Modes, all on SmolLM2-135M-Instruct in bfloat16 with the same thread count and prompts:
  one at a time        this guide's server with --max-running 1 (batching off);
  static batching      transformers `generate` on padded batches, in process (no HTTP at all);
  continuous batching  this guide's server with --max-running 16;
  transformers serve   the off-the-shelf peer, in its default mode.
Workload: chat requests whose max_tokens cycle through 16..256, a closed-loop concurrency sweep,
then Poisson arrivals at several rates. Per mode: requests/s, output tokens/s, TTFT and TPOT
p50/p95, end-to-end p50/p95.

    python benchmarks/llm_server.py           # full run: JSON, Markdown table and plots
    python benchmarks/llm_server.py --quick   # a smoke test

The load generator reads server-sent events over raw asyncio streams, so that the client's own
CPU use stays small on a two-core machine.
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
import torch
from publish import publish
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "snippets" / "backends" / "llm_server.py"
MODEL_DIR = REPO / "models" / "smollm2-135m-instruct"
OUTPUT_LENGTHS = [16, 256, 32, 128, 64, 256, 16, 128]


def workload(n: int, longest: int = 256) -> list[tuple[str, int]]:
    topics = ["rivers", "servers", "bread", "the moon", "chess", "trains", "music", "glaciers"]
    return [(f"Write a detailed essay about {topics[i % len(topics)]}.",
             min(OUTPUT_LENGTHS[i % len(OUTPUT_LENGTHS)], longest)) for i in range(n)]


def start(command: list[str], port: int, ready_path: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"{command[:3]} did not become ready")


async def stream_one(port: int, model: str, prompt: str, max_tokens: int) -> dict:
    """One streaming chat request over a raw connection; times the first token and the end."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode()
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    first, tokens, buffer = None, 0, b""
    while await reader.readline() not in (b"\r\n", b""):
        pass  # response headers; the body is chunked
    while size := int((await reader.readline()).strip() or b"0", 16):
        buffer += (await reader.readexactly(size + 2))[:-2]
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: {"):
                continue
            chunk = json.loads(event[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    writer.close()
    done = time.perf_counter()
    first = first or done
    return {"ttft": first - started, "e2e": done - started, "tokens": tokens,
            "tpot": (done - first) / max(tokens - 1, 1)}


async def closed_loop(port: int, model: str, jobs: list, concurrency: int) -> tuple[list, float]:
    pending = list(jobs)
    results: list[dict] = []

    async def client():
        while pending:
            prompt, max_tokens = pending.pop(0)
            results.append(await stream_one(port, model, prompt, max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results, time.perf_counter() - started


async def poisson(port: int, model: str, jobs: list, rate: float, seed: int = 0) -> tuple[list, float]:
    gaps = np.random.default_rng(seed).exponential(1 / rate, len(jobs))
    started = time.perf_counter()
    tasks = []
    for gap, (prompt, max_tokens) in zip(gaps, jobs):
        await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(stream_one(port, model, prompt, max_tokens)))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - started


def static_batching(jobs: list, batch_size: int) -> tuple[list, float]:
    """generate() on padded batches: `batch_size` closed-loop clients send together, wait for the whole
    batch (it runs until its longest request is done), then send again."""
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

    results, started = [], time.perf_counter()
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i : i + batch_size]
        sent = time.perf_counter()  # closed loop: these clients sent their requests when the last batch returned
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p, _ in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True)
        clock = FirstTokenClock()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max(m for _, m in batch), do_sample=False, streamer=clock)
        done = time.perf_counter()
        for row, (_, max_tokens) in enumerate(batch):
            new = out[row, inputs["input_ids"].shape[1]:].tolist()[:max_tokens]
            eos = [k for k, t in enumerate(new) if t == tokenizer.eos_token_id]
            tokens = eos[0] + 1 if eos else len(new)  # what this request really needed
            results.append({"ttft": clock.first - sent, "e2e": done - sent, "tokens": tokens,
                            "tpot": (done - clock.first) / max(tokens - 1, 1)})
    return results, time.perf_counter() - started


def summarise(results: list, elapsed: float) -> dict:
    def pct(key, q):
        return round(float(np.percentile([r[key] for r in results], q)), 3)

    return {"requests": len(results), "seconds": round(elapsed, 1),
            "requests_per_s": round(len(results) / elapsed, 3),
            "output_tokens_per_s": round(sum(r["tokens"] for r in results) / elapsed, 1),
            "ttft_p50_s": pct("ttft", 50), "ttft_p95_s": pct("ttft", 95),
            "tpot_p50_s": pct("tpot", 50), "tpot_p95_s": pct("tpot", 95),
            "e2e_p50_s": pct("e2e", 50), "e2e_p95_s": pct("e2e", 95)}


def bare_prefill_seconds(prompt: str) -> float:
    """The model's own prefill time for the benchmark's first prompt (one forward pass, next-token
    logits only): the floor under TTFT."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.bfloat16).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    times = []
    with torch.inference_mode():
        for _ in range(7):
            started = time.perf_counter()
            model(**ids, logits_to_keep=1)  # next-token logits only, as servers and generate() compute them
            times.append(time.perf_counter() - started)
    return float(np.median(times[2:]))


def markdown_table(result: dict) -> str:
    head = ("| mode | load | req/s | output tok/s | TTFT p50 / p95 s | TPOT p50 / p95 s | end-to-end p50 / p95 s |\n"
            "|---|---|---:|---:|---:|---:|---:|")
    rows = [f"| {r['mode']} | {r['load']} | {r['requests_per_s']} | {r['output_tokens_per_s']} | "
            f"{r['ttft_p50_s']} / {r['ttft_p95_s']} | {r['tpot_p50_s']} / {r['tpot_p95_s']} | "
            f"{r['e2e_p50_s']} / {r['e2e_p95_s']} |" for r in result["runs"]]
    notes = [f"Bare prefill of the first prompt: {result['bare_prefill_s'] * 1000:.0f} ms. "
             f"{result['threads']} torch threads, {result['cpu_cores']} cores, {result['machine']}, "
             f"bfloat16, {result['requests_per_level']} requests per level.", ""]
    notes += [f"- {name}: {c['value']} ({'met' if c['met'] else 'NOT met'}, target {c['target']})"
              for name, c in result["targets"].items()]
    return "\n".join([head, *rows, "", *notes]) + "\n"


def targets(result: dict) -> dict:
    run = {(r["mode"], r["load"]): r for r in result["runs"]}
    cb8, one, static8 = run[("continuous batching", "8 clients")], run[("one at a time", "1 client")], \
        run[("static batching", "8 clients")]
    peer8 = run[("transformers serve", "8 clients")]
    ttft1 = run[("continuous batching", "1 client")]["ttft_p50_s"]
    speedup = cb8["output_tokens_per_s"] / one["output_tokens_per_s"]
    return {
        "continuous batching tok/s at 8 clients vs one at a time": {
            "value": f"{speedup:.1f}x", "target": ">= 4x", "met": bool(speedup >= 4)},
        "continuous vs static batching tok/s at 8 clients": {
            "value": f"{cb8['output_tokens_per_s']} vs {static8['output_tokens_per_s']}", "target": ">=",
            "met": bool(cb8["output_tokens_per_s"] >= static8["output_tokens_per_s"])},
        "TTFT p50 at 1 client vs bare prefill": {
            "value": f"{ttft1 / result['bare_prefill_s']:.2f}x", "target": "<= 1.2x",
            "met": bool(ttft1 <= 1.2 * result["bare_prefill_s"])},
        "continuous batching vs transformers serve tok/s at 8 clients": {
            "value": f"{cb8['output_tokens_per_s']} vs {peer8['output_tokens_per_s']}", "target": ">=",
            "met": bool(cb8["output_tokens_per_s"] >= peer8["output_tokens_per_s"])},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [r for r in result["runs"] if r["load"].endswith(("client", "clients"))]
    modes = list(dict.fromkeys(r["mode"] for r in closed))
    fig, (tok_ax, ttft_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in modes:
        rows = [r for r in closed if r["mode"] == mode]
        clients = [int(r["load"].split()[0]) for r in rows]
        tok_ax.plot(clients, [r["output_tokens_per_s"] for r in rows], "o-", label=mode)
        ttft_ax.plot(clients, [r["ttft_p50_s"] for r in rows], "o-", label=mode)
    tok_ax.set_ylabel("output tokens/s")
    ttft_ax.set_ylabel("TTFT p50 (s)")
    ttft_ax.set_yscale("log")
    for ax in (tok_ax, ttft_ax):
        ax.set_xlabel("concurrent clients")
        ax.legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M-Instruct, bfloat16, {result['threads']} torch threads, {result['cpu_cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8761)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "backends" / "img" / "llm_server.png")
    args = parser.parse_args()
    if not MODEL_DIR.exists():
        raise SystemExit(f"{MODEL_DIR} missing: run python snippets/servable_model/gguf_to_safetensors.py")
    torch.set_num_threads(args.threads)
    n = 4 if args.quick else 16
    jobs = workload(n, longest=24 if args.quick else 256)
    concurrencies = [1, 8] if args.quick else [1, 4, 8, 16]
    rates = [1.0] if args.quick else [0.5, 1.0, 2.0]
    ours = [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(args.port), "--threads", str(args.threads),
            "--model", str(MODEL_DIR), "--dtype", "bfloat16"]
    servers = {
        "one at a time": (ours + ["--max-running", "1"], "SmolLM2-135M-Instruct", "/health", [1, 8], []),
        "continuous batching": (ours + ["--max-running", "16"], "SmolLM2-135M-Instruct", "/health",
                                concurrencies, rates),
        "transformers serve": ([str(Path(sys.executable).parent / "transformers"), "serve", str(MODEL_DIR),
                                "--host", "127.0.0.1", "--port", str(args.port), "--dtype", "bfloat16"],
                               str(MODEL_DIR), "/health", [1, 8], rates[-1:]),
    }
    levels = sum(len(c) + len(r) for _, _, _, c, r in servers.values()) + len([1, 8]) + 1
    result = {"model": "SmolLM2-135M-Instruct", "dtype": "bfloat16", "threads": args.threads,
              "cpu_cores": len(os.sched_getaffinity(0)), "machine": platform.machine(), "quick": args.quick,
              "torch": torch.__version__, "requests_per_level": n, "output_lengths": OUTPUT_LENGTHS,
              "date": time.strftime("%Y-%m-%d"), "runs": []}
    with tqdm(total=levels, desc="LLM benchmark") as bar:
        result["bare_prefill_s"] = round(bare_prefill_seconds(jobs[0][0]), 4)
        bar.update()
        for batch_size in [1, 8]:
            bar.set_postfix_str(f"static batching, {batch_size}")
            rows, elapsed = static_batching(jobs, batch_size)
            label = f"{batch_size} client" + ("s" if batch_size > 1 else "")
            result["runs"].append({"mode": "static batching", "load": label, **summarise(rows, elapsed)})
            bar.update()
        for mode, (command, model, ready, sweep, poisson_rates) in servers.items():
            proc = start(command, args.port, ready)
            try:
                asyncio.run(stream_one(args.port, model, "Hi", 4))  # warm-up
                for concurrency in sweep:
                    bar.set_postfix_str(f"{mode}, {concurrency} clients")
                    rows, elapsed = asyncio.run(closed_loop(args.port, model, jobs, concurrency))
                    label = f"{concurrency} client" + ("s" if concurrency > 1 else "")
                    result["runs"].append({"mode": mode, "load": label, **summarise(rows, elapsed)})
                    bar.update()
                for rate in poisson_rates:
                    bar.set_postfix_str(f"{mode}, Poisson {rate}/s")
                    rows, elapsed = asyncio.run(poisson(args.port, model, jobs, rate))
                    result["runs"].append({"mode": mode, "load": f"Poisson {rate} req/s", **summarise(rows, elapsed)})
                    bar.update()
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
    result["targets"] = targets(result)
    publish("llm_server", result, markdown_table(result), args.out_dir, plot, args.plot)


if __name__ == "__main__":
    main()
