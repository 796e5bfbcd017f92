"""planning/compute.py: checked against the measured local models and against published figures."""

import json

import pytest
import torch
import yaml
from transformers import DynamicCache

from helpers import REPO, load_snippet, run_snippet

compute = load_snippet("planning/compute.py")
CONFIGS = {k: v["config"] for k, v in yaml.safe_load((REPO / "data" / "model_configs.yaml").read_text())["models"].items()}


def test_local_models_match_what_is_measured(smollm2, smollm2_dir, minilm, minilm_dir):
    _, llm = smollm2
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert compute.parameter_count(config) == sum(p.numel() for p in llm.parameters()) == 134_515_008
    assert compute.parameter_count(CONFIGS["all-minilm-l6-v2"]) == sum(p.numel() for p in minilm[1].parameters())
    minilm_file = (minilm_dir / "model.safetensors").stat().st_size
    assert compute.weight_bytes(CONFIGS["all-minilm-l6-v2"], "float32") == pytest.approx(minilm_file, rel=0.01)
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
    opt_13b = {"hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40, "intermediate_size": 20480,
               "vocab_size": 50272}
    assert compute.kv_bytes_per_token(opt_13b, "float16") == 800 * 1024  # Kwon et al. 2023: "800 KB"
    # grouped-query attention: Llama 3.1 8B has 8 KV heads for 32 query heads, a quarter of Llama 2's cache
    assert compute.kv_bytes_per_token(CONFIGS["llama-3.1-8b"]) * 4 == compute.kv_bytes_per_token(CONFIGS["llama-2-7b"])


def test_hand_checked_arithmetic():
    cfg = CONFIGS["llama-2-7b"]
    # 80 GiB x 0.9 = 72 GiB; minus 12.55 GiB of bf16 weights; / (512 KiB x 4096 tokens = 2 GiB) -> 29 sequences
    assert compute.sequences_that_fit(cfg, 80 * 2**30, 4096, "bfloat16") == 29
    assert compute.prefill_flops(cfg, 1000) == 2 * 6_738_415_616 * 1000 + 32 * 1000**2 * 4096
    # batch 1, no context: 3.35 TB/s over 13.48 GB of weights -> 248.6 tokens/s
    assert compute.decode_tokens_per_second_bound(cfg, 3.35e12) == pytest.approx(3.35e12 / (2 * 6_738_415_616))


def test_cli(smollm2_dir, tmp_path):
    out = run_snippet("planning/compute.py", str(smollm2_dir / "config.json"), "--dtype", "float32")
    assert "parameters:          0.135 B" in out and "KV cache per token:  45.0 KiB" in out
    (tmp_path / "bad.json").write_text("{}")
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, REPO / "snippets/planning/compute.py", tmp_path / "bad.json"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot read a model config")
