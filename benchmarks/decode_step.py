"""Where an LLM server's time goes: one decode step of the bare model, called in process.

The same SmolLM2 weights this guide's LLM server loads (bfloat16, two torch threads), a batch of
B sequences with 128-token prompts, then 64 greedy decode steps through transformers' own cache;
the median milliseconds per step at B = 1 and 8. Beside a server's time per output token at the
same number of streams (results/peers.json), the difference is what the server adds around the
model; a faster engine at the same step count is faster inside the step.

    python benchmarks/decode_step.py            # results/decode_step.json and .md
    python benchmarks/decode_step.py --quick    # 8 steps, to check the script
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from harness import REPO, machine
from provenance import provenance
from publish import publish
from transformers import AutoModelForCausalLM

MODEL_DIR = REPO / "models" / "smollm2-135m-instruct"
PROMPT_TOKENS = 128
BATCHES = [1, 8]


def step_times(model, batch: int, steps: int) -> list[float]:
    """Milliseconds of each decode step for `batch` sequences after a prompt prefill."""
    prompt = torch.randint(100, 20000, (batch, PROMPT_TOKENS))
    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            times.append((time.perf_counter() - started) * 1000)
    return times


def markdown_table(result: dict) -> str:
    lines = ["| sequences in the batch | ms per decode step (median) | tokens/s it allows |"]
    lines.append("|---:|---:|---:|")
    for row in result["rows"]:
        lines.append(f"| {row['batch']} | {row['step_ms']:.1f} | {row['tokens_per_s']:.0f} |")
    settings = (
        f"SmolLM2-135M-Instruct in {result['dtype']}, {result['threads']} torch threads, "
        f"{PROMPT_TOKENS}-token prompts, {result['steps']} greedy steps through transformers' "
        "cache, called in process (no server)."
    )
    lines += ["", settings]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 steps")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    steps = 8 if args.quick else 64
    started = provenance([Path(__file__)], ("transformers", "torch"))
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.bfloat16).eval()
    step_times(model, 1, 4)  # warm-up: allocator and kernels
    rows = []
    for batch in BATCHES:
        step_ms = statistics.median(step_times(model, batch, steps))
        rows.append({"batch": batch, "step_ms": round(step_ms, 2)})
        rows[-1]["tokens_per_s"] = round(batch * 1000 / step_ms, 1)
        print(rows[-1], flush=True)
    result = {
        "provenance": started,
        **machine(),
        "quick": args.quick,
        "dtype": "bfloat16",
        "threads": 2,
        "steps": steps,
        "rows": rows,
    }
    publish("decode_step", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
