"""Customer needs as a small YAML spec, with a validator that names the field of every bad value.

    python snippets/planning/spec.py data/specs/internal-chat.yaml

Every problem gets its own one-line message (`spec.yaml: 'field': what is wrong`), all of them at
once, so a customer fixes the spec in one pass.

`model` names a model in data/model_configs.yaml or is the path of a config.json (relative paths
are read from the spec's folder), so any supported architecture can be planned. `input_tokens` and
`output_tokens` are a typical request; `max_context_tokens`, if given, is the longest request the
service must accept (prompt plus answer), which sets the engine's --max-model-len.
"""

import argparse
import sys
from pathlib import Path

import yaml

USE_CASES = ("chat", "generation", "embedding", "classification")
REGIONS = ("ANY", "EU", "US", "UK", "APAC")
DTYPES = ("bf16", "fp8", "int8", "int4")
KV_DTYPES = ("bf16", "fp8")  # what vLLM's --kv-cache-dtype offers (auto = the model's bf16)
FIELDS = {  # name: (required, check) - each check returns an error message or None
    "name": (
        True,
        lambda v: None if isinstance(v, str) and v.strip() else "must be a non-empty string",
    ),
    "use_case": (
        True,
        lambda v: None if v in USE_CASES else f"must be one of {', '.join(USE_CASES)}",
    ),
    "model": (
        True,
        lambda v: (
            None
            if isinstance(v, str) and v
            else "must name a model in data/model_configs.yaml or the path of a config.json"
        ),
    ),
    "users": (False, lambda v: positive(v, integer=True)),
    "requests_per_day": (True, lambda v: non_negative(v)),
    "peak_requests_per_second": (True, lambda v: positive(v)),
    "peak_hours_per_day": (
        True,
        lambda v: (
            None
            if number(v) and 0 < v <= 24
            else f"must be the hours per day at peak load, more than 0 and at most 24, got {v!r}"
        ),
    ),
    "input_tokens": (True, lambda v: positive(v, integer=True)),
    "output_tokens": (True, lambda v: non_negative(v, integer=True)),
    "max_context_tokens": (False, lambda v: positive(v, integer=True)),
    "latency_p95_ms": (True, lambda v: positive(v)),
    "ttft_p95_ms": (False, lambda v: positive(v)),
    "dtype": (False, lambda v: check_dtype(v)),
    "availability": (
        True,
        lambda v: (
            None if number(v) and 0 < v < 1 else "must be a fraction between 0 and 1, e.g. 0.999"
        ),
    ),
    "privacy": (True, lambda v: check_privacy(v)),
    "budget_per_month_usd": (True, lambda v: positive(v)),
    "quality_bar": (
        True,
        lambda v: None if isinstance(v, str) and v.strip() else "must say how quality is judged",
    ),
}


