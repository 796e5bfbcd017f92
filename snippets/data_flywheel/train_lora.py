"""Train a LoRA adapter that makes SmolLM2-135M-Instruct answer a support request with its intent.

The flywheel's labelled requests (support_requests.jsonl) become chat examples: the user turn
asks for the intent of one request, the assistant turn is its label alone (one of ten). Only the
assistant turn is learned: the prompt's tokens carry no loss. LoRA trains two thin matrices beside
each attention query and value projection (rank 8) and leaves the base weights untouched, so the
adapter is a small file that vLLM serves beside the base model (`--enable-lora --lora-modules
intent=<folder>`).

    python snippets/data_flywheel/train_lora.py --model models/smollm2-135m-instruct \\
        --out snippets/data_flywheel/adapters/intent-lora
    python snippets/data_flywheel/train_lora.py --quick --out /tmp/lora    # two steps: it runs

The output folder holds what vLLM and peft load (adapter_config.json, adapter_model.safetensors)
and SHA256SUMS (`sha256sum -c SHA256SUMS` checks a copy). `--publish` also measures intent
accuracy on the held-out split, base model against adapter, into benchmarks/results/lora.json.
On a machine whose cores are busy with other work, `--threads 1` trains faster than two threads
that keep waiting for each other.
"""

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
DATA = HERE / "support_requests.jsonl"
BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # recorded in the adapter, not a path here
ANSWER_TOKENS = 8  # the longest label is 5 tokens, then <|im_end|>
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def load_split(split: str, path: Path = DATA) -> list[dict]:
    """The labelled requests of one split (`train` or `heldout`), in file order."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [row for row in rows if row["split"] == split]


def question(text: str) -> str:
    """The user turn. It does not list the labels: the base model answers with a sentence either
    way (the page shows its answers), and a short prompt trains twice as fast."""
    return f"Intent of this support request: {text}"


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """The prompt as a server builds it: the model's chat template, ready for the answer."""
    messages = [{"role": "user", "content": question(text)}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]


