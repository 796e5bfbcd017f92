"""backends/embedding_server.py and its clients, against a real server on a loopback port.

What the page claims: every client gets the embeddings the model gives one input at a time;
each answer goes back to its own caller under load; bad input gets a 4xx with a JSON error;
overload gets 503, slow requests 504; a client that leaves frees its slots; SIGTERM loses
no accepted request; /metrics is valid Prometheus text.
"""

import asyncio
import base64
import json
import re
import signal
import socket
import time

import httpx
import numpy as np
import pytest
import requests
import torch
import tritonclient.http as triton
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from helpers import run_snippet, serve

SERVER = "backends/embedding_server.py"
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server():
    with serve(SERVER, "--max-batch-size", "32", "--max-wait-ms", "2") as handle:
        yield handle


@pytest.fixture(scope="module")
def embed_one(minilm):
    """The reference: the model called directly, one input at a time, no padding."""
    tokenizer, model = minilm

    @torch.inference_mode()
    def embed(text: str) -> np.ndarray:
        batch = tokenizer([text], return_tensors="pt")
        pooled = model(**batch).last_hidden_state.mean(1)
        return torch.nn.functional.normalize(pooled, dim=-1)[0].numpy()

    return embed


def metric(url: str, name: str, labels: dict | None = None) -> float:
    """A sample's value from /metrics; 0 if it has not been recorded yet (labelled counters)."""
    text = requests.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or labels.items() <= sample.labels.items()):
                return sample.value
    return 0.0


def test_every_client_matches_the_model(server, embed_one):
    texts = ["a short one", "a much longer input sentence that will be padded against the short one " * 3]
    expected = [embed_one(t) for t in texts]

    by_requests = requests.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=30)
    assert by_requests.status_code == 200
    body = by_requests.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 10

    openai_client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    by_openai = openai_client.embeddings.create(model=MODEL, input=texts)  # base64 on the wire
    by_openai_float = openai_client.embeddings.create(model=MODEL, input=texts, encoding_format="float")

    triton_client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))  # binary tensor extension
    by_triton = triton_client.infer(MODEL, [tensor]).as_numpy("embedding")
    json_tensor = triton.InferInput("text", [2], "BYTES")
    json_tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    by_triton_json = triton_client.infer(
        MODEL, [json_tensor], outputs=[triton.InferRequestedOutput("embedding", binary_data=False)]
    ).as_numpy("embedding")

    for i, want in enumerate(expected):
        for got in (body["data"][i]["embedding"], by_openai.data[i].embedding,
                    by_openai_float.data[i].embedding, by_triton[i], by_triton_json[i]):
            assert float(np.dot(got, want)) >= 0.9999


def test_client_snippets(server):
    out = run_snippet("backends/embed_with_requests.py", "--url", server.url)
    assert "2 embeddings of 384 floats" in out
    similarity = float(re.search(r"cosine similarity: ([\d.]+)", out).group(1))
    assert 0.3 < similarity < 1.0

    out = run_snippet("backends/embed_with_openai.py", "--url", server.url)
    assert f"2 embeddings of 384 floats from {MODEL}" in out

    out = run_snippet("backends/embed_with_tritonclient.py", "--url", server.url.removeprefix("http://"))
    assert "embedding tensor (2, 384), dtype float32" in out
    assert "'datatype': 'BYTES'" in out

    out = run_snippet("backends/embed_concurrently.py", "--url", server.url, "--requests", "64", "--concurrency", "8")
    assert out.startswith("64 of 64 answered")


def test_500_concurrent_requests_each_get_their_own_answer(server, embed_one):
    texts = [f"request {i}: " + " ".join(["word"] * (i % 40 + 1)) for i in range(500)]

    async def worker(chunk: list[str], out: dict):
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            for text in chunk:
                response = await client.post("/v1/embeddings", json={"model": MODEL, "input": text,
                                                                      "encoding_format": "base64"})
                assert response.status_code == 200, response.text
                out[text] = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), "<f4")

    async def run_all():
        answers: dict = {}
        await asyncio.gather(*(worker(texts[k::50], answers) for k in range(50)))
        return answers

    answers = asyncio.run(run_all())
    assert len(answers) == 500
    for text in texts:
        assert float(answers[text] @ embed_one(text)) >= 0.9999, text
    batches = metric(server.url, "embedding_batch_size_count")
    assert batches < 500  # requests were batched together


