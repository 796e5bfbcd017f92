"""Compute needed for a transformer, from its config.json: weights, KV cache, fit, FLOPs, speed bound.

    python snippets/planning/compute.py path/to/config.json --gpu-gib 80 --bandwidth-gb-s 3350

Formulas (decoder-only, Llama / Mistral / Qwen2 layout; BERT-style encoders for weights only):
  weights      = parameters x bytes per parameter
  KV per token = 2 (K and V) x layers x KV heads x head_dim x bytes   (grouped-query attention: KV heads < heads)
  prefill      = 2 x parameters x tokens + layers x tokens^2 x hidden  FLOPs (Kaplan et al. 2020, causal)
  decode bound = memory bandwidth / bytes read per step (all weights + the KV cache of the batch)
"""

import argparse
import json
import math
from pathlib import Path

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}


def shape(config: dict) -> dict:
    """The few numbers every estimate needs, with the defaults transformers uses."""
    heads = config["num_attention_heads"]
    return {
        "hidden": config["hidden_size"], "layers": config["num_hidden_layers"], "heads": heads,
        "kv_heads": config.get("num_key_value_heads", heads),
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "intermediate": config["intermediate_size"], "vocab": config["vocab_size"],
        "tied": config.get("tie_word_embeddings", False), "type": config.get("model_type", "llama"),
    }


def parameter_count(config: dict) -> int:
    """Exact for Llama-style decoders (Qwen2 adds q/k/v biases) and for BERT encoders."""
    s = shape(config)
    h, kv_dim = s["hidden"], s["kv_heads"] * s["head_dim"]
    if s["type"] == "bert":
        attention = 4 * (h * h + h)  # q, k, v, o with biases
        mlp = 2 * h * s["intermediate"] + s["intermediate"] + h
        per_layer = attention + mlp + 4 * h  # two LayerNorms
        embeddings = (s["vocab"] + config["max_position_embeddings"] + config.get("type_vocab_size", 2)) * h + 2 * h
        return embeddings + s["layers"] * per_layer + h * h + h  # + pooler
    attention = h * s["heads"] * s["head_dim"] * 2 + h * kv_dim * 2  # q, o and k, v
    if s["type"] == "qwen2":
        attention += s["heads"] * s["head_dim"] + 2 * kv_dim
    per_layer = attention + 3 * h * s["intermediate"] + 2 * h  # gate, up, down; two RMSNorms
    embeddings = s["vocab"] * h * (1 if s["tied"] else 2)
    return embeddings + s["layers"] * per_layer + h


def kv_bytes_per_token(config: dict, dtype: str = "bfloat16") -> float:
    s = shape(config)
    return 2 * s["layers"] * s["kv_heads"] * s["head_dim"] * BYTES[dtype]


def weight_bytes(config: dict, dtype: str = "bfloat16") -> float:
    return parameter_count(config) * BYTES[dtype]


def sequences_that_fit(config: dict, gpu_bytes: float, tokens_per_sequence: int, dtype: str = "bfloat16",
                       reserve: float = 0.10) -> int:
    """Concurrent sequences whose KV cache fits beside the weights, keeping `reserve` for the runtime."""
    free = gpu_bytes * (1 - reserve) - weight_bytes(config, dtype)
    return max(0, math.floor(free / (kv_bytes_per_token(config, dtype) * tokens_per_sequence)))


def prefill_flops(config: dict, tokens: int) -> float:
    s = shape(config)
    return 2 * parameter_count(config) * tokens + s["layers"] * tokens**2 * s["hidden"]


def decode_tokens_per_second_bound(config: dict, bandwidth_bytes_s: float, batch: int = 1,
                                   context: int = 0, dtype: str = "bfloat16") -> float:
    """Upper bound from memory bandwidth: each step reads all weights once plus every sequence's KV cache."""
    step_bytes = weight_bytes(config, dtype) + batch * context * kv_bytes_per_token(config, dtype)
    return batch * bandwidth_bytes_s / step_bytes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a transformers config.json")
    parser.add_argument("--dtype", choices=list(BYTES), default="bfloat16")
    parser.add_argument("--gpu-gib", type=float, default=80)
    parser.add_argument("--bandwidth-gb-s", type=float, default=3350)
    parser.add_argument("--tokens", type=int, default=2048, help="prompt + output tokens per sequence")
    args = parser.parse_args()
    try:
        cfg = json.loads(args.config.read_text())
        n = parameter_count(cfg)
    except (OSError, json.JSONDecodeError, KeyError) as error:
        parser.exit(2, f"error: cannot read a model config from {args.config}: {error!r}\n")
    print(f"parameters:          {n / 1e9:.3f} B")
    print(f"weights ({args.dtype}):   {weight_bytes(cfg, args.dtype) / 2**30:.2f} GiB")
    print(f"KV cache per token:  {kv_bytes_per_token(cfg, args.dtype) / 2**10:.1f} KiB")
    print(f"sequences that fit:  {sequences_that_fit(cfg, args.gpu_gib * 2**30, args.tokens, args.dtype)}"
          f" x {args.tokens} tokens on {args.gpu_gib:g} GiB")
    print(f"prefill of {args.tokens} tokens: {prefill_flops(cfg, args.tokens) / 1e12:.2f} TFLOP")
    print(f"decode bound, batch 1: {decode_tokens_per_second_bound(cfg, args.bandwidth_gb_s * 1e9, 1, args.tokens, args.dtype):.0f} tokens/s")
