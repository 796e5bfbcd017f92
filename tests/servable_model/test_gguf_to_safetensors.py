"""servable_model/gguf_to_safetensors.py: the converted folder loads fast and answers like the GGUF."""

import time

import torch
from helpers import load_snippet, run_snippet
from transformers import AutoModelForCausalLM


def test_converted_folder_is_plain_and_fast(smollm2_dir):
    files = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "quantization_config" not in (smollm2_dir / "config.json").read_text()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert time.perf_counter() - started < 5  # the point of converting: no 13 s de-quantization
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_converted_weights_equal_the_gguf(smollm2):
    convert = load_snippet("servable_model/gguf_to_safetensors.py")
    tokenizer, model = smollm2
    from_gguf = AutoModelForCausalLM.from_pretrained(
        convert.smollm2_gguf_dir(), gguf_file=convert.GGUF_NAME, dtype=torch.float32
    )
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**ids).logits, from_gguf(**ids).logits)


def test_main_reports_the_folder(smollm2_dir):
    # an existing folder is reused, not converted again
    out = run_snippet("servable_model/gguf_to_safetensors.py", "--out", str(smollm2_dir))
    assert out.startswith(f"saved {smollm2_dir} (") and "MB)" in out