LONG = "word " * 300
BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "all-MiniLM-L6-v2", "input": ', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "must be a JSON object"),
    ("non-UTF-8", b'{"model": "all-MiniLM-L6-v2", "input": "\xff\xfe"}', 400, "not valid UTF-8"),
    ("missing input", {"model": MODEL}, 400, "Missing required parameter: 'input'"),
    ("missing model", {"input": "x"}, 400, "Missing required parameter: 'model'"),
    ("unknown model", {"model": "gpt-9", "input": "x"}, 404, "does not exist"),
    ("input is a number", {"model": MODEL, "input": 5}, 400, "string or a list of strings"),
    ("item is a number", {"model": MODEL, "input": ["ok", 7]}, 400, "'input[1]' must be a string"),
    ("empty string", {"model": MODEL, "input": ""}, 400, "'input[0]' is an empty string"),
    ("blank string", {"model": MODEL, "input": ["ok", "   "]}, 400, "'input[1]' is an empty string"),
    ("empty list", {"model": MODEL, "input": []}, 400, "must not be empty"),
    ("too many inputs", {"model": MODEL, "input": ["x"] * 257}, 400, "at most 256"),
    ("over the token limit", {"model": MODEL, "input": ["ok", LONG]}, 400, "the limit is 256"),
    ("unknown field", {"model": MODEL, "input": "x", "temperature": 1}, 400, "Unrecognized request argument"),
    ("bad encoding", {"model": MODEL, "input": "x", "encoding_format": "hex"}, 400, "'float' or 'base64'"),
    ("dimensions", {"model": MODEL, "input": "x", "dimensions": 64}, 400, "'dimensions' is not supported"),
    ("oversized body", {"model": MODEL, "input": ["x" * 1000] * 1100}, 413, "limit is 1000000"),
]


@pytest.mark.parametrize("case, body, status, message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_a_clear_4xx(server, case, body, status, message):
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    response = requests.post(server.url + "/v1/embeddings", timeout=30, **kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"


def test_token_limit_error_names_the_input(server):
    error = requests.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": ["ok", LONG]}, timeout=30)
    assert error.json()["error"]["code"] == "context_length_exceeded"
    assert "'input[1]' has 302 tokens" in error.json()["error"]["message"]


V2_BAD = [
    ("no inputs", {}, 400, "'inputs' must be a list"),
    ("wrong tensor name", {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, 400,
     "named 'text'"),
    ("shape mismatch", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, 400,
     "says 2 elements but 1"),
    ("empty text", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [""]}]}, 400,
     "empty string"),
]