class SpecError(ValueError):
    """All problems of one spec; str() gives one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive(v, integer: bool = False) -> str | None:
    if not number(v) or (integer and not isinstance(v, int)):
        return f"must be {'an integer' if integer else 'a number'}, got {v!r}"
    return None if v > 0 else f"must be > 0, got {v!r}"


def non_negative(v, integer: bool = False) -> str | None:
    if not number(v) or (integer and not isinstance(v, int)):
        return f"must be {'an integer' if integer else 'a number'}, got {v!r}"
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def check_privacy(v) -> str | None:
    if not isinstance(v, dict) or set(v) != {"pii", "data_residency", "on_premises"}:
        return "must have exactly pii, data_residency and on_premises"
    if not isinstance(v["pii"], bool) or not isinstance(v["on_premises"], bool):
        return "pii and on_premises must be true or false"
    regions = v["data_residency"]
    if not isinstance(regions, list) or not regions or not set(regions) <= set(REGIONS):
        return f"data_residency must be a list of {', '.join(REGIONS)}"
    return None


def check_dtype(v) -> str | None:
    if (
        not isinstance(v, dict)
        or not v
        or not set(v) <= {"weights", "kv_cache"}
        or v.get("weights", "bf16") not in DTYPES
        or v.get("kv_cache", "bf16") not in KV_DTYPES
    ):
        return (
            f"must map weights to one of {', '.join(DTYPES)} and/or kv_cache to one of "
            f"{', '.join(KV_DTYPES)}"
        )
    return None


def check_peak_window(spec: dict, problems: list[str]) -> list[str]:
    """Cross-field checks of the traffic figures, once each of them is valid on its own."""
    fields = ("requests_per_day", "peak_requests_per_second", "peak_hours_per_day")
    if (
        any(p.startswith(tuple(f"'{f}'" for f in fields)) for p in problems)
        or not set(fields) <= spec.keys()
    ):
        return []
    per_day, peak, hours = (spec[f] for f in fields)
    if peak < per_day / 86_400:
        return [
            (
                f"'peak_requests_per_second': below the daily average ({per_day / 86_400:.2f}/s); "
                "the peak cannot be lower"
            )
        ]
    if peak * hours * 3600 > per_day:
        return [
            (
                f"'peak_hours_per_day': {hours:g} h at the peak rate is {peak * hours * 3600:,.0f} requests, "
                f"more than requests_per_day ({per_day:,}); at most {per_day / (peak * 3600):.2f} h"
            )
        ]
    return []


def validate(spec: dict, known_models: set[str]) -> list[str]:
    """Every problem in the spec, one message each; an empty list means the spec is valid."""
    if not isinstance(spec, dict):
        return ["the spec must be a YAML mapping of field: value"]
    problems = [f"'{k}': unknown field" for k in spec if k not in FIELDS]
    for name, (required, check) in FIELDS.items():
        if name not in spec:
            if required:
                problems.append(f"'{name}': missing")
            continue
        message = check(spec[name])
        if message:
            problems.append(f"'{name}': {message}")
    model = spec.get("model")
    if isinstance(model, str) and model and model not in known_models and not is_config_path(model):
        problems.append(
            f"'model': unknown model {model!r}; known: {', '.join(sorted(known_models))}, "
            "or the path of a config.json"
        )
    return problems + check_peak_window(spec, problems) + check_context(spec, problems)


def is_config_path(model: str) -> bool:
    return model.endswith(".json")


def check_context(spec: dict, problems: list[str]) -> list[str]:
    """The longest request must hold a typical one."""
    fields = ("max_context_tokens", "input_tokens", "output_tokens")
    if (
        any(p.startswith(tuple(f"'{f}'" for f in fields)) for p in problems)
        or not set(fields) <= spec.keys()
    ):
        return []
    typical = spec["input_tokens"] + spec["output_tokens"]
    if spec["max_context_tokens"] < typical:
        return [
            (
                f"'max_context_tokens': {spec['max_context_tokens']:,} is shorter than a typical "
                f"request (input_tokens + output_tokens = {typical:,})"
            )
        ]
    return []


def config_path(spec: dict, spec_path: Path) -> Path | None:
    """Where a spec's config.json is: as written if absolute, else beside the spec; None for a named model."""
    if not is_config_path(spec["model"]):
        return None
    path = Path(spec["model"]).expanduser()
    return path if path.is_absolute() else spec_path.parent / path


def load_spec(path: Path, known_models: set[str]) -> dict:
    """Read and validate a spec file; raise SpecError naming every problem."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SpecError([f"{path}: cannot read the spec: {str(error).splitlines()[0]}"]) from None
    problems = validate(spec, known_models)
    if not problems and config_path(spec, path) and not config_path(spec, path).is_file():
        problems = [f"'model': no config.json at {config_path(spec, path)}"]
    if problems:
        raise SpecError([f"{path}: {p}" for p in problems])
    return spec


def known_model_names() -> set[str]:
    data = Path(__file__).resolve().parents[2] / "data" / "model_configs.yaml"
    return set(yaml.safe_load(data.read_text())["models"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Validate a customer-needs spec: one line per bad field"
    )
    parser.add_argument("spec", type=Path, help="the spec, a YAML file")
    args = parser.parse_args()
    try:
        spec = load_spec(args.spec, known_model_names())
    except SpecError as error:
        sys.exit(str(error))
    print(f"{args.spec}: valid ({spec['name']}, {spec['use_case']}, {spec['model']})")
