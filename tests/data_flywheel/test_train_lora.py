"""data_flywheel/train_lora.py and the adapter it trained (data_flywheel/adapters/intent-lora), in
peft and served by vLLM beside the base model.

What the page claims: the snippet writes an adapter in the layout vLLM loads, with its hashes;
the committed adapter is the one whose figures benchmarks/results/lora.json publishes (the base
model's intent accuracy on the held-out split, the adapter's, the share of answers it changes,
at least 80%), and those answers are the models' own; vLLM serves the adapter by the name a
request gives in `model`, and its answers agree with peft's merged model under the engines'
agreement rule while base-model requests in the same batch still agree with transformers; an
adapter loads and unloads at run time; this guide's server serves no adapter (a 404 naming
`model`).

The vLLM tests need the suite's vLLM started with `--enable-lora --lora-modules
intent=<this adapter> --max-lora-rank 8 --max-loras 2` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.
"""

import contextlib
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from helpers import REPO, SNIPPETS, load_snippet, run_snippet
from safetensors.torch import load_file

SNIPPET = "data_flywheel/train_lora.py"
ADAPTER = SNIPPETS / "data_flywheel" / "adapters" / "intent-lora"
RESULT = REPO / "benchmarks" / "results" / "lora.json"
BASE = "SmolLM2-135M-Instruct"
SAMPLE = 10  # held-out requests answered again here: the published run's first batch


@pytest.fixture(scope="module")
def train_lora():
    return load_snippet(SNIPPET)


@pytest.fixture(scope="module")
def published() -> dict:
    return json.loads(RESULT.read_text())


