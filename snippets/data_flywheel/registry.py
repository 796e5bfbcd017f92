"""A model registry in a folder: each version of the intent classifier head with its metadata.

    registry/v3/head.npz     the logistic-regression weights (numpy arrays, no pickle)
    registry/v3/meta.json    version, parent, classes, what it was trained on, its evaluation

A version name is its folder's name, so `check_version` refuses one that could lead outside the
registry ('../x', an absolute path, '.' or '..') before anything is read or written.

Weights are stored as plain arrays and loaded with allow_pickle=False: a registry is shared
storage, and a pickled scikit-learn object would run code when loaded (see the servable-model
page). At scale use an experiment tracker's registry (MLflow's, for example); the layout is the same.
"""

import json
import re
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

# A version name is the name of its folder, so it must never lead out of the registry: letters,
# digits, '.', '_' and '-', and not '.' or '..'. The pattern says so without lookarounds (not every
# JSON Schema tool has them): a name starts with a character that is not a dot, or with one dot and
# then one that is not, or with two dots and then anything. The router's OpenAPI schema states it.
NAME_CHAR, NOT_DOT = "[A-Za-z0-9._-]", "[A-Za-z0-9_-]"
VERSION_PATTERN = rf"^(?:{NOT_DOT}|\.{NOT_DOT}|\.\.{NAME_CHAR}){NAME_CHAR}*$"
VERSION_MAX_LENGTH = 100


def check_version(version: str) -> str:
    """Return `version` if it can name a folder inside the registry, else raise a one-line error."""
    if (
        isinstance(version, str)
        and len(version) <= VERSION_MAX_LENGTH
        and re.fullmatch(VERSION_PATTERN, version)
    ):
        return version
    shown = repr(version) if len(repr(version)) <= 60 else repr(version)[:56] + "...'"
    raise ValueError(
        f"{shown} is not a version name: use up to {VERSION_MAX_LENGTH} letters, digits, "
        "'.', '_' and '-', and not '.' or '..'"
    )


def train_head(embeddings: np.ndarray, labels: list[str], seed: int = 0) -> LogisticRegression:
    """A logistic-regression head over sentence embeddings: small, fast, calibrated enough."""
    return LogisticRegression(max_iter=2000, C=4.0, random_state=seed).fit(embeddings, labels)


def save(registry: Path, version: str, head: LogisticRegression, meta: dict) -> Path:
    folder = registry / check_version(version)
    folder.mkdir(parents=True, exist_ok=False)  # a version is written once, never overwritten
    np.savez(
        folder / "head.npz",
        coef=head.coef_,
        intercept=head.intercept_,
        classes=head.classes_.astype(str),
    )
    meta = {
        "version": version,
        "created_at": time.time(),
        "classes": head.classes_.tolist(),
        **meta,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load(registry: Path, version: str) -> tuple[LogisticRegression, dict]:
    """The head, ready for predict / predict_proba, and its metadata."""
    folder = registry / check_version(version)
    if not (folder / "head.npz").is_file():
        raise FileNotFoundError(f"no version '{version}' in {registry}")
    arrays = np.load(folder / "head.npz", allow_pickle=False)
    head = LogisticRegression()
    head.coef_, head.intercept_, head.classes_ = (
        arrays["coef"],
        arrays["intercept"],
        arrays["classes"],
    )
    return head, json.loads((folder / "meta.json").read_text())


def versions(registry: Path) -> list[str]:
    """Registered versions, oldest first."""
    metas = [json.loads(p.read_text()) for p in registry.glob("*/meta.json")]
    return [m["version"] for m in sorted(metas, key=lambda m: m["created_at"])]
