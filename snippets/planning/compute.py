"""Compute needed for a transformer, from its config.json: parameters (total and active), weights in
their stored format, KV cache, FLOPs, the speed bound, and how a tensor-parallel group splits them.

    python snippets/planning/compute.py path/to/config.json --dtype fp8 --kv-dtype fp8 --tp 4

Only the architectures in SUPPORTED are modelled; any other model_type is refused by name, never
guessed. A field a config.json leaves out takes transformers' default for that model_type (DEFAULTS).

Formulas:
  parameters   = embeddings (+ output head unless tied) + per layer: attention (q, k, v, o, their
                 biases, q/k norms, attention sinks), the MLP or the experts and their router, the
                 norms; + a vision tower where the config nests one (Gemma 3)
  active       = the parameters a text token uses: all but the vision tower and (E - k) / E of the
                 expert weights (E experts per layer, k chosen per token)
  weights      = parameters x bytes per parameter; fp8 / int8 / int4 quantize the Linear layers only
                 (int4 adds a 16-bit scale and a 4-bit zero point per group of 128 weights); experts a
                 checkpoint stores in MXFP4 (quantization_config, gpt-oss) take 4 bits plus one 8-bit
                 scale per block of 32 weights, whatever the dtype of the rest
  KV cache     = per layer 2 (K and V) x KV heads x head_dim x bytes per token; a sliding-window
                 layer keeps only its last `sliding_window` tokens, so a sequence of n tokens holds
                 min(n, window) of them there
  prefill      = 2 x active parameters x tokens + per layer 2 x (query-key pairs) x heads x head_dim
  decode bound = memory bandwidth / bytes read per step: the dense weights, the experts the batch's
                 tokens pick (at batch B a layer of E experts, k per token, reads E (1 - (1 - k/E)^B)
                 of them: nearly all at batch 64) and the KV cache of every sequence
  tensor parallel (Megatron-LM): each of `tp` GPUs holds 1/tp of the weights and of the KV heads, and every
                 layer ends its attention and its MLP with an all-reduce of the hidden state
"""

import argparse
import json
import math
from dataclasses import dataclass
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
MXFP4_BYTES = 0.5 + 1 / 32  # OCP microscaling FP4: 4-bit values, one 8-bit scale per 32
QUANTIZED = ("fp8", "int8", "int4")
ACTIVATION_BYTES = 2  # the hidden state that tensor-parallel all-reduces carry is 16-bit


class ConfigError(ValueError):
    """A config.json the planner cannot model; str() is one line naming the problem."""


@dataclass(frozen=True)
class Layout:
    """What transformers' modelling code fixes for a model_type, beyond what config.json says. A bias
    is True, False or the config field that switches it."""

    qkv_bias: bool | str = False
    o_bias: bool | str = False
    mlp_bias: bool | str = False
    qk_norm: bool = False  # an RMSNorm over head_dim on q and on k
    norms_per_layer: int = 2
    sinks: bool = False  # one learned attention-sink logit per head
    experts: str | None = (
        None  # "qwen3_moe": SwiGLU experts, router without bias; "gpt_oss": with biases
    )
    windows: str = "none"  # which layers slide: none, all, qwen / qwen_all (if use_sliding_window), alternate, sixth
    encoder: bool = False


