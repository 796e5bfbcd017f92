"""data_flywheel/intent_router.py and registry.py against a stand-in embedding server: requests in
flight keep their head through a promote or rollback, and a canary of the stable version is
refused.

The stand-in answers like the embedding server (base64 float32) but holds every request until the
test lets it go, so "a promote lands while requests are being embedded" happens on every run.
"""

import base64
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from helpers import load_snippet, serve, serve_app, wait_until

ROUTER = "data_flywheel/intent_router.py"
registry = load_snippet("data_flywheel/registry.py")
DIM = 8  # the stand-in's embedding size; the heads below are trained on it
SHARE = 0.5


class GatedEmbedder:
    """A stand-in embedding server whose answers wait until `gate` is set; `arrived` counts the
    requests it has received, so a test knows when they are all in flight."""

    def __init__(self):
        self.gate, self.lock, self.arrived = threading.Event(), threading.Lock(), 0
        self.gate.set()
        self.app = FastAPI()
        self.app.post("/v1/embeddings")(self.embeddings)

    def embeddings(self, body: dict) -> dict:
        with self.lock:
            self.arrived += 1
        self.gate.wait(timeout=60)
        return {"data": [{"embedding": self.vector(text)} for text in body["input"]]}

    @staticmethod
    def vector(text: str) -> str:
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        return base64.b64encode(rng.normal(size=DIM).astype("<f4").tobytes()).decode()


@pytest.fixture(scope="module")
def embedder():
    stub = GatedEmbedder()
    with serve_app(stub.app) as url:
        stub.url = url
        yield stub


def tiny_head(seed: int):
    rng = np.random.default_rng(seed)
    return registry.train_head(rng.normal(size=(40, DIM)), ["billing_refund", "other"] * 20)


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory):
    """A registry with v1 and v2."""
    root = tmp_path_factory.mktemp("router")
    for seed, version in enumerate(("v1", "v2")):
        registry.save(root / "registry", version, tiny_head(seed), {})
    return root / "registry"


@pytest.fixture
def router(registry_dir, embedder):
    args = ("--registry", str(registry_dir), "--stable", "v1", "--embedding-url", embedder.url)
    with serve(ROUTER, *args) as handle:
        yield handle.url


def expected_version(user: str) -> str:
    """The side of the canary the router puts `user` on (a hash of the caller, as it documents)."""
    return "v2" if zlib.crc32(user.encode()) % 10_000 < SHARE * 10_000 else "v1"


def classify_during(router: str, embedder: GatedEmbedder, users: list[str], change: str) -> list:
    """Send one classify request per user, hold them all inside the embedding call, POST the
    `change` (promote or rollback), then let them finish; return their responses."""
    embedder.gate.clear()
    start = embedder.arrived
    try:
        with ThreadPoolExecutor(len(users)) as pool:
            futures = [
                pool.submit(
                    httpx.post,
                    router + "/v1/classify",
                    json={"text": "I want my money back", "user": user},
                    timeout=60,
                )
                for user in users
            ]
            assert wait_until(lambda: embedder.arrived - start == len(users), timeout=30)
            changed = httpx.post(f"{router}/v1/{change}", timeout=30)
            assert changed.status_code == 200, changed.text
            embedder.gate.set()
            return [future.result() for future in futures]
    finally:
        embedder.gate.set()


@pytest.mark.parametrize("change", ["promote", "rollback"])
def test_requests_in_flight_keep_their_head_through_promote_and_rollback(router, embedder, change):
    """A promote unloads the old stable head and a rollback the candidate's while requests that
    picked them are waiting for their embeddings: each still answers 200 with the head it picked."""
    canary = httpx.post(router + "/v1/canary", json={"candidate": "v2", "share": SHARE})
    assert canary.status_code == 200, canary.text
    users = [f"user-{i}" for i in range(16)]
    assert {expected_version(u) for u in users} == {"v1", "v2"}  # both heads are in use
    responses = classify_during(router, embedder, users, change)
    assert [r.status_code for r in responses] == [200] * len(users), [r.text for r in responses]
    assert [r.json()["model_version"] for r in responses] == list(map(expected_version, users))
    after = httpx.get(router + "/v1/versions").json()
    assert (after["stable"], after["candidate"]) == ("v2" if change == "promote" else "v1", None)


def error_of(response: httpx.Response, status: int) -> dict:
    """The OpenAI-style error body of a response that must have `status`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def test_a_canary_of_the_stable_version_is_409(router):
    error = error_of(httpx.post(router + "/v1/canary", json={"candidate": "v1"}), 409)
    assert (error["param"], error["code"]) == ("candidate", "candidate_is_stable")
    assert "'v1' is already the stable version" in error["message"]
    assert httpx.get(router + "/v1/versions").json()["candidate"] is None
