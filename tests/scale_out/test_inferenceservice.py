"""The KServe manifest on the Scaling out page is valid for KServe, and the check can fail.

It is validated against the InferenceService schema that KServe publishes in its CRD
(`config/crd/full/serving.kserve.io_inferenceservices.yaml`, release v0.20.0), with unknown fields
rejected as `kubectl apply` rejects them (strict field validation, the kubectl default). The
`kserve` SDK is not used: kserve 0.21.0 pins psutil<6 while this environment's ipython needs
psutil>=7, and its models drop misspelt fields silently instead of rejecting them.

The schema file beside this test is that CRD's v1beta1 schema as compact JSON, gzipped. To
refresh it for another KServe release:

    python tests/scale_out/test_inferenceservice.py path/to/serving.kserve.io_inferenceservices.yaml
"""

import copy
import gzip
import json
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

SCHEMA_FILE = Path(__file__).with_name("kserve-v0.20.0-inferenceservice-schema.json.gz")
MANIFEST = Path(__file__).resolve().parents[2] / "snippets" / "scale_out" / "inferenceservice.yaml"


def schema_from_crd(crd: dict, version: str = "v1beta1") -> dict:
    """The OpenAPI v3 schema of one version of a CustomResourceDefinition."""
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


def strict(schema):
    """A copy in which objects with declared properties accept no others.

    The API server drops unknown fields unless asked for strict field validation, which
    `kubectl apply` asks for by default; objects marked x-kubernetes-preserve-unknown-fields,
    or with their own additionalProperties, stay open.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def problems(manifest: dict, validator: Draft202012Validator) -> list[str]:
    """Every schema violation in the manifest, as 'path: message'."""
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    )


def predictor(manifest: dict) -> dict:
    return manifest["spec"]["predictor"]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(gzip.decompress(SCHEMA_FILE.read_bytes()))
    return Draft202012Validator(strict(schema))


@pytest.fixture
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_manifest_matches_kserve_schema(manifest, validator):
    assert problems(manifest, validator) == []


def test_fields_the_page_relies_on(manifest):
    """The page explains each of these choices: a change here must change the page too."""
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
    assert manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    scaling = {
        k: predictor(manifest)[k]
        for k in ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget")
    }
    assert scaling == {
        "minReplicas": 1,
        "maxReplicas": 4,
        "scaleMetric": "concurrency",
        "scaleTarget": 8,
    }
    model = predictor(manifest)["model"]
    assert model["modelFormat"]["name"] == "huggingface"
    assert model["storageUri"] == "hf://sentence-transformers/all-MiniLM-L6-v2"
    assert {"--backend=huggingface", "--task=text_embedding"} <= set(model["args"])
    resources = model["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "2", "memory": "2Gi"}


def rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


MISTAKES = [  # (what is wrong, how to break the manifest, what the check must say)
    (
        "misspelt field",
        lambda m: rename(predictor(m), "minReplicas", "minReplica"),
        ["spec.predictor: Additional properties are not allowed ('minReplica' was unexpected)"],
    ),
    (
        "misplaced field",
        lambda m: rename(m["spec"], "predictor", "model"),
        [
            "spec: 'predictor' is a required property",
            "spec: Additional properties are not allowed ('model' was unexpected)",
        ],
    ),
    (
        "string for an integer",
        lambda m: predictor(m).update(maxReplicas="four"),
        ["spec.predictor.maxReplicas: 'four' is not of type 'integer'"],
    ),
    (
        "unknown scale metric",
        lambda m: predictor(m).update(scaleMetric="latency"),
        [
            (
                "spec.predictor.scaleMetric: 'latency' is not one of "
                "['cpu', 'memory', 'concurrency', 'rps']"
            )
        ],
    ),
    (
        "model format without a name",
        lambda m: predictor(m)["model"]["modelFormat"].pop("name"),
        ["spec.predictor.model.modelFormat: 'name' is a required property"],
    ),
    (
        "args as one string",
        lambda m: predictor(m)["model"].update(args="--task=text_embedding"),
        ["spec.predictor.model.args: '--task=text_embedding' is not of type 'array'"],
    ),
]


@pytest.mark.parametrize("change, expected", [pytest.param(*m[1:], id=m[0]) for m in MISTAKES])
def test_mistakes_are_rejected(change, expected, manifest, validator):
    broken = copy.deepcopy(manifest)
    change(broken)
    assert problems(broken, validator) == sorted(expected)


def test_schema_from_crd_picks_the_version_and_strict_closes_objects():
    crd = {
        "spec": {
            "versions": [
                {"name": "v1alpha1", "schema": {"openAPIV3Schema": {"type": "string"}}},
                {
                    "name": "v1beta1",
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"n": {"type": "integer"}},
                                },
                                "free": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                    "properties": {"a": {"type": "string"}},
                                },
                                "labels": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        }
                    },
                },
            ]
        }
    }
    closed = strict(schema_from_crd(crd))
    assert closed["additionalProperties"] is False
    assert closed["properties"]["spec"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
    assert closed["properties"]["labels"]["additionalProperties"] == {"type": "string"}


def refresh(crd_path: str) -> None:
    """Rewrite the schema file from a CRD file (byte-for-byte reproducible: no gzip timestamp)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads 2 MB in a second
    crd = yaml.load(Path(crd_path).read_text(), Loader=loader)
    text = json.dumps(schema_from_crd(crd), separators=(",", ":"), sort_keys=True)
    SCHEMA_FILE.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))


if __name__ == "__main__":
    refresh(sys.argv[1])
