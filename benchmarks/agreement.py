"""Do this guide's LLM server, vLLM and transformers give the same greedy answers?

Ten fixed chat prompts, 16 tokens each, every engine in float32. transformers' `generate` is the
reference; where an engine's text departs from it, the reference's logits at the first differing
step say whether that step was a near-tie (top-2 gap below 1e-3), which float rounding may break
either way, or a bug.

    python benchmarks/agreement.py    # starts both servers, writes results/agreement.json and .md
    python benchmarks/agreement.py --quick --url "this guide's server=URL" --url "vLLM=URL"

The suite runs the second form on its own float32 servers and holds both to the rule
(tests/benchmarks/test_agreement.py).
"""

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

TOKENS = 16
NEAR_TIE = 1e-3
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Explain photosynthesis in one sentence.",
    "Write a haiku about the sea.",
    "What does a compiler do?",
    "Give me a tip for sleeping better.",
    "Why is the sky blue?",
    "List the planets of the solar system.",
    "How do I boil an egg?",
    "What is machine learning?",
]


def served_text(
    url: str, prompt: str, model: str = "SmolLM2-135M-Instruct", tokens: int = TOKENS
) -> str:
    """An engine's greedy answer to one prompt over its OpenAI chat route; `model` may name a
    LoRA adapter the engine serves beside the base model."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """The prompt as the servers see it: the model's chat template, ready for the answer."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


@torch.inference_mode()
def reference(tokenizer, model, prompt: str) -> list[int]:
    """transformers' own greedy continuation: the answer's token ids, up to TOKENS or EOS."""
    ids = prompt_ids(tokenizer, prompt)
    out = model.generate(ids, max_new_tokens=TOKENS, do_sample=False)
    answer = out[0, ids.shape[1] :].tolist()
    return [t for t in answer if t not in tokenizer.all_special_ids]


@torch.inference_mode()
def top2_gap(tokenizer, model, prompt: str, answer_so_far: list[int]) -> float:
    """Logit of the best next token minus the second best, after the prompt and `answer_so_far`."""
    ids = torch.cat([prompt_ids(tokenizer, prompt), torch.tensor([answer_so_far])], dim=1)
    best, second = model(ids).logits[0, -1].float().topk(2).values.tolist()
    return best - second


def compare(tokenizer, model, prompt: str, reference_ids: list[int], text: str) -> dict:
    """One engine's answer against the reference: identical, or where it departs and how close
    the reference's top two candidates were at that step."""
    if tokenizer.decode(reference_ids) == text:
        return {"identical": True}
    step = 0
    while step < len(reference_ids) and text.startswith(
        tokenizer.decode(reference_ids[: step + 1])
    ):
        step += 1
    gap = top2_gap(tokenizer, model, prompt, reference_ids[:step])
    return {"identical": False, "step": step, "top2_gap": gap, "text": text}


def agreement(tokenizer, model, engines: dict[str, str]) -> list[dict]:
    """For every prompt: the reference answer and each engine's comparison with it. The engines
    answer while the reference is computed, one request each at a time, so every engine decodes
    the prompt alone, as it would a reader's single request."""
    rows = []
    with ThreadPoolExecutor(len(engines)) as pool:
        for prompt in PROMPTS:
            answers = {name: pool.submit(served_text, url, prompt) for name, url in engines.items()}
            ids = reference(tokenizer, model, prompt)
            row = {"prompt": prompt, "reference": tokenizer.decode(ids)}
            for name, answer in answers.items():
                row[name] = compare(tokenizer, model, prompt, ids, answer.result())
            rows.append(row)
    return rows


def verdict(rows: list[dict], engine: str) -> dict:
    """The rule: at least 9 of 10 identical, and every departure a near-tie."""
    departures = [row[engine] for row in rows if not row[engine]["identical"]]
    return {
        "identical": len(rows) - len(departures),
        "of": len(rows),
        "largest_gap_at_departure": max((d["top2_gap"] for d in departures), default=None),
        "holds": len(departures) <= len(rows) // 10
        and all(d["top2_gap"] < NEAR_TIE for d in departures),
    }


def markdown_table(rows: list[dict], engines: list[str]) -> str:
    """One line per prompt: the reference answer, then each engine's match or departure."""
    head = "| prompt | transformers (reference) | " + " | ".join(engines) + " |"
    lines = [head, "|---" * (2 + len(engines)) + "|"]
    for row in rows:
        cells = [
            "same"
            if row[e]["identical"]
            else f"departs at token {row[e]['step']} (top-2 gap {row[e]['top2_gap']:.1e})"
            for e in engines
        ]
        answer = row["reference"].replace("\n", " ").replace("|", "\\|")
        lines.append(f"| {row['prompt']} | {answer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from harness import REPO, add_url_option, contender, contender_urls, free_port, machine
    from provenance import provenance
    from publish import publish
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm_cpu import catalogue_command, command_argv, vllm_env, vllm_version

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="with --url: running servers")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the reference")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    add_url_option(parser)
    args = parser.parse_args()
    engines = ["this guide's server", "vLLM"]
    urls = contender_urls(parser, args, engines)
    torch.set_num_threads(args.threads)
    folder = REPO / "models" / "smollm2-135m-instruct"
    server = REPO / "snippets" / "backends" / "llm_server.py"
    started = provenance([Path(__file__), server])
    ours_port, vllm_port = free_port(), free_port()
    ours = [sys.executable, str(server), "--model", str(folder), "--dtype", "float32"]
    ours += ["--port", str(ours_port)]
    vllm = command_argv(catalogue_command(), folder, "--enforce-eager", "--dtype", "float32")
    vllm += ["--port", str(vllm_port)]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with (
        contender(engines[0], urls, ours, ours_port) as a,
        contender(engines[1], urls, vllm, vllm_port, env=vllm_env(1)) as b,
    ):
        rows = agreement(tokenizer, model, {engines[0]: a.url, engines[1]: b.url})
    result = {
        "quick": args.quick,
        "machine": machine(),
        "vllm": vllm_version(),
        "rows": rows,
        "verdicts": {e: verdict(rows, e) for e in engines},
        "provenance": started,
    }
    publish("agreement", result, markdown_table(rows, engines), args.out_dir)


if __name__ == "__main__":
    main()