def training_example(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """(input ids, target ids): the prompt then the label and end of turn; the targets are -100
    (no loss) over the prompt, so the model learns the answer, not the question."""
    prompt = chat_prompt_ids(tokenizer, row["text"])
    answer = tokenizer(row["intent"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return prompt + answer, [-100] * len(prompt) + answer


def padded_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-padded tensors; padding is masked out of attention and of the loss."""
    width = max(len(ids) for ids, _ in examples)
    ids = [ids + [pad_id] * (width - len(ids)) for ids, _ in examples]
    targets = [t + [-100] * (width - len(t)) for _, t in examples]
    mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in examples]
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(targets),
        "attention_mask": torch.tensor(mask),
    }


def batches(examples: list, batch_size: int, rng: random.Random):
    """Batches forever, the examples shuffled afresh for each pass over them."""
    while True:
        rng.shuffle(examples)
        for start in range(0, len(examples), batch_size):
            yield examples[start : start + batch_size]


def train(
    model_dir: Path,
    rows: list[dict],
    epochs: float,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> tuple[PeftModel, list[float]]:
    """LoRA (rank 8 on q_proj and v_proj) trained with AdamW on `rows`, shuffled by `seed`;
    returns the adapted model and the loss of every step."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=learning_rate
    )
    examples = [training_example(tokenizer, row) for row in rows]
    steps = max(1, round(epochs * len(examples) / batch_size))
    losses = []
    model.train()
    for _, batch in zip(range(steps), batches(examples, batch_size, random.Random(seed))):
        loss = model(**padded_batch(batch, tokenizer.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if len(losses) % 10 == 0:
            print(f"step {len(losses)}/{steps}: loss {loss.item():.3f}", flush=True)
    return model.eval(), losses


def save_adapter(model: PeftModel, out: Path) -> dict[str, str]:
    """Write the adapter in the safetensors layout vLLM and peft load, and SHA256SUMS beside it;
    return the hashes. The config names the base model's hub id, not this machine's folder."""
    model.peft_config["default"].base_model_name_or_path = BASE_MODEL_ID
    # No embedding layers are trained: say so, or peft asks the hub for the base model's config.
    model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    (out / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    hashes = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ADAPTER_FILES}
    sums = "".join(f"{digest}  {name}\n" for name, digest in hashes.items())
    (out / "SHA256SUMS").write_text(sums)
    return hashes


@torch.inference_mode()
def predictions(model, tokenizer, rows: list[dict], batch_size=10) -> list[str]:
    """The model's greedy answers, `batch_size` requests at a time (left-padded: every answer
    starts in the same column), in the order of `rows`."""
    answers = []
    for start in range(0, len(rows), batch_size):
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": question(row["text"])}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for row in rows[start : start + batch_size]
        ]
        batch = tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        out = model.generate(**batch, max_new_tokens=ANSWER_TOKENS, do_sample=False)
        width = batch["input_ids"].shape[1]
        answers += [tokenizer.decode(ids[width:], skip_special_tokens=True).strip() for ids in out]
    return answers


def accuracy(answers: list[str], rows: list[dict]) -> float:
    """Share of answers that are exactly the request's intent label."""
    return sum(a == row["intent"] for a, row in zip(answers, rows, strict=True)) / len(rows)


def merged_adapter(model_dir: Path, adapter_dir: Path):
    """The base model with a saved adapter merged into its weights, in float32: what peft serves
    when one adapter is all a process needs, and the reference vLLM's served adapter is held to."""
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()


def publish(model_dir: Path, adapter_dir: Path, run: dict) -> None:
    """Held-out accuracy of the base model and of the saved adapter, with every answer, written
    with its provenance to benchmarks/results/lora.json and the table to lora.md."""
    from publish import publish as write_result  # benchmarks/, put on sys.path by main()

    heldout = load_split("heldout")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    base_answers = predictions(base, tokenizer, heldout)
    adapter_answers = predictions(merged_adapter(model_dir, adapter_dir), tokenizer, heldout)
    result = {
        **run,
        "heldout_examples": len(heldout),
        "base_accuracy": accuracy(base_answers, heldout),
        "adapter_accuracy": accuracy(adapter_answers, heldout),
        "changed_answers": sum(a != b for a, b in zip(base_answers, adapter_answers, strict=True))
        / len(heldout),
        "answers": [
            {"text": row["text"], "intent": row["intent"], "base": b, "adapter": a}
            for row, b, a in zip(heldout, base_answers, adapter_answers, strict=True)
        ],
    }
    table = (
        "| model | intent accuracy on the held-out split |\n|---|---:|\n"
        f"| SmolLM2-135M-Instruct | {result['base_accuracy']:.1%} |\n"
        f"| with the intent LoRA adapter | {result['adapter_accuracy']:.1%} |\n"
    )
    write_result("lora", result, table, HERE.parents[1] / "benchmarks" / "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--out", type=Path, required=True, help="the adapter folder to write")
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over the train split")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="8 examples, 2 steps: it runs")
    parser.add_argument(
        "--publish", action="store_true", help="also measure held-out accuracy (lora.json)"
    )
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        parser.error(f"--model: no model folder at {args.model} (run gguf_to_safetensors.py)")
    if args.quick and args.publish:
        parser.error("--quick trains too little to publish")
    if args.epochs <= 0 or args.threads < 1:
        parser.error("--epochs must be > 0 and --threads >= 1")
    torch.set_num_threads(args.threads)
    if args.publish:
        sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
        from provenance import provenance

        started = provenance([Path(__file__), DATA])
    rows = load_split("train")
    rows, epochs = (rows[:8], 1.0) if args.quick else (rows, args.epochs)
    began = time.perf_counter()
    model, losses = train(args.model, rows, epochs, batch_size=4 if args.quick else 8)
    seconds = time.perf_counter() - began
    hashes = save_adapter(model, args.out)
    print(
        f"trained {len(losses)} steps in {seconds:.0f} s (loss {losses[0]:.2f} -> "
        f"{losses[-1]:.2f}); adapter in {args.out}, sha256 {hashes['adapter_model.safetensors']}"
    )
    if args.publish:
        run = {
            "provenance": started,
            "train_examples": len(rows),
            "epochs": epochs,
            "steps": len(losses),
            "threads": args.threads,
            "train_seconds": round(seconds, 1),
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "adapter_sha256": hashes,
        }
        publish(args.model, args.out, run)


if __name__ == "__main__":
    main()
