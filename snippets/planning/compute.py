"""Compute needed for a transformer, from its config.json: weights, KV cache, fit, FLOPs, speed bound,
and how a tensor-parallel group splits them.

    python snippets/planning/compute.py path/to/config.json --dtype fp8 --kv-dtype fp8 --tp 4

Formulas (decoder-only, Llama / Mistral / Qwen2 layout; BERT-style encoders for weights only):
  weights      = parameters x bytes per parameter; for fp8 / int8 / int4 only the Linear layers are
                 quantized (plus one 16-bit scale and a 4-bit zero point per group of 128 weights for
                 int4), embeddings, output head and norms stay in 16 bits, as in published checkpoints
  KV per token = 2 (K and V) x layers x KV heads x head_dim x bytes   (grouped-query attention: KV heads < heads)
  prefill      = 2 x parameters x tokens + layers x tokens^2 x hidden  FLOPs (Kaplan et al. 2020, causal)
  decode bound = memory bandwidth / bytes read per step (all weights + the KV cache of the batch)
  tensor parallel (Megatron-LM): each of `tp` GPUs holds 1/tp of the weights and of the KV heads, and every
                 layer ends its attention and its MLP with an all-reduce of the hidden state
"""

import argparse
import json
import math
from pathlib import Path

BYTES = {
    "float32": 4,
    "fp32": 4,
    "bfloat16": 2,
    "float16": 2,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}
GROUP_SIZE = 128  # int4 AWQ / GPTQ checkpoints: one scale and one zero point per 128 weights
GROUP_OVERHEAD = {
    "int4": (2 + 0.5) / GROUP_SIZE
}  # bytes per weight: a 16-bit scale and a 4-bit zero point
QUANTIZED = ("fp8", "int8", "int4")
ACTIVATION_BYTES = 2  # the hidden state that tensor-parallel all-reduces carry is 16-bit


def shape(config: dict) -> dict:
    """The few numbers every estimate needs, with the defaults transformers uses."""
    heads = config["num_attention_heads"]
    return {
        "hidden": config["hidden_size"],
        "layers": config["num_hidden_layers"],
        "heads": heads,
        "kv_heads": config.get("num_key_value_heads", heads),
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "intermediate": config["intermediate_size"],
        "vocab": config["vocab_size"],
        "tied": config.get("tie_word_embeddings", False),
        "type": config.get("model_type", "llama"),
    }


def linear_parameter_count(config: dict) -> int:
    """Weights of the Linear layers inside the blocks: the part that weight quantization compresses."""
    s = shape(config)
    h, kv_dim = s["hidden"], s["kv_heads"] * s["head_dim"]
    if s["type"] == "bert":
        return s["layers"] * (4 * h * h + 2 * h * s["intermediate"])
    return s["layers"] * (
        h * s["heads"] * s["head_dim"] * 2 + h * kv_dim * 2 + 3 * h * s["intermediate"]
    )


def parameter_count(config: dict) -> int:
    """Exact for Llama-style decoders (Qwen2 adds q/k/v biases) and for BERT encoders."""
    s = shape(config)
    h, kv_dim = s["hidden"], s["kv_heads"] * s["head_dim"]
    if s["type"] == "bert":
        biases_and_norms = s["layers"] * (
            4 * h + s["intermediate"] + h + 4 * h
        )  # q, k, v, o, MLP; 2 LayerNorms
        embeddings = (
            s["vocab"] + config["max_position_embeddings"] + config.get("type_vocab_size", 2)
        ) * h + 2 * h
        return (
            embeddings + linear_parameter_count(config) + biases_and_norms + h * h + h
        )  # + pooler
    biases = s["layers"] * (s["heads"] * s["head_dim"] + 2 * kv_dim) if s["type"] == "qwen2" else 0
    norms = s["layers"] * 2 * h + h
    embeddings = s["vocab"] * h * (1 if s["tied"] else 2)
    return embeddings + linear_parameter_count(config) + biases + norms


def weight_bytes(config: dict, dtype: str = "bfloat16") -> float:
    """Bytes of weights; quantized dtypes compress the Linear layers only (see the module docstring)."""
    if dtype not in QUANTIZED:
        return parameter_count(config) * BYTES[dtype]
    linear = linear_parameter_count(config)
    per_weight = BYTES[dtype] + GROUP_OVERHEAD.get(dtype, 0)
    return linear * per_weight + (parameter_count(config) - linear) * BYTES["bf16"]


def kv_heads_per_gpu(config: dict, tp: int = 1) -> int:
    """KV heads each GPU of a tensor-parallel group holds: split evenly, or replicated once tp > KV heads."""
    return max(1, math.ceil(shape(config)["kv_heads"] / tp))


def kv_bytes_per_token(config: dict, dtype: str = "bfloat16", tp: int = 1) -> float:
    """KV-cache bytes one token adds, on each GPU of a `tp`-way group (tp=1: the whole cache)."""
    s = shape(config)
    return 2 * s["layers"] * kv_heads_per_gpu(config, tp) * s["head_dim"] * BYTES[dtype]


