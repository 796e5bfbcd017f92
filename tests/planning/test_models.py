"""data/model_configs.yaml and the architectures planning/compute.py models: every recorded config's
total and active parameter counts equal transformers' own, instantiated on the meta device (no
weights), and the defaults the planner fills in are transformers' defaults."""

import datetime
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import REPO, SNIPPETS, load_snippet
from transformers import AutoConfig, AutoModelForCausalLM

compute = load_snippet("planning/compute.py")
MODELS = yaml.safe_load((REPO / "data" / "model_configs.yaml").read_text())["models"]
DECODERS = {name: m["config"] for name, m in MODELS.items() if m["config"]["model_type"] != "bert"}


def counted_by_transformers(config: dict) -> tuple[int, int]:
    """Total parameters of transformers' model for `config`, and those a text token uses: k of E
    expert weights, no vision tower (the text part of a multimodal model)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    s = compute.shape(config)
    total = active = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if "vision_tower" in name or "multi_modal_projector" in name:
            continue
        experts = ".experts." in name
        active += (
            parameter.numel() * s["experts_per_token"] // s["experts"]
            if experts
            else parameter.numel()
        )
    return total, active


@pytest.mark.parametrize("name", DECODERS)
def test_parameter_counts_equal_transformers(name):
    config = DECODERS[name]
    total, active = counted_by_transformers(config)
    assert (compute.parameter_count(config), compute.active_parameter_count(config)) == (
        total,
        active,
    )


def test_the_recorded_models():
    """Current open models, two mixtures of experts, one multimodal config with sliding-window
    layers; each with its source and the date it was read."""
    assert len(DECODERS) >= 15
    for name, entry in MODELS.items():
        assert entry["source"] and isinstance(entry["read"], datetime.date), name
        int4 = entry.get("int4")
        assert not int4 or (
            int4["source"].startswith("https://") and int4["method"] in ("awq", "gptq")
        ), name
    moe = [n for n, c in DECODERS.items() if compute.shape(c)["experts"]]
    assert {"gpt-oss-20b", "qwen3-30b-a3b"} <= set(moe)
    gemma = DECODERS["gemma-3-4b-it"]
    assert "text_config" in gemma and "vision_config" in gemma
    assert sum(w is not None for w in compute.shape(gemma)["windows"]) == 29  # 5 of every 6 of 34
    assert DECODERS["gpt-oss-20b"]["quantization_config"]["quant_method"] == "mxfp4"


def test_active_parameters_of_the_mixtures():
    """gpt-oss-20b: 24 layers x 32 experts of 3 x 2,880 x 2,880 weights plus 2 x 2,880 + 2,880 biases;
    a token uses 4 of 32, so 28/32 of the 19.11 B expert parameters sit idle: 4.19 B of 20.91 B active."""
    gpt_oss = DECODERS["gpt-oss-20b"]
    experts = 24 * 32 * (3 * 2880 * 2880 + 3 * 2880)
    assert (
        compute.active_parameter_count(gpt_oss)
        == compute.parameter_count(gpt_oss) - experts * 28 // 32
    )
    # Qwen3-30B-A3B: 48 layers x 128 experts of 3 x 2,048 x 768; 8 per token
    qwen = DECODERS["qwen3-30b-a3b"]
    idle = 48 * 128 * 3 * 2048 * 768 * 120 // 128
    assert compute.active_parameter_count(qwen) == compute.parameter_count(qwen) - idle


def transformers_windows(config: dict) -> list:
    """The window of each layer as transformers' config resolves it."""
    resolved = AutoConfig.for_model(**config)
    window = getattr(resolved, "sliding_window", None)
    kinds = (
        getattr(resolved, "layer_types", None) or ["sliding_attention"] * resolved.num_hidden_layers
    )
    return [window if kind == "sliding_attention" else None for kind in kinds]


MINIMAL = {  # only the fields compute.REQUIRED asks for, small, so every default is transformers'
    "llama": {},
    "mistral": {},
    "phi3": {},
    "qwen2": {},
    "qwen3": {},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2},
}


@pytest.mark.parametrize(
    "model_type", [*MINIMAL, "qwen2 sliding", "qwen3_moe sliding", "gemma3_text"]
)
def test_defaults_are_transformers_defaults(model_type):
    """A config that leaves out every optional field: the planner's shape, windows and count agree
    with transformers' (with use_sliding_window on, for the Qwen variants that have it)."""
    kind = model_type.split()[0]
    if kind == "gemma3_text":  # Gemma 3's own config.json leaves these three only
        config = {
            "model_type": kind,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 12,
        }
    else:
        config = {
            "model_type": kind,
            "hidden_size": 64,
            "num_hidden_layers": 30,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "vocab_size": 202000,  # above every default pad_token_id
            "max_position_embeddings": 512,
            **MINIMAL[kind],
        }
    if model_type.endswith("sliding"):
        config["use_sliding_window"] = True
    resolved, s = AutoConfig.for_model(**config), compute.shape(config)
    assert (s["heads"], s["kv_heads"], s["head_dim"], s["vocab"], s["tied"], s["context"]) == (
        resolved.num_attention_heads,
        resolved.num_key_value_heads,
        getattr(resolved, "head_dim", None) or resolved.hidden_size // resolved.num_attention_heads,
        resolved.vocab_size,
        resolved.tie_word_embeddings,
        resolved.max_position_embeddings,
    )
    assert s["windows"] == transformers_windows(config)
    assert compute.parameter_count(config) == counted_by_transformers(config)[0]


def plan_config(tmp_path, config: dict) -> subprocess.CompletedProcess:
    """Run plan.py on the internal-chat spec pointed at `config`, written as config.json beside it."""
    (tmp_path / "config.json").write_text(__import__("json").dumps(config))
    spec = (REPO / "data" / "specs" / "internal-chat.yaml").read_text()
    (tmp_path / "spec.yaml").write_text(spec.replace("model: llama-3.1-8b", "model: config.json"))
    return subprocess.run(
        [sys.executable, SNIPPETS / "planning/plan.py", tmp_path / "spec.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_reader_plans_any_supported_model_from_its_config_json(tmp_path):
    proc = plan_config(tmp_path, DECODERS["qwen3-8b"])
    assert proc.returncode == 0, proc.stderr
    assert f"**config.json**: 8.19 B parameters (config: {tmp_path / 'config.json'})" in proc.stdout


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"model_type": "mamba"},
            "model_type 'mamba' is not supported; supported: bert, gemma3, gemma3_text",
        ),
        ({"vocab_size": None}, "'vocab_size' missing from the qwen3 config"),
        ({"model_type": None}, "'model_type' missing"),
        (
            {"quantization_config": {"quant_method": "awq"}},
            "quantization_config quant_method 'awq' is not modelled",
        ),
    ],
    ids=["unsupported type", "missing field", "no type", "other quantization"],
)
def test_a_config_it_cannot_plan_is_one_line(tmp_path, change, message):
    config = {k: v for k, v in {**DECODERS["qwen3-8b"], **change}.items() if v is not None}
    proc = plan_config(tmp_path, config)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert proc.stderr.startswith(
        f"{tmp_path / 'spec.yaml'}: 'model': {tmp_path / 'config.json'}: "
    )
