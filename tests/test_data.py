"""The data files behind the catalogue pages: complete, dated, sourced, and carrying the verified
facts the pages state. The pages render from them (hooks/render_data.py)."""

import re
import sys

import pytest
import yaml
from helpers import REPO

sys.path.insert(0, str(REPO / "hooks"))
import render_data

BACKENDS = yaml.safe_load((REPO / "data" / "backends.yaml").read_text())["backends"]
FIELDS = [
    "name",
    "kind",
    "for",
    "api",
    "batching",
    "hardware",
    "licence",
    "status",
    "evidence",
    "checked",
    "link",
    "start",
    "choose_when",
]


@pytest.mark.parametrize("entry", BACKENDS, ids=[b["name"] for b in BACKENDS])
def test_every_backend_is_complete_and_dated(entry):
    assert [f for f in FIELDS if not entry.get(f)] == []
    assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", str(entry["checked"]))
    assert entry["link"].startswith("https://")


def test_the_catalogue_covers_the_projects_the_guide_names():
    names = " ".join(b["name"] for b in BACKENDS)
    for project in [
        "vLLM",
        "SGLang",
        "TGI",
        "Triton",
        "Dynamo",
        "TorchServe",
        "TensorRT-LLM",
        "llm-d",
        "TEI",
        "MLX",
        "LitServe",
        "LitGPT",
        "Ray Serve",
        "BentoML",
        "KServe",
        "llama.cpp",
        "Ollama",
        "azurechat",
        "SageMaker AI",
    ]:
        assert project in names, project


def by_name(fragment: str) -> dict:
    return next(b for b in BACKENDS if fragment in b["name"])


def test_verified_status_facts():
    assert by_name("TorchServe")["status"] == "archived"
    assert "2025-08-07" in by_name("TorchServe")["evidence"]
    tgi = by_name("TGI")
    assert tgi["status"] == "maintenance mode" and "2025-12" in tgi["evidence"]
    assert "vLLM, SGLang, llama.cpp and MLX" in tgi["evidence"]
    assert (
        "renamed from Lit-GPT to LitGPT" in by_name("LitGPT")["evidence"]
        and "2024-03" in by_name("LitGPT")["evidence"]
    )
    assert by_name("azurechat")["link"] == "https://github.com/microsoft/azurechat"
    assert by_name("llama.cpp")["link"] == "https://github.com/ggml-org/llama.cpp"
    assert "successor" in by_name("Dynamo")["evidence"]


def test_pages_render_every_entry_and_reject_unknown_markers():
    table = render_data.backends_table()
    assert all(f"[{b['name']}]({b['link']})" in table for b in BACKENDS)
    assert "**archived**" in table and "**maintenance mode**" in table
    page = (REPO / "docs" / "backends" / "index.md").read_text()
    rendered = render_data.render(page)
    assert "<!-- render:" not in rendered and "**TorchServe** when never for new work" in rendered
    tutorials = render_data.tutorials_table()
    assert "[archived copy](https://web.archive.org/web/2023/https://neptune.ai/" in tutorials
    with pytest.raises(ValueError, match="unknown render marker 'nope'"):
        render_data.render("<!-- render: nope -->")


LLM_FEATURES = ["tool_calling", "lora", "batch_jobs"]
SUPPORT = {"yes", "partial", "no", "unknown"}
WITH_FEATURES = [b for b in BACKENDS if "features" in b]


def test_the_llm_engines_say_what_they_support_with_a_version_and_a_registered_source():
    registered = {
        e["url"] for e in yaml.safe_load((REPO / "data" / "links.yaml").read_text())["links"]
    }
    names = {b["name"] for b in WITH_FEATURES}
    assert {"vLLM", "SGLang", "TensorRT-LLM", "llama.cpp server", "Ollama"} <= names
    for entry in WITH_FEATURES:
        for key in LLM_FEATURES:
            fact = entry["features"][key]
            assert fact["support"] in SUPPORT, (entry["name"], key)
            assert fact["how"] and "|" not in fact["how"], (entry["name"], key)
            if fact["support"] == "unknown":
                assert "not found" in fact["how"], (entry["name"], key)
                continue
            assert fact["version"] and fact["source"] in registered, (entry["name"], key)
    assert "400" in by_name("vLLM")["features"]["tool_calling"]["how"]


def test_the_feature_table_has_one_row_per_engine_and_sits_on_the_features_page():
    table = render_data.feature_support_table()
    rows = [line for line in table.splitlines() if line.startswith("| [")]
    assert [row.split("](")[0][3:] for row in rows] == [b["name"] for b in WITH_FEATURES]
    assert all(row.count(" | ") == 3 for row in rows)
    page = render_data.render((REPO / "docs" / "backends" / "features.md").read_text())
    assert rows[0] in page and "<!-- render:" not in page
