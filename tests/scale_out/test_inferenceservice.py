"""The KServe manifest on the Scaling out page is valid for KServe, and the check can fail.

It is validated against the InferenceService schema that KServe publishes in its CRD
(`config/crd/full/serving.kserve.io_inferenceservices.yaml`, release v0.20.0), with unknown fields
rejected as `kubectl apply` rejects them (strict field validation, the kubectl default). The
`kserve` SDK is not used: kserve 0.21.0 pins psutil<6 while this environment's ipython needs
psutil>=7, and its models drop misspelt fields silently instead of rejecting them.

The schema file beside this test is that CRD's v1beta1 schema as compact JSON, gzipped; the strict
check and the refresh command are shared with the other custom resources (scale_out/crd_schema.py).
"""

import copy
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from scale_out.crd_schema import problems, schema_from_crd, strict, strict_validator

SCHEMA_FILE = "kserve-v0.20.0-inferenceservice-schema.json.gz"
MANIFEST = Path(__file__).resolve().parents[2] / "snippets" / "scale_out" / "inferenceservice.yaml"


def predictor(manifest: dict) -> dict:
    return manifest["spec"]["predictor"]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return strict_validator(SCHEMA_FILE)


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
    closed = strict(schema_from_crd(crd, "v1beta1"))
    assert closed["additionalProperties"] is False
    assert closed["properties"]["spec"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
    assert closed["properties"]["labels"]["additionalProperties"] == {"type": "string"}