@pytest.mark.parametrize("case, body, status, message", V2_BAD, ids=[c[0] for c in V2_BAD])
def test_open_inference_protocol_bad_input(server, case, body, status, message):
    response = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_unknown_routes_and_models_are_json_4xx(server):
    assert requests.get(f"{server.url}/v2/models/nope", timeout=10).status_code == 404
    wrong_method = requests.get(server.url + "/v1/embeddings", timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert requests.get(server.url + "/nothing-here", timeout=10).json()["error"]["message"] == "Not Found"


def test_metrics_parse(server):
    requests.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": "count me"}, timeout=30)
    families = {f.name: f for f in text_string_to_metric_families(requests.get(server.url + "/metrics").text)}
    assert {"embedding_requests", "embedding_batch_size", "embedding_queue_depth",
            "embedding_request_latency_seconds", "embedding_requests_in_progress"} <= families.keys()
    assert metric(server.url, "embedding_requests_total", {"route": "/v1/embeddings", "status": "200"}) >= 1
    assert metric(server.url, "embedding_request_latency_seconds_count") >= 1


def long_requests_at_once(url: str, count: int) -> list[httpx.Response]:
    """`count` concurrent 200-word requests, each from its own client."""
    async def one(i):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await client.post("/v1/embeddings", json={"model": MODEL, "input": f"{i} " + "w " * 200})

    async def all_at_once():
        return await asyncio.gather(*(one(i) for i in range(count)))

    return asyncio.run(all_at_once())


def test_queue_full_gets_503_with_retry_after():
    with serve(SERVER, "--max-batch-size", "1", "--max-queue", "4") as small:
        responses = long_requests_at_once(small.url, 40)
        statuses = {r.status_code for r in responses}
        assert statuses == {200, 503}
        rejected = next(r for r in responses if r.status_code == 503)
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["code"] == "queue_full"


def test_slow_request_gets_504():
    with serve(SERVER, "--max-batch-size", "1", "--request-timeout", "0.05") as slow:
        statuses = [r.status_code for r in long_requests_at_once(slow.url, 20)]
        assert 504 in statuses and set(statuses) <= {200, 504}
        timed_out = requests.post(slow.url + "/v1/embeddings", json={"model": MODEL, "input": ["w " * 200] * 40})
        assert timed_out.status_code == 504 and "timed out" in timed_out.json()["error"]["message"]
        assert metric(slow.url, "embedding_queue_depth") == 0  # timed-out inputs gave their slots back


def raw_request(port: int, body: dict) -> socket.socket:
    """Send a request on a plain socket and return it unread, so the test can hang up."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    return sock


def test_disconnected_client_frees_its_slots():
    with serve(SERVER, "--max-batch-size", "1", "--max-queue", "64") as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        sock = raw_request(port, {"model": MODEL, "input": [f"{i} " + "w " * 200 for i in range(64)]})
        deadline = time.monotonic() + 5
        while metric(srv.url, "embedding_queue_depth") < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert metric(srv.url, "embedding_queue_depth") >= 10  # the request is queued
        sock.close()  # the client gives up
        deadline = time.monotonic() + 2
        while metric(srv.url, "embedding_queue_depth") > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert metric(srv.url, "embedding_queue_depth") == 0
        # its 64 inputs were not all computed, and the freed queue takes a full new request
        assert metric(srv.url, "embedding_batch_size_count") < 64
        again = requests.post(srv.url + "/v1/embeddings", json={"model": MODEL, "input": ["x"] * 64}, timeout=60)
        assert again.status_code == 200


def test_sigterm_finishes_accepted_requests(embed_one):
    with serve(SERVER, "--max-batch-size", "1") as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        texts = [f"accepted request {i} " + "w " * 200 for i in range(48)]
        # the references first: computing them while the server works would starve both of CPU
        expected = [embed_one(t) for t in texts]
        socks = [raw_request(port, {"model": MODEL, "input": t, "encoding_format": "float"}) for t in texts]

        def accepted() -> float:
            done = metric(srv.url, "embedding_requests_total", {"route": "/v1/embeddings", "status": "200"})
            return done + metric(srv.url, "embedding_requests_in_progress")

        deadline = time.monotonic() + 10
        while accepted() < len(texts) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert accepted() == len(texts)
        assert metric(srv.url, "embedding_requests_in_progress") > 0  # SIGTERM arrives with work queued
        srv.proc.send_signal(signal.SIGTERM)
        for want, sock in zip(expected, socks):
            with sock, sock.makefile("rb") as stream:
                status = stream.readline()
                assert b" 200 " in status, status
                headers = dict(line.rstrip().split(b": ", 1) for line in iter(stream.readline, b"\r\n"))
                length = int(headers[b"content-length"])
                vector = json.loads(stream.read(length))["data"][0]["embedding"]
                assert float(np.dot(vector, want)) >= 0.9999
        # uvicorn re-raises the signal once drained: the exit status of a clean SIGTERM stop
        assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in srv.log()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)  # no longer accepting


def test_api_key_is_enforced():
    with serve(SERVER, "--api-key", "s3cret") as srv:
        body = {"model": MODEL, "input": "x"}
        missing = requests.post(srv.url + "/v1/embeddings", json=body, timeout=30)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        wrong = requests.post(srv.url + "/v1/embeddings", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert requests.get(f"{srv.url}/v2/models/{MODEL}", timeout=10).status_code == 401
        good = OpenAI(base_url=srv.url + "/v1", api_key="s3cret").embeddings.create(model=MODEL, input="x")
        assert len(good.data[0].embedding) == 384
        assert requests.get(srv.url + "/health", timeout=10).status_code == 200  # probes need no key


def test_not_ready_until_loaded():
    """Between start and model load, /health and the APIs answer 503, never 200 or 500."""
    with serve(SERVER, ready_path="/v2/health/live") as srv:
        seen = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = requests.get(srv.url + "/health", timeout=10)
            embed = requests.post(srv.url + "/v1/embeddings", json={"model": MODEL, "input": "x"}, timeout=30)
            seen.add((health.status_code, embed.status_code))
            if health.status_code == 200:
                break
        assert (200, 200) in seen
        assert seen <= {(503, 503), (503, 200), (200, 200)}  # readiness never goes back, never a 500
