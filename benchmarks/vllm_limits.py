"""vLLM at its limits, run for real: a KV cache too small for `--max-model-len`, more requests
than `--max-num-seqs`, and SIGTERM in the middle of a stream.

What vLLM itself says and does in each case goes to results/vllm_limits.json, beside the fix the
planner computes; tests/backends/test_vllm_operations.py checks the same behaviours on the suite's
running vLLM.

    python benchmarks/vllm_limits.py    # starts vLLM-CPU twice, writes results/vllm_limits.json|md
    python benchmarks/vllm_limits.py --quick --url vLLM=URL   # queueing on a running vLLM started
                                        # with --max-num-seqs 4; no SIGTERM (not its server)
"""

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from vllm_cpu import REPO, catalogue_command, command_argv, vllm_env

sys.path.insert(0, str(REPO / "snippets" / "planning"))
import compute  # the planner's memory arithmetic

TOO_SMALL_BYTES = 10_000_000  # about 10 MB of KV cache: a few hundred tokens in float32
MODEL = "SmolLM2-135M-Instruct"


def too_small_start(folder: Path, max_model_len: int = 2048) -> dict:
    """Start vLLM with a KV cache too small for one sequence of `max_model_len`; its error line
    beside what the planner says the space holds and what one such sequence needs."""
    argv = command_argv(
        catalogue_command(),
        folder,
        "--enforce-eager",
        "--dtype",
        "float32",
        "--kv-cache-memory-bytes",
        str(TOO_SMALL_BYTES),
        "--max-model-len",
        str(max_model_len),
    )
    started = time.perf_counter()
    with subprocess.Popen(
        argv,
        env=vllm_env(None),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its engine process too is stopped if it hangs
    ) as run:
        try:
            output, _ = run.communicate(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
    said = re.search(r"To serve at least one request.*", output)
    config = json.loads((folder / "config.json").read_text())
    return {
        "exit_code": run.returncode,
        "seconds_to_fail": round(time.perf_counter() - started, 1),
        "vllm_says": said.group(0).strip() if said else None,
        "kv_cache_bytes": TOO_SMALL_BYTES,
        "planner_tokens_that_fit": compute.kv_cache_tokens(config, TOO_SMALL_BYTES, "float32"),
        "planner_bytes_needed": round(
            compute.kv_bytes_per_sequence(config, max_model_len, "float32")
        ),
        "max_model_len": max_model_len,
    }


def metric(url: str, name: str) -> float:
    """The sum over labels of one series in a Prometheus scrape of `url`."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def time_to_first_token(url: str, tokens: int, out: list, index: int) -> None:
    """One streamed request of exactly `tokens` tokens; its TTFT in seconds into out[index]."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Count to one hundred. ({index})"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    sent = time.perf_counter()
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=300) as r:
        for line in r.iter_lines():
            if out[index] or not line.startswith(b"data: {"):
                continue
            choices = json.loads(line[len(b"data: ") :])["choices"]
            if choices and choices[0]["delta"].get("content"):  # the first token, not the role
                out[index] = time.perf_counter() - sent