@pytest.fixture(scope="module")
def merged(train_lora, smollm2_dir):
    """peft's model: the committed adapter merged into its own copy of the base weights."""
    return train_lora.merged_adapter(smollm2_dir, ADAPTER)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch threads, then restore the session's. The published run's
    count splits sums the same way; and on a machine whose cores are busy (vLLM beside the
    tests), one thread does the references' small steps many times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_adapter(folder) -> None:
    """What vLLM's loader reads: a LoRA config of rank 8 on q_proj and v_proj, and float32
    tensors named base_model.model.<module>.lora_A/B.weight for each of the 30 layers; and
    SHA256SUMS, the hashes of both files."""
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"]) == ("LORA", 8)
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    tensors = load_file(folder / "adapter_model.safetensors")
    assert set(tensors) == {
        f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_{half}.weight"
        for layer in range(30)
        for proj in ("q_proj", "v_proj")
        for half in "AB"
    }
    assert all(t.dtype == torch.float32 and 8 in t.shape for t in tensors.values())
    sums = dict(line.split("  ")[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sums == {name: sha256(folder / name) for name in sums}
    assert sorted(sums) == ["adapter_config.json", "adapter_model.safetensors"]


def test_quick_mode_writes_an_adapter_in_the_layout_vllm_loads(smollm2_dir, tmp_path):
    out = tmp_path / "intent-lora"
    printed = run_snippet(
        SNIPPET, "--quick", "--threads", "1", "--model", str(smollm2_dir), "--out", str(out)
    )
    assert re.match(r"trained 2 steps in \d+ s \(loss [\d.]+ -> [\d.]+\); adapter in ", printed)
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    check_adapter(out)


def test_the_committed_adapter_is_the_published_one(published):
    check_adapter(ADAPTER)
    assert published["adapter_sha256"] == {
        name: sha256(ADAPTER / name)
        for name in ("adapter_config.json", "adapter_model.safetensors")
    }


def test_the_adapter_changes_answers_and_raises_accuracy_as_published(
    train_lora, smollm2, merged, published
):
    """The published figures follow from the published answers, and the answers are the models'
    own: the first batch of held-out requests gets the same greedy answers here."""
    tokenizer, base = smollm2
    heldout = train_lora.load_split("heldout")
    answers = published["answers"]
    assert [a["text"] for a in answers] == [row["text"] for row in heldout]
    sample = heldout[:SAMPLE]
    with torch_threads(published["threads"]):
        again = {
            "base": train_lora.predictions(base, tokenizer, sample),
            "adapter": train_lora.predictions(merged, tokenizer, sample),
        }
    for model, answered in again.items():
        assert answered == [a[model] for a in answers[:SAMPLE]], model

    def accuracy(model: str) -> float:
        return sum(a[model] == a["intent"] for a in answers) / len(answers)

    changed = sum(a["base"] != a["adapter"] for a in answers) / len(answers)
    assert changed == published["changed_answers"] >= 0.8
    assert accuracy("base") == published["base_accuracy"]
    assert accuracy("adapter") == published["adapter_accuracy"] > published["base_accuracy"]


def test_vllm_lists_the_adapter_beside_its_base_model(vllm_chat):
    models = {
        m["id"]: m for m in requests.get(f"{vllm_chat.url}/v1/models", timeout=30).json()["data"]
    }
    assert {BASE, "intent"} <= set(models)
    assert models["intent"]["parent"] == BASE


def test_vllms_adapter_agrees_with_peft_and_leaves_base_requests_alone(
    vllm_chat, train_lora, smollm2, merged
):
    """Ten held-out requests to the adapter and the agreement table's ten prompts to the base
    model, all twenty in flight together so vLLM batches them: each side holds to the engines'
    rule against its own reference (peft's merged model; transformers' base model)."""
    import agreement

    tokenizer, base = smollm2
    to_adapter = [train_lora.question(row["text"]) for row in train_lora.load_split("heldout")[:10]]
    to_base = agreement.PROMPTS

    url = vllm_chat.url
    with ThreadPoolExecutor(max_workers=20) as pool:
        adapter_texts = pool.map(lambda p: agreement.served_text(url, p, "intent"), to_adapter)
        base_texts = pool.map(lambda p: agreement.served_text(url, p, BASE), to_base)
        sides = {
            "intent": (merged, to_adapter, list(adapter_texts)),
            BASE: (base, to_base, list(base_texts)),
        }
    for name, (reference_model, prompts, texts) in sides.items():
        with torch_threads(1):
            rows = [
                {
                    name: agreement.compare(
                        tokenizer,
                        reference_model,
                        prompt,
                        agreement.reference(tokenizer, reference_model, prompt),
                        text,
                    )
                }
                for prompt, text in zip(prompts, texts, strict=True)
            ]
        verdict = agreement.verdict(rows, name)
        assert verdict["holds"], (name, verdict, rows)


def test_vllm_loads_and_unloads_an_adapter_at_run_time(vllm_chat, train_lora):
    """POST /v1/load_lora_adapter, the same answers under the new name, then unloaded: a 404."""
    from agreement import served_text

    prompt = train_lora.question(train_lora.load_split("heldout")[0]["text"])
    load = {"lora_name": "intent-2", "lora_path": str(ADAPTER)}
    loaded = requests.post(f"{vllm_chat.url}/v1/load_lora_adapter", json=load, timeout=120)
    assert loaded.status_code == 200, loaded.text
    try:
        assert served_text(vllm_chat.url, prompt, "intent-2", 8) == served_text(
            vllm_chat.url, prompt, "intent", 8
        )
    finally:
        unload = {"lora_name": "intent-2"}
        requests.post(f"{vllm_chat.url}/v1/unload_lora_adapter", json=unload, timeout=60)
    gone = requests.post(
        f"{vllm_chat.url}/v1/chat/completions",
        json={"model": "intent-2", "messages": [{"role": "user", "content": prompt}]},
        timeout=60,
    )
    assert gone.status_code == 404, gone.text


def test_this_guides_server_serves_no_adapter(llm_server):
    reply = requests.post(
        f"{llm_server.url}/v1/chat/completions",
        json={"model": "intent", "messages": [{"role": "user", "content": "Hello"}]},
        timeout=30,
    )
    assert reply.status_code == 404
    assert reply.json()["error"]["param"] == "model"
