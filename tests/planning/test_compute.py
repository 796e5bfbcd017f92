"""planning/compute.py: checked against the measured local models and against published figures."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import REPO, load_snippet, run_snippet
from transformers import DynamicCache

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
    opt_13b = {
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
    (tmp_path / "bad.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, REPO / "snippets/planning/compute.py", tmp_path / "bad.json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot read a model config")
