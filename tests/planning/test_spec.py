"""planning/spec.py: the example specs are valid; every bad value gets a one-line message naming its field."""

import subprocess
import sys

import pytest
import yaml
from helpers import REPO, SNIPPETS, load_snippet, run_snippet

spec = load_snippet("planning/spec.py")
MODELS = spec.known_model_names()
EXAMPLES = sorted((REPO / "data" / "specs").glob("*.yaml"))
GOOD = yaml.safe_load((REPO / "data" / "specs" / "internal-chat.yaml").read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid(path):
    assert spec.validate(yaml.safe_load(path.read_text()), MODELS) == []
    assert run_snippet("planning/spec.py", str(path)).startswith(f"{path}: valid (")


BAD = [
    ({"colour": "blue"}, "'colour': unknown field"),
    ({"requests_per_day": -5}, "'requests_per_day': must be >= 0, got -5"),
    ({"latency_p95_ms": 0}, "'latency_p95_ms': must be > 0, got 0"),
    ({"budget_per_month_usd": None}, "'budget_per_month_usd': must be a number, got None"),
    ({"input_tokens": 2.5}, "'input_tokens': must be an integer, got 2.5"),
    (
        {"use_case": "chatting"},
        "'use_case': must be one of chat, generation, embedding, classification",
    ),
    ({"availability": 99.9}, "'availability': must be a fraction between 0 and 1, e.g. 0.999"),
    ({"model": "gpt-99"}, "'model': unknown model 'gpt-99'"),
    (
        {"model": 7},
        "'model': must name a model in data/model_configs.yaml or the path of a config.json",
    ),
    (
        {"privacy": {"pii": True, "data_residency": ["MARS"], "on_premises": False}},
        "'privacy': data_residency must be a list of ANY, EU, US, UK, APAC",
    ),
    (
        {"peak_requests_per_second": 0.01},
        "'peak_requests_per_second': below the daily average (0.07/s)",
    ),
    (
        {"peak_hours_per_day": 0},
        "'peak_hours_per_day': must be the hours per day at peak load, more than 0",
    ),
    ({"peak_hours_per_day": 25}, "'peak_hours_per_day': must be the hours per day at peak load"),
    # 0.8/s for 3 h = 0.8 x 3 x 3,600 = 8,640 requests, but the day has only 6,000: 6,000 / 2,880 = 2.08 h
    (
        {"peak_hours_per_day": 3},
        (
            "'peak_hours_per_day': 3 h at the peak rate is 8,640 requests, more than "
            "requests_per_day (6,000); at most 2.08 h"
        ),
    ),
    (
        {"dtype": {"weights": "fp4"}},
        "'dtype': must map weights to one of bf16, fp8, int8, int4 and/or kv_cache to one of bf16, fp8",
    ),
    ({"dtype": {"activations": "fp8"}}, "'dtype': must map weights to one of"),
    (
        {"dtype": {"kv_cache": "int4"}},
        "'dtype': must map weights to one of",
    ),  # vLLM has no int4 KV cache
    ({"max_context_tokens": 0}, "'max_context_tokens': must be > 0, got 0"),
    # a typical request is 800 + 250 tokens, so the longest cannot be 1,000
    (
        {"max_context_tokens": 1000},
        "'max_context_tokens': 1,000 is shorter than a typical request (input_tokens + output_tokens = 1,050)",
    ),
    ({"quality_bar": " "}, "'quality_bar': must say how quality is judged"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_each_bad_value_is_named(change, message):
    problems = spec.validate({**GOOD, **change}, MODELS)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_dtype_is_optional_and_takes_weights_and_kv_cache_separately():
    assert spec.validate({**GOOD, "dtype": {"weights": "int4", "kv_cache": "fp8"}}, MODELS) == []
    assert spec.validate({k: v for k, v in GOOD.items() if k != "dtype"}, MODELS) == []


def test_missing_budget_and_all_problems_at_once(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "budget_per_month_usd"} | {
        "requests_per_day": -1,
        "x": 1,
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = subprocess.run(
        [sys.executable, SNIPPETS / "planning/spec.py", path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"{path}: 'x': unknown field",
        f"{path}: 'requests_per_day': must be >= 0, got -1",
        f"{path}: 'budget_per_month_usd': missing",
    ]


def test_unreadable_spec_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed")
    proc = subprocess.run(
        [sys.executable, SNIPPETS / "planning/spec.py", path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "cannot read the spec" in proc.stderr and "Traceback" not in proc.stderr


def test_model_may_be_the_path_of_a_config_json(tmp_path):
    """Relative to the spec's folder; a missing file is named."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "model": "my-model/config.json"}))
    with pytest.raises(spec.SpecError) as error:
        spec.load_spec(path, MODELS)
    assert (
        str(error.value)
        == f"{path}: 'model': no config.json at {tmp_path / 'my-model/config.json'}"
    )
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    loaded = spec.load_spec(path, MODELS)
    assert spec.config_path(loaded, path) == tmp_path / "my-model" / "config.json"
