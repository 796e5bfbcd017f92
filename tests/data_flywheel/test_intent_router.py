"""data_flywheel/intent_router.py and registry.py: requests in flight keep their head through a
promote or rollback, a canary of the stable version is refused, a version name can never reach
outside the registry, and text the embedding model cannot take is the client's 4xx.

All but the last test run against a stand-in embedding server. It answers like the embedding
server (base64 float32) but holds every request until the test lets it go, so "a promote lands
while requests are being embedded" happens on every run.
"""

import base64
import re
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from helpers import SNIPPETS, free_port, load_snippet, serve, serve_app, wait_until

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
    """A registry with v1 and v2, and beside it a head in a folder that is not in the registry."""
    root = tmp_path_factory.mktemp("router")
    for seed, version in enumerate(("v1", "v2")):
        registry.save(root / "registry", version, tiny_head(seed), {})
    registry.save(root, "outside", tiny_head(2), {})  # root/outside: reachable as ../outside
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


BAD_NAMES = ["../outside", ".", "..", "v1/../v2", "", "v 1", "v1\n", "vé", "v" * 101]


def test_a_version_name_outside_the_registry_is_400(router, registry_dir):
    """A version name is a folder name in the registry: '../outside' or an absolute path would load
    the head beside it, and '.', '..' or an empty name the registry itself or its parent."""
    for name in [*BAD_NAMES, str(registry_dir.parent / "outside")]:
        error = error_of(httpx.post(router + "/v1/canary", json={"candidate": name}), 400)
        assert error["param"] == "candidate" and "'candidate'" in error["message"], name
    assert httpx.get(router + "/v1/versions").json()["candidate"] is None


def test_the_openapi_schema_describes_a_version_name(router):
    """The fuzzing tests generate requests from the schema: it must say what a name may be."""
    schema = httpx.get(router + "/openapi.json").json()
    candidate = schema["components"]["schemas"]["CanaryRequest"]["properties"]["candidate"]
    pattern = re.compile(candidate["pattern"])  # JSON Schema patterns are searched, not matched
    assert all(pattern.search(name) for name in ("v1", "v1.2_rc-3", ".hidden", "..."))
    assert not any(pattern.search(name) for name in ("..", ".", "../x", "/etc", "", "a b", "vé"))
    assert candidate["maxLength"] == 100


def test_the_registry_refuses_names_outside_it(registry_dir):
    for name in ["../escaped", str(registry_dir.parent / "escaped"), ".", "..", "a/b", ""]:
        with pytest.raises(ValueError, match=r"^'.*' is not a version name: [^\n]*$"):
            registry.save(registry_dir, name, tiny_head(0), {})
        with pytest.raises(ValueError, match="is not a version name"):
            registry.load(registry_dir, name)
    assert not (registry_dir.parent / "escaped").exists()
    assert registry.load(registry_dir, "v1")[1]["version"] == "v1"


def test_the_cli_refuses_a_stable_version_outside_the_registry(registry_dir):
    proc = subprocess.run(
        [
            sys.executable,
            str(SNIPPETS / ROUTER),
            *("--port", str(free_port()), "--registry", str(registry_dir)),
            *("--stable", "../outside"),
        ],
        capture_output=True,
        text=True,
        timeout=30,  # a router that accepted the name would serve until killed
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last_line = proc.stderr.strip().splitlines()[-1]
    assert "error: '../outside' is not a version name" in last_line


def test_text_the_embedding_model_cannot_take_is_the_clients_error(
    embedding_server, minilm_heads_registry
):
    """Behind the real embedding server (schemathesis found a tab-only text answered 502): text
    that is only whitespace is refused by the router itself, and text over the model's 256 tokens
    comes back as the embedding server's 400 with its reason, not as the router's 502."""
    args = ["--registry", str(minilm_heads_registry), "--stable", "v1"]
    with serve(ROUTER, *args, "--embedding-url", embedding_server.url) as router:
        blank = httpx.post(router.url + "/v1/classify", json={"text": " \t\n"})
        too_long = httpx.post(router.url + "/v1/classify", json={"text": "refund " * 300})
        fine = httpx.post(router.url + "/v1/classify", json={"text": "I want my money back"})
    error = error_of(blank, 400)
    assert error["param"] == "text" and "is only whitespace" in error["message"]
    error = error_of(too_long, 400)
    assert error["param"] == "text" and error["code"] == "context_length_exceeded"
    assert "the limit is 256" in error["message"], error
    assert fine.status_code == 200 and fine.json()["model_version"] == "v1"