SUPPORTED = {
    "llama": Layout(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias"),
    "mistral": Layout(windows="all"),
    "phi3": Layout(windows="all"),
    "qwen2": Layout(qkv_bias=True, windows="qwen"),
    "qwen3": Layout(
        qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True, windows="qwen"
    ),
    "qwen3_moe": Layout(
        qkv_bias="attention_bias",
        o_bias="attention_bias",
        qk_norm=True,
        experts="qwen3_moe",
        windows="qwen_all",
    ),
    "gpt_oss": Layout(
        qkv_bias="attention_bias",
        o_bias="attention_bias",
        sinks=True,
        experts="gpt_oss",
        windows="alternate",
    ),
    "gemma3_text": Layout(
        qkv_bias="attention_bias",
        o_bias="attention_bias",
        qk_norm=True,
        norms_per_layer=4,
        windows="sixth",
    ),
    "bert": Layout(encoder=True),
}
MULTIMODAL = {"gemma3": "gemma3_text"}  # a wrapper model_type and the type of its text_config
SUPPORTED_NAMES = ", ".join(sorted([*SUPPORTED, *MULTIMODAL]))

# transformers' defaults for the fields a config.json may leave out (its configuration_*.py files)
DEFAULTS = {
    "llama": {"attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False},
    "mistral": {"num_key_value_heads": 8, "tie_word_embeddings": False, "sliding_window": 4096},
    "phi3": {"tie_word_embeddings": False, "sliding_window": None},
    "qwen2": {
        "num_key_value_heads": 32,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
    },
    "qwen3": {
        "num_key_value_heads": 32,
        "head_dim": 128,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
    },
    "qwen3_moe": {
        "num_key_value_heads": 4,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "gpt_oss": {
        "num_key_value_heads": 8,
        "head_dim": 64,
        "attention_bias": True,
        "tie_word_embeddings": False,
        "sliding_window": 128,
    },
    "gemma3_text": {
        "vocab_size": 262208,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131072,
        "attention_bias": False,
        "tie_word_embeddings": True,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
    },
    "bert": {"type_vocab_size": 2},
}
REQUIRED = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)
EXPERT_FIELDS = {
    "qwen3_moe": ("num_experts", "num_experts_per_tok", "moe_intermediate_size"),
    "gpt_oss": ("num_local_experts", "num_experts_per_tok"),
}


def text_config(config: dict) -> dict:
    """The decoder's config with transformers' defaults filled in; a multimodal config gives its
    text_config. Raises ConfigError for a model_type not modelled or a needed field missing."""
    kind = config.get("model_type")
    if kind is None:
        raise ConfigError("'model_type' missing: the planner needs it to know the architecture")
    if kind in MULTIMODAL:
        if not isinstance(config.get("text_config"), dict):
            raise ConfigError(
                f"'text_config' missing: a {kind} config nests its language model there"
            )
        return text_config({"model_type": MULTIMODAL[kind], **config["text_config"]})
    if kind not in SUPPORTED:
        raise ConfigError(f"model_type {kind!r} is not supported; supported: {SUPPORTED_NAMES}")
    merged = {**DEFAULTS[kind], **config}
    for field in REQUIRED + EXPERT_FIELDS.get(kind, ()):
        if merged.get(field) is None:
            raise ConfigError(f"{field!r} missing from the {kind} config")
    return merged


def layer_windows(cfg: dict) -> list[int | None]:
    """The window each layer attends over (None: the whole sequence), as transformers lays them out."""
    layers, window = cfg["num_hidden_layers"], cfg.get("sliding_window")
    rule = SUPPORTED[cfg["model_type"]].windows
    if rule.startswith("qwen") and not cfg.get("use_sliding_window"):
        window = None  # Qwen configs carry a window that only use_sliding_window switches on
    if rule == "none" or not window:
        return [None] * layers
    if cfg.get("layer_types"):
        sliding = [kind == "sliding_attention" for kind in cfg["layer_types"]]
    elif rule == "alternate":
        sliding = [(i + 1) % 2 == 1 for i in range(layers)]
    elif rule == "sixth":
        sliding = [(i + 1) % cfg["sliding_window_pattern"] != 0 for i in range(layers)]
    elif rule == "qwen":
        sliding = [i >= cfg["max_window_layers"] for i in range(layers)]
    else:  # "all", "qwen_all": every layer slides
        sliding = [True] * layers
    return [window if slides else None for slides in sliding]


def shape(config: dict) -> dict:
    """The numbers every estimate needs, with the defaults transformers uses."""
    cfg = text_config(config)
    heads = cfg["num_attention_heads"]
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    layers = cfg["num_hidden_layers"]
    return {
        "type": cfg["model_type"],
        "hidden": cfg["hidden_size"],
        "layers": layers,
        "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        "intermediate": cfg["intermediate_size"],
        "vocab": cfg["vocab_size"],
        "tied": cfg.get("tie_word_embeddings", False),
        "context": cfg["max_position_embeddings"],
        "windows": [] if SUPPORTED[cfg["model_type"]].encoder else layer_windows(cfg),
        "experts": experts,
        "experts_per_token": cfg.get("num_experts_per_tok", 0),
        "expert_intermediate": cfg.get("moe_intermediate_size") or cfg["intermediate_size"],
        "moe_layers": sum(is_moe_layer(cfg, i) for i in range(layers)) if experts else 0,
    }


def is_moe_layer(cfg: dict, index: int) -> bool:
    """Qwen3-MoE can keep some layers dense (mlp_only_layers, decoder_sparse_step); gpt-oss cannot."""
    if cfg["model_type"] != "qwen3_moe":
        return True
    return index not in cfg["mlp_only_layers"] and (index + 1) % cfg["decoder_sparse_step"] == 0


def flag(cfg: dict, setting: bool | str) -> bool:
    return cfg.get(setting, False) if isinstance(setting, str) else setting


def parameter_groups(config: dict) -> dict:
    """Parameters by how they are stored: `linear` (attention and dense-MLP matrices, which weight
    quantization compresses), `experts` (expert matrices), `vision` (tower and projector) and `rest`
    (embeddings, output head, norms, biases, routers, sinks), which stay in 16 bits."""
    cfg, s = text_config(config), shape(config)
    layout = SUPPORTED[cfg["model_type"]]
    if layout.encoder:
        return bert_groups(cfg, s)
    h, hd = s["hidden"], s["head_dim"]
    q, kv = s["heads"] * hd, s["kv_heads"] * hd
    attention = h * (q + 2 * kv) + q * h
    attention_rest = (
        (q + 2 * kv) * flag(cfg, layout.qkv_bias)
        + h * flag(cfg, layout.o_bias)
        + 2 * hd * layout.qk_norm
        + s["heads"] * layout.sinks
        + layout.norms_per_layer * h
    )
    dense_mlp = 3 * h * s["intermediate"]
    dense_mlp_bias = (2 * s["intermediate"] + h) * flag(cfg, layout.mlp_bias)
    e, mi = s["experts"], s["expert_intermediate"]
    expert_matrices = e * 3 * h * mi
    router = e * h + (e if layout.experts == "gpt_oss" else 0)
    expert_biases = e * (2 * mi + h) if layout.experts == "gpt_oss" else 0
    moe, dense = s["moe_layers"], s["layers"] - s["moe_layers"]
    return {
        "linear": s["layers"] * attention + dense * dense_mlp,
        "experts": moe * expert_matrices,
        "expert_biases": moe * expert_biases,
        "vision": vision_parameter_count(config),
        "rest": s["vocab"] * h * (1 if s["tied"] else 2)
        + h
        + s["layers"] * attention_rest
        + dense * dense_mlp_bias
        + moe * router,
    }


def bert_groups(cfg: dict, s: dict) -> dict:
    """A BERT encoder with its pooler (sentence-transformers checkpoints keep it)."""
    h, layers = s["hidden"], s["layers"]
    biases_and_norms = layers * (
        4 * h + s["intermediate"] + h + 4 * h
    )  # q, k, v, o, MLP; 2 LayerNorms
    embeddings = (s["vocab"] + cfg["max_position_embeddings"] + cfg["type_vocab_size"]) * h + 2 * h
    return {
        "linear": layers * (4 * h * h + 2 * h * s["intermediate"]),
        "experts": 0,
        "expert_biases": 0,
        "vision": 0,
        "rest": embeddings + biases_and_norms + h * h + h,
    }


def vision_parameter_count(config: dict) -> int:
    """A SigLIP vision tower (without its pooling head) and Gemma 3's projector into the text model."""
    vision = config.get("vision_config")
    if not vision:
        return 0
    h, i, p = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    patches = (vision["image_size"] // p) ** 2
    embeddings = 3 * p * p * h + h + patches * h
    layer = 2 * 2 * h + 4 * (h * h + h) + (h * i + i) + (i * h + h)
    projector = h * shape(config)["hidden"] + h
    return embeddings + vision["num_hidden_layers"] * layer + 2 * h + projector


def parameter_count(config: dict) -> int:
    """Every parameter the checkpoint stores; exact for SUPPORTED types (tests compare with transformers)."""
    return sum(parameter_groups(config).values())


def active_parameter_count(config: dict) -> int:
    """Parameters one text token runs through: k of E experts, no vision tower."""
    groups, s = parameter_groups(config), shape(config)
    unused = 0
    if s["experts"]:
        unused = (
            (groups["experts"] + groups["expert_biases"])
            // s["experts"]
            * (s["experts"] - s["experts_per_token"])
        )
    return parameter_count(config) - groups["vision"] - unused


def linear_parameter_count(config: dict) -> int:
    """Weights of the Linear layers inside the blocks, experts included: what weight quantization compresses."""
    groups = parameter_groups(config)
    return groups["linear"] + groups["experts"]


def stored_mxfp4(config: dict) -> bool:
    """Whether the checkpoint stores its expert matrices in MXFP4 (gpt-oss). Any other
    quantization_config is a format the planner does not model, so it says so."""
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method not in (None, "mxfp4"):
        raise ConfigError(
            f"quantization_config quant_method {method!r} is not modelled; point the spec at the "
            "unquantized model's config.json and let the planner choose the format"
        )
    return method == "mxfp4"


def group_bytes(config: dict, dtype: str = "bfloat16") -> dict:
    """Bytes of each parameter group at `dtype` (see parameter_groups and the module docstring)."""
    groups = parameter_groups(config)
    sixteen = BYTES[dtype] if dtype not in QUANTIZED else BYTES["bf16"]
    per_linear = BYTES[dtype] + GROUP_OVERHEAD.get(dtype, 0)
    per_expert = MXFP4_BYTES if stored_mxfp4(config) else per_linear
    return {
        "linear": groups["linear"] * per_linear,
        "experts": groups["experts"] * per_expert + groups["expert_biases"] * sixteen,
        "vision": groups["vision"] * sixteen,
        "rest": groups["rest"] * sixteen,
    }


def weight_bytes(config: dict, dtype: str = "bfloat16") -> float:
    """Bytes of weights; quantized dtypes compress the Linear layers only (see the module docstring)."""
    return sum(group_bytes(config, dtype).values())


def kv_heads_per_gpu(config: dict, tp: int = 1) -> int:
    """KV heads each GPU of a tensor-parallel group holds: split evenly, or replicated once tp > KV heads."""
    return max(1, math.ceil(shape(config)["kv_heads"] / tp))


def kv_bytes_per_layer_token(config: dict, dtype: str = "bfloat16", tp: int = 1) -> float:
    """K and V of one token in one layer, on each GPU of a `tp`-way group."""
    return 2 * kv_heads_per_gpu(config, tp) * shape(config)["head_dim"] * BYTES[dtype]


def kv_bytes_per_token(config: dict, dtype: str = "bfloat16", tp: int = 1) -> float:
    """KV-cache bytes one token adds while the sequence is shorter than every window (all layers
    grow), on each GPU of a `tp`-way group (tp=1: the whole cache)."""
    return shape(config)["layers"] * kv_bytes_per_layer_token(config, dtype, tp)


def kv_bytes_per_sequence(config: dict, tokens: int, dtype: str = "bfloat16", tp: int = 1) -> float:
    """KV cache of one sequence of `tokens` tokens: a sliding-window layer holds at most its window."""
    held = sum(min(tokens, w) if w else tokens for w in shape(config)["windows"])
    return held * kv_bytes_per_layer_token(config, dtype, tp)


def kv_cache_tokens(
    config: dict, kv_space_bytes: float, kv_dtype: str = "bfloat16", tp: int = 1
) -> float:
    """Tokens a KV space holds: the longest single sequence whose KV cache fits in it. Without
    sliding-window layers that is space / bytes per token (SmolLM2-135M in bf16: 2 x 30 layers x 3 KV
    heads x 64 x 2 B = 23,040 B a token, so 1 GiB holds 46,603). Windows hold only their last tokens,
    so the full-attention layers set the length; math.inf when every layer slides and all fit. With
    tp > 1, `kv_space_bytes` is one GPU's space and each GPU holds its share of the KV heads."""
    per_layer = kv_bytes_per_layer_token(config, kv_dtype, tp)
    s = shape(config)
    windows = sorted(w for w in s["windows"] if w)
    full = s["layers"] - len(windows)
    filled = 0  # token-layers held by windows already full
    for i, window in enumerate([*windows, math.inf]):
        growing = full + len(windows) - i
        if growing == 0:
            return math.inf if filled * per_layer <= kv_space_bytes else 0
        tokens = math.floor((kv_space_bytes - filled * per_layer) / (growing * per_layer))
        if tokens <= window:
            return max(0, tokens)
        filled += window
    return math.inf  # unreachable: the last window is infinite


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
    free = kv_space_per_gpu(config, gpu_bytes, dtype, reserve, tp)
    per_sequence = kv_bytes_per_sequence(config, tokens_per_sequence, kv_dtype or dtype, tp)
    return max(0, math.floor(free / per_sequence))


def kv_space_per_gpu(
    config: dict, gpu_bytes: float, dtype: str = "bfloat16", reserve: float = 0.10, tp: int = 1
) -> float:
    """Memory each GPU leaves for the KV cache: its share of (1 - reserve), less its share of the weights."""
    return gpu_bytes * (1 - reserve) - weight_bytes(config, dtype) / tp


def prefill_flops(config: dict, tokens: int) -> float:
    """2 FLOPs per active parameter per token, plus attention: a causal layer scores about
    tokens^2 / 2 query-key pairs, a sliding-window layer tokens x window - window^2 / 2."""
    s = shape(config)
    pairs = (
        sum(
            tokens * w - w * w / 2 if w and w < tokens else tokens * tokens / 2
            for w in s["windows"]
        )
        or s["layers"] * tokens * tokens / 2
    )
    return 2 * active_parameter_count(config) * tokens + 2 * pairs * s["heads"] * s["head_dim"]


def experts_read(config: dict, batch: int) -> float:
    """Experts one MoE layer reads in a decode step of `batch` tokens: E (1 - (1 - k/E)^B)."""
    s = shape(config)
    if not s["experts"]:
        return 0
    return s["experts"] * (1 - (1 - s["experts_per_token"] / s["experts"]) ** batch)


def decode_step_bytes(
    config: dict,
    batch: int = 1,
    context: int = 0,
    dtype: str = "bfloat16",
    kv_dtype: str | None = None,
    tp: int = 1,
) -> float:
    """Bytes each GPU reads for one decode step: its share of the dense weights (no vision tower), of
    the experts the batch picks, and of every sequence's KV cache."""
    weights = group_bytes(config, dtype)
    experts = shape(config)["experts"]
    share = experts_read(config, batch) / experts if experts else 0
    read = weights["linear"] + weights["rest"] + weights["experts"] * share
    kv = batch * kv_bytes_per_sequence(config, context, kv_dtype or dtype, tp) if context else 0
    return read / tp + kv


def decode_tokens_per_second_bound(
    config: dict,
    bandwidth_bytes_s: float,
    batch: int = 1,
    context: int = 0,
    dtype: str = "bfloat16",
    kv_dtype: str | None = None,
    tp: int = 1,
) -> float:
    """Upper bound from memory bandwidth: every step each GPU reads its share of what
    decode_step_bytes counts; the `tp` GPUs read in parallel."""
    return (
        batch * bandwidth_bytes_s / decode_step_bytes(config, batch, context, dtype, kv_dtype, tp)
    )


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


def load_config(path: Path) -> dict:
    """A config.json from disk, checked: ConfigError (one line, naming the file) if it cannot be planned."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read a model config: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config.json is a JSON object of field: value")
    try:
        parameter_count(config)
        stored_mxfp4(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config


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
    parser.add_argument("--kv-gib", type=float, help="also say how many tokens this KV space holds")
    args = parser.parse_args()
    if args.tp < 1:
        parser.exit(2, "error: --tp must be >= 1\n")
    try:
        cfg = load_config(args.config)
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
    kv_dtype = args.kv_dtype or args.dtype
    layout = tensor_parallel_layout(cfg, args.tp, args.dtype, kv_dtype)
    fit = sequences_that_fit(
        cfg, args.gpu_gib * 2**30, args.tokens, args.dtype, kv_dtype=kv_dtype, tp=args.tp
    )
    bound = decode_tokens_per_second_bound(
        cfg, args.bandwidth_gb_s * 1e9, 1, args.tokens, args.dtype, kv_dtype, args.tp
    )
    n, active = parameter_count(cfg), active_parameter_count(cfg)
    windows = [w for w in shape(cfg)["windows"] if w]
    print(
        f"parameters:          {n / 1e9:.3f} B"
        + (f" ({active / 1e9:.3f} B active)" if active != n else "")
    )
    print(f"weights ({args.dtype}):   {weight_bytes(cfg, args.dtype) / 2**30:.2f} GiB")
    print(f"KV cache per token:  {kv_bytes_per_token(cfg, kv_dtype) / 2**10:.1f} KiB ({kv_dtype})")
    if windows:
        print(
            f"sliding windows:     {len(windows)} of {shape(cfg)['layers']} layers keep their last {max(windows):,} tokens"
        )
    if args.tp > 1:
        print(
            f"per GPU at tp={args.tp}:     {layout['weights_per_gpu'] / 2**30:.2f} GiB of weights, "
            f"{layout['kv_per_token_per_gpu'] / 2**10:.1f} KiB of KV cache per token, "
            f"{layout['allreduce_per_token'] / 2**10:.0f} KiB of all-reduce traffic per token"
        )
    print(f"sequences that fit:  {fit} x {args.tokens} tokens on {args.gpu_gib:g} GiB per GPU")
    print(f"prefill of {args.tokens} tokens: {prefill_flops(cfg, args.tokens) / 1e12:.2f} TFLOP")
    print(f"decode bound, batch 1: {bound:.0f} tokens/s")
    if args.kv_gib:
        print(
            f"a {args.kv_gib:g} GiB KV cache holds {kv_cache_tokens(cfg, args.kv_gib * 2**30, kv_dtype):,} tokens"
        )