def sequences_that_fit(
    config: dict,
    gpu_bytes: float,
    tokens_per_sequence: int,
    dtype: str = "bfloat16",
    reserve: float = 0.10,
    kv_dtype: str | None = None,
    tp: int = 1,
) -> int:
    """Concurrent sequences whose KV cache fits beside the weights on each GPU, keeping `reserve` for the runtime."""
    free = gpu_bytes * (1 - reserve) - weight_bytes(config, dtype) / tp
    per_sequence = kv_bytes_per_token(config, kv_dtype or dtype, tp) * tokens_per_sequence
    return max(0, math.floor(free / per_sequence))


def prefill_flops(config: dict, tokens: int) -> float:
    s = shape(config)
    return 2 * parameter_count(config) * tokens + s["layers"] * tokens**2 * s["hidden"]


def decode_tokens_per_second_bound(
    config: dict,
    bandwidth_bytes_s: float,
    batch: int = 1,
    context: int = 0,
    dtype: str = "bfloat16",
    kv_dtype: str | None = None,
    tp: int = 1,
) -> float:
    """Upper bound from memory bandwidth: each step every GPU reads its share of the weights once plus its
    share of every sequence's KV cache; the `tp` GPUs read in parallel."""
    step_bytes = weight_bytes(config, dtype) / tp + batch * context * kv_bytes_per_token(
        config, kv_dtype or dtype, tp
    )
    return batch * bandwidth_bytes_s / step_bytes


def allreduce_bytes_per_token(config: dict, tp: int) -> float:
    """Bytes each GPU sends per token: two all-reduces per layer (after attention and after the MLP), each a
    ring all-reduce of the hidden state that moves 2 (tp - 1) / tp of it through every GPU's link."""
    s = shape(config)
    return s["layers"] * 2 * 2 * (tp - 1) / tp * s["hidden"] * ACTIVATION_BYTES


def tensor_parallel_layout(
    config: dict, tp: int, dtype: str = "bfloat16", kv_dtype: str | None = None
) -> dict:
    """What one GPU of a `tp`-way group holds and sends."""
    return {
        "tp": tp,
        "weights_per_gpu": weight_bytes(config, dtype) / tp,
        "kv_per_token_per_gpu": kv_bytes_per_token(config, kv_dtype or dtype, tp),
        "allreduce_per_token": allreduce_bytes_per_token(config, tp),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a transformers config.json")
    parser.add_argument("--dtype", choices=list(BYTES), default="bfloat16", help="weights")
    parser.add_argument(
        "--kv-dtype", choices=list(BYTES), help="KV cache (default: as the weights)"
    )
    parser.add_argument(
        "--tp", type=int, default=1, help="tensor-parallel degree (GPUs per replica)"
    )
    parser.add_argument("--gpu-gib", type=float, default=80)
    parser.add_argument("--bandwidth-gb-s", type=float, default=3350)
    parser.add_argument(
        "--tokens", type=int, default=2048, help="prompt + output tokens per sequence"
    )
    args = parser.parse_args()
    kv_dtype = args.kv_dtype or args.dtype
    try:
        cfg = json.loads(args.config.read_text())
        n = parameter_count(cfg)
    except (OSError, json.JSONDecodeError, KeyError) as error:
        parser.exit(2, f"error: cannot read a model config from {args.config}: {error!r}\n")
    if args.tp < 1:
        parser.exit(2, "error: --tp must be >= 1\n")
    layout = tensor_parallel_layout(cfg, args.tp, args.dtype, kv_dtype)
    fit = sequences_that_fit(
        cfg, args.gpu_gib * 2**30, args.tokens, args.dtype, kv_dtype=kv_dtype, tp=args.tp
    )
    bound = decode_tokens_per_second_bound(
        cfg, args.bandwidth_gb_s * 1e9, 1, args.tokens, args.dtype, kv_dtype, args.tp
    )
    print(f"parameters:          {n / 1e9:.3f} B")
    print(f"weights ({args.dtype}):   {weight_bytes(cfg, args.dtype) / 2**30:.2f} GiB")
    print(f"KV cache per token:  {kv_bytes_per_token(cfg, kv_dtype) / 2**10:.1f} KiB ({kv_dtype})")
    if args.tp > 1:
        print(
            f"per GPU at tp={args.tp}:     {layout['weights_per_gpu'] / 2**30:.2f} GiB of weights, "
            f"{layout['kv_per_token_per_gpu'] / 2**10:.1f} KiB of KV cache per token, "
            f"{layout['allreduce_per_token'] / 2**10:.0f} KiB of all-reduce traffic per token"
        )
    print(f"sequences that fit:  {fit} x {args.tokens} tokens on {args.gpu_gib:g} GiB per GPU")
    print(f"prefill of {args.tokens} tokens: {prefill_flops(cfg, args.tokens) / 1e12:.2f} TFLOP")
    print(f"decode bound, batch 1: {bound:.0f} tokens/s")
