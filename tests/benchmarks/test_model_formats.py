"""benchmarks/model_formats.py: every format of both models loads and agrees with float32."""

import json
import re
import sys

from helpers import REPO


def test_quick_run(run_quick, smollm2_dir):
    result, _ = run_quick("model_formats.py")
    rows = {(r["model"], r["format"]): r for r in result["rows"]}
    assert len(rows) == 10
    cosine = {
        f: float(r["agreement"].split()[1]) for (m, f), r in rows.items() if m == "all-MiniLM-L6-v2"
    }
    assert (
        cosine["safetensors float32"] > 0.99999
        and cosine["pickle (torch.save of the module)"] > 0.99999
    )
    assert cosine["ONNX (onnxruntime)"] > 0.9999 and cosine["safetensors bfloat16"] > 0.99
    assert cosine["dynamic int8 (Linear layers)"] > 0.9
    llm = {
        f: int(re.match(r"(\d+)%", r["agreement"]).group(1))
        for (m, f), r in rows.items()
        if m != "all-MiniLM-L6-v2"
    }
    assert llm["safetensors float32"] == 100 and llm["GGUF Q4_1 (read by transformers)"] == 100
    bf16 = rows[("all-MiniLM-L6-v2", "safetensors bfloat16")]["size_mb"]
    f32 = rows[("all-MiniLM-L6-v2", "safetensors float32")]["size_mb"]
    assert abs(bf16 * 2 - f32) < 1  # half the bytes


def test_published_table_matches_published_json():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import model_formats

    result = json.loads((REPO / "benchmarks" / "results" / "model_formats.json").read_text())
    assert not result["quick"]
    assert (
        REPO / "benchmarks" / "results" / "model_formats.md"
    ).read_text() == model_formats.markdown_table(result)
