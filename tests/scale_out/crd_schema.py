"""Custom resources checked as the API server checks them: against the schema their project
publishes in its CustomResourceDefinition, unknown fields rejected (strict field validation, the
`kubectl apply` default). kubernetes-validate knows only Kubernetes' own kinds, so custom
resources go through here.

The schema files beside this module are one version's `openAPIV3Schema` from a published CRD, as
compact JSON, gzipped (SCHEMAS says where each comes from). To refresh one for another release:

    python tests/scale_out/crd_schema.py path/to/crd.yaml VERSION OUT.json.gz
"""

import gzip
import json
import sys
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

HERE = Path(__file__).parent
SCHEMAS = {  # file -> the CRD it was taken from: repository, path, release tag, CRD version
    "kserve-v0.20.0-inferenceservice-schema.json.gz": (
        "kserve/kserve config/crd/full/serving.kserve.io_inferenceservices.yaml, v0.20.0, v1beta1"
    ),
    "keda-v2.20.2-scaledobject-v1alpha1-schema.json.gz": (
        "kedacore/keda config/crd/bases/keda.sh_scaledobjects.yaml, v2.20.2, v1alpha1"
    ),
}


def schema_from_crd(crd: dict, version: str) -> dict:
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


def strict_validator(schema_file: str) -> Draft202012Validator:
    """A strict validator for one of the committed schema files (a name from SCHEMAS)."""
    schema = json.loads(gzip.decompress((HERE / schema_file).read_bytes()))
    return Draft202012Validator(strict(schema))


def problems(manifest: dict, validator: Draft202012Validator) -> list[str]:
    """Every schema violation in the manifest, as 'path: message'."""
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    )


def refresh(crd_path: str, version: str, out: str) -> None:
    """Write one version's schema from a CRD file (byte-for-byte reproducible: no gzip timestamp)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads 2 MB in a second
    crd = yaml.load(Path(crd_path).read_text(), Loader=loader)
    text = json.dumps(schema_from_crd(crd, version), separators=(",", ":"), sort_keys=True)
    Path(out).write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))


if __name__ == "__main__":
    refresh(*sys.argv[1:4])