def queueing(url: str, max_num_seqs: int, waves: int = 3, tokens: int = 48) -> dict:
    """`waves` x `max_num_seqs` requests at once: the first wave runs, the rest wait in vLLM's
    queue, which its own histogram of queue time and the time to first token show."""
    before = {m: metric(url, m) for m in QUEUE_SERIES}
    ttfts = [0.0] * (waves * max_num_seqs)
    threads = [
        threading.Thread(target=time_to_first_token, args=(url, tokens, ttfts, i))
        for i in range(len(ttfts))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 10  # vLLM records a request's stats just after its last chunk
    while (count := metric(url, QUEUE_SERIES[1]) - before[QUEUE_SERIES[1]]) < len(ttfts):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    queued = metric(url, QUEUE_SERIES[0]) - before[QUEUE_SERIES[0]]
    ordered = sorted(ttfts)
    return {
        "requests": len(ttfts),
        "max_num_seqs": max_num_seqs,
        "ttft_fastest_wave_s": round(ordered[max_num_seqs - 1], 2),
        "ttft_slowest_s": round(ordered[-1], 2),
        "queue_time_mean_s": round(queued / count, 2) if count else None,
        "queue_time_count": count,
    }


QUEUE_SERIES = ("vllm:request_queue_time_seconds_sum", "vllm:request_queue_time_seconds_count")


def drain_on_sigterm(url: str, process: subprocess.Popen, tokens: int = 96) -> dict:
    """Stream one long answer, send the server SIGTERM after its first tokens, and read on: with
    `--shutdown-timeout` vLLM finishes requests in flight before it exits."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    finish, usage, signalled = None, None, False
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=300) as r:
        for line in r.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[len(b"data: ") :])
            if not signalled:
                process.send_signal(signal.SIGTERM)
                signalled = True
            if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                finish = chunk["choices"][0]["finish_reason"]
            usage = chunk.get("usage") or usage
    exit_code = process.wait(timeout=120)
    return {
        "finish_reason": finish,
        "completion_tokens": usage["completion_tokens"] if usage else None,
        "asked": tokens,
        "exit_code": exit_code,
    }


def markdown_table(result: dict) -> str:
    small, queue, drain = result["too_small"], result["queueing"], result["sigterm"]
    return (
        "\n".join(
            [
                "| case | what vLLM did | the planner's figure |",
                "|---|---|---|",
                (
                    f"| KV cache of {small['kv_cache_bytes']:,} bytes, `--max-model-len "
                    f"{small['max_model_len']}` | exit {small['exit_code']} after "
                    f'{small["seconds_to_fail"]:g} s: "{small["vllm_says"]}" | holds '
                    f"{small['planner_tokens_that_fit']:,} tokens; one sequence of "
                    f"{small['max_model_len']} needs {small['planner_bytes_needed']:,} bytes |"
                ),
                (
                    f"| {queue['requests']} requests at once, `--max-num-seqs {queue['max_num_seqs']}` | "
                    f"time to first token {queue['ttft_fastest_wave_s']:g} s for the first "
                    f"{queue['max_num_seqs']}, up to {queue['ttft_slowest_s']:g} s for the last; "
                    f"`vllm:request_queue_time_seconds` mean {queue['queue_time_mean_s']:g} s | queueing is "
                    "what the plan's TTFT model adds to prefill |"
                ),
                sigterm_row(drain, result["shutdown_timeout"]),
                "",
                (
                    f"vLLM-CPU ({result['vllm']}), SmolLM2-135M-Instruct in float32, eager, "
                    f"{result['cpu_cores']} cores, {result['date']}."
                ),
            ]
        )
        + "\n"
    )


def sigterm_row(drain: dict | None, timeout: int) -> str:
    case = f"| SIGTERM after the first token, `--shutdown-timeout {timeout}` | "
    if drain is None:
        return case + "not run: the server was not started by this run | - |"
    return case + (
        f"the stream finished: {drain['completion_tokens']} of {drain['asked']} tokens, "
        f"finish_reason `{drain['finish_reason']}`, exit {drain['exit_code']} | the bundle "
        "sets the grace period above the timeout |"
    )


SHUTDOWN_TIMEOUT = 30
MAX_NUM_SEQS = 4


def main() -> None:
    from harness import Server, add_url_option, contender_urls, free_port, machine
    from provenance import provenance
    from publish import publish
    from vllm_cpu import vllm_version

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two waves; with --url, no SIGTERM")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    add_url_option(parser)
    args = parser.parse_args()
    urls = contender_urls(parser, args, ["vLLM"])
    folder = REPO / "models" / "smollm2-135m-instruct"
    started = provenance([Path(__file__)])
    result = {"provenance": started, **machine(), "quick": args.quick, "vllm": vllm_version()}
    result["too_small"] = too_small_start(folder)
    waves, tokens = (2, 32) if args.quick else (3, 48)
    if "vLLM" in urls:
        result["queueing"] = queueing(urls["vLLM"], MAX_NUM_SEQS, waves, tokens)
        result["sigterm"] = None
    else:
        port = free_port()
        flags = ["--enforce-eager", "--dtype", "float32", "--max-num-seqs", str(MAX_NUM_SEQS)]
        flags += ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--port", str(port)]
        command = command_argv(catalogue_command(), folder, *flags)
        with Server(command, port, env=vllm_env(1)) as server:
            result["queueing"] = queueing(server.url, MAX_NUM_SEQS, waves, tokens)
            result["sigterm"] = drain_on_sigterm(server.url, server.proc)
    result["shutdown_timeout"] = SHUTDOWN_TIMEOUT
    publish("vllm_limits", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
