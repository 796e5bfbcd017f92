"""scale_out/embeddings_on_ray.py: the embedding service on Ray Serve, started with its one
command on loopback. The `openai` client gets the model's embeddings; two replicas both serve;
beyond the queue Ray's proxy answers 503 in plain text; the single-process server's guard (keys
from SERVEBOOK_API_KEYS, body cap, rate limit) answers 401, 413 and 429; a replica tokenizes in
one thread off its event loop; SIGTERM leaves no Ray process behind. (test_ray_config.py runs the same app from its config file with `serve run`.)
"""

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
from helpers import REPO, SNIPPETS, free_port, load_snippet, wait_until
from openai import OpenAI

APP = "scale_out/embeddings_on_ray.py"
MODEL = "all-MiniLM-L6-v2"
MAX_ONGOING, MAX_QUEUED = 2, 4  # per replica; at the proxy
KEY, HASHED_KEY, LIMITED_KEY = "sk-ray-test", "sk-ray-hashed", "sk-ray-limited"
RATE_LIMIT = 100  # requests a minute per key, in each replica
MAX_BODY_BYTES = 1_000_000  # the single-process embedding server's cap, shared by the Ray app
GUARD_ENV = {
    "SERVEBOOK_API_KEYS": ",".join(
        [KEY, LIMITED_KEY, "sha256:" + hashlib.sha256(HASHED_KEY.encode()).hexdigest()]
    ),
    "SERVEBOOK_RATE_LIMIT": str(RATE_LIMIT),
}
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor")


def ray_processes() -> list[str]:
    """Command lines of Ray's own processes still running on this machine."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = (
                Path(f"/proc/{pid}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
        if any(name in cmdline for name in RAY_PROCESSES) and "pytest" not in cmdline:
            found.append(cmdline[:120])
    return found


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def start(
    command: list[str], url: str, env: dict, key: str, timeout: float = 240
) -> subprocess.Popen:
    """Start a Ray Serve app with `env` added to this environment and wait until it embeds for
    `key`. Its log goes to a file, never to a pipe nobody reads: Ray logs a lot, and a full pipe
    blocks the process (at shutdown, too)."""
    fd, name = tempfile.mkstemp(prefix="ray-app-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    with log_path.open("w") as log:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env},
        )
    if (
        not wait_until(
            lambda: proc.poll() is not None or ready(url, key), timeout=timeout, interval=0.5
        )
        or proc.poll()
    ):
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"{command[1:3]} did not start: {log_path.read_text()[-3000:]}")
    return proc


def ready(url: str, key: str) -> bool:
    try:
        return (
            requests.post(
                url + "/v1/embeddings",
                json={"model": MODEL, "input": "up?"},
                headers=auth(key),
                timeout=5,
            ).status_code
            == 200
        )
    except requests.RequestException:
        return False


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_app():
    """Two fixed replicas of 2 requests each and a queue of 4 at Ray's proxy: room for 8 at once,
    small enough for a test to fill."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(SNIPPETS / APP), "--port", str(port), "--replicas", "2"]
    proc = start(
        [
            *command,
            "--max-ongoing-requests",
            str(MAX_ONGOING),
            "--max-queued-requests",
            str(MAX_QUEUED),
        ],
        url,
        GUARD_ENV,
        KEY,
    )
    yield url
    assert stop(proc) == 0
    assert wait_until(lambda: not ray_processes(), timeout=30), (
        ray_processes()
    )  # nothing left running


def test_the_openai_client_gets_the_models_embeddings(ray_app, embed_one):
    texts = ["Ray Serve batches inside each replica", "the same answers as the model called alone"]
    reply = OpenAI(base_url=ray_app + "/v1", api_key=KEY).embeddings.create(
        model=MODEL, input=texts
    )
    for item, text in zip(reply.data, texts):
        assert float(np.dot(item.embedding, embed_one(text))) >= 0.9999
    bad = requests.post(
        ray_app + "/v1/embeddings",
        json={"model": MODEL, "input": ["ok", 7]},
        headers=auth(KEY),
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith(
        "Invalid 'input[1]'"
    )


def many_at_once(url: str, texts: list[str], headers: dict | None = None) -> list[httpx.Response]:
    """POST one embedding request per text, all at once, each on its own connection (as many
    clients would); the responses come back in the order of `texts`."""

    async def one(text):
        async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:
            return await client.post("/v1/embeddings", json={"model": MODEL, "input": text})

    async def run():
        return await asyncio.gather(*(one(text) for text in texts))

    return asyncio.run(run())


def long_texts(count: int) -> list[str]:
    """`count` different inputs of about 120 tokens: slow enough to pile requests up."""
    return [f"{i} " + "word " * 120 for i in range(count)]


def test_two_replicas_both_serve(ray_app):
    replicas = set()
    for _ in range(5):
        replicas |= {
            r.headers["x-replica"]
            for r in many_at_once(ray_app, long_texts(8), auth(KEY))
            if r.status_code == 200
        }
        if len(replicas) == 2:
            break
    assert len(replicas) == 2


def test_beyond_the_queue_rays_proxy_answers_503_in_plain_text(ray_app):
    """40 slow requests at once overflow 2 replicas x MAX_ONGOING plus MAX_QUEUED: what fits is
    served, the rest get Ray's own 503, a plain-text sentence (not JSON) with Retry-After."""
    responses = many_at_once(ray_app, long_texts(40), auth(KEY))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses[200] >= MAX_QUEUED, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["content-type"].startswith("text/plain"), refused.headers
    assert refused.text.startswith("Request dropped due to backpressure"), refused.text
    assert f"max_queued_requests={MAX_QUEUED}" in refused.text
    assert refused.headers["retry-after"] == "1"


def post(url: str, body: dict, headers: dict | None = None) -> requests.Response:
    return requests.post(url + "/v1/embeddings", json=body, headers=headers or {}, timeout=60)


def test_only_a_listed_key_gets_an_answer(ray_app):
    """No key or a wrong one: 401 with the OpenAI-style body. A key listed in the variable, or
    listed there only by its SHA-256, gets the embedding. Probes need no key."""
    body = {"model": MODEL, "input": "who is asking?"}
    for headers in ({}, auth("sk-wrong")):
        refused = post(ray_app, body, headers)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"] == "Bearer"
    for key in (KEY, HASHED_KEY):
        assert post(ray_app, body, auth(key)).status_code == 200
    assert requests.get(ray_app + "/health", timeout=30).status_code == 200


def test_a_body_over_the_cap_is_413(ray_app):
    body = {"model": MODEL, "input": "word " * (MAX_BODY_BYTES // 5)}  # just over the cap
    refused = post(ray_app, body, auth(KEY))
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "body_too_large"


def test_past_the_rate_limit_is_429(ray_app):
    """Each replica allows RATE_LIMIT requests a minute per key, so two replicas refuse one key
    after RATE_LIMIT to 2 x RATE_LIMIT requests (cheap ones: an unknown model, a 404)."""
    with requests.Session() as session:
        session.headers.update(auth(LIMITED_KEY))
        for sent in range(1, 2 * RATE_LIMIT + 20):
            answer = session.post(
                ray_app + "/v1/embeddings", json={"model": "none", "input": "x"}, timeout=30
            )
            if answer.status_code != 404:
                break
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(answer.headers["retry-after"]) >= 1 and sent > RATE_LIMIT


def test_a_replica_tokenizes_in_one_thread_off_its_event_loop(monkeypatch):
    """Tokenizing a 1 MB body on the event loop would stall every request on the replica, and a
    fast tokenizer must not run in two threads at once: eight requests' texts are tokenized in one
    thread, never the loop's. The replica is built here, without Ray (@serve.ingress subclasses
    the class in the file; its first base is that class), with the real tokenizer."""
    # benchmarks/embedding_server.py may already be imported under the same module name (the
    # benchmark tests run in this process): the app must import the snippet's, as `serve run` does.
    monkeypatch.delitem(sys.modules, "embedding_server", raising=False)
    replica = load_snippet(APP).Embedder.func_or_class.__bases__[0]()
    tokenizer, threads = replica.tokenizer, set()

    def recording_tokenizer(texts):
        threads.add(threading.get_ident())
        return tokenizer(texts)

    replica.tokenizer = recording_tokenizer

    async def tokenize_eight():
        texts = [[f"request {i}"] for i in range(8)]
        ids = await asyncio.gather(*(replica.tokenize(t) for t in texts))
        return threading.get_ident(), ids

    loop_thread, token_ids = asyncio.run(tokenize_eight())
    assert token_ids[3] == tokenizer(["request 3"])["input_ids"]
    assert len(threads) == 1 and loop_thread not in threads
