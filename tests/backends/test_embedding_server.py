"""backends/embedding_server.py and its clients, against a real server on a loopback port.

What the page claims: every client gets the embeddings the model gives one input at a time;
each answer goes back to its own caller under load, in real batches; bad input gets a 4xx with a
JSON error; every route but the probes needs a key; overload gets 503, slow requests 504, a
flood 429; a client that leaves frees its slots at once; big bodies never stall /health; a model
that cannot load or a batcher that dies turns /health to 503 with the reason; SIGTERM loses no
accepted request; /metrics is valid Prometheus text.
"""

import asyncio
import base64
import hashlib
import json
import signal
import socket
import time

import httpx
import numpy as np
import pytest
import requests
import tritonclient.http as triton
from helpers import load_snippet, run_snippet, serve, serve_app, wait_until
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

SERVER = "backends/embedding_server.py"
MODEL = "all-MiniLM-L6-v2"
JSON = {"Content-Type": "application/json"}


def metric(url: str, name: str, labels: dict | None = None) -> float:
    """A sample's value from /metrics; 0 if it has not been recorded yet (labelled counters)."""
    text = requests.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or labels.items() <= sample.labels.items()):
                return sample.value
    return 0.0


def test_every_client_matches_the_model(embedding_server, embed_one):
    url = embedding_server.url
    texts = [
        "a short one",
        "a much longer input sentence that will be padded against the short one " * 3,
    ]
    expected = [embed_one(t) for t in texts]

    by_requests = requests.post(
        url + "/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=30
    )
    assert by_requests.status_code == 200
    body = by_requests.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 10

    openai_client = OpenAI(base_url=url + "/v1", api_key="unused")
    by_openai = openai_client.embeddings.create(model=MODEL, input=texts)  # base64 on the wire
    by_openai_float = openai_client.embeddings.create(
        model=MODEL, input=texts, encoding_format="float"
    )

    triton_client = triton.InferenceServerClient(url.removeprefix("http://"))
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))  # binary tensor extension
    by_triton = triton_client.infer(MODEL, [tensor]).as_numpy("embedding")
    json_tensor = triton.InferInput("text", [2], "BYTES")
    json_tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    by_triton_json = triton_client.infer(
        MODEL, [json_tensor], outputs=[triton.InferRequestedOutput("embedding", binary_data=False)]
    ).as_numpy("embedding")

    for i, want in enumerate(expected):
        for got in (
            body["data"][i]["embedding"],
            by_openai.data[i].embedding,
            by_openai_float.data[i].embedding,
            by_triton[i],
            by_triton_json[i],
        ):
            assert float(np.dot(got, want)) >= 0.9999


def test_client_snippets(embedding_server):
    """The openai and requests snippets run against vLLM as well, in test_engines.py."""
    url = embedding_server.url
    out = run_snippet("backends/embed_with_tritonclient.py", "--url", url.removeprefix("http://"))
    assert "embedding tensor (2, 384), dtype float32" in out and "'datatype': 'BYTES'" in out
    out = run_snippet(
        "backends/embed_concurrently.py", "--url", url, "--requests", "64", "--concurrency", "8"
    )
    assert out.startswith("64 of 64 answered")


def test_500_concurrent_requests_each_get_their_own_answer_in_real_batches(
    embedding_server, embed_one
):
    url = embedding_server.url
    texts = [f"request {i}: " + " ".join(["word"] * (i % 40 + 1)) for i in range(500)]
    passes_before = metric(url, "embedding_batch_size_count")
    inputs_before = metric(url, "embedding_batch_size_sum")

    async def worker(chunk: list[str], out: dict):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for text in chunk:
                response = await client.post(
                    "/v1/embeddings",
                    json={"model": MODEL, "input": text, "encoding_format": "base64"},
                )
                assert response.status_code == 200, response.text
                out[text] = np.frombuffer(
                    base64.b64decode(response.json()["data"][0]["embedding"]), "<f4"
                )

    async def run_all():
        answers: dict = {}
        await asyncio.gather(*(worker(texts[k::50], answers) for k in range(50)))
        return answers

    answers = asyncio.run(run_all())
    assert len(answers) == 500
    for text in texts:
        assert float(answers[text] @ embed_one(text)) >= 0.9999, text
    passes = metric(url, "embedding_batch_size_count") - passes_before
    inputs = metric(url, "embedding_batch_size_sum") - inputs_before
    assert inputs == 500
    assert inputs / passes >= 4, (
        f"mean inputs per forward pass {inputs / passes:.1f}: batching did not happen"
    )


LONG = "word " * 300
BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "all-MiniLM-L6-v2", "input": ', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "must be a JSON object"),
    ("non-UTF-8", b'{"model": "all-MiniLM-L6-v2", "input": "\xff\xfe"}', 400, "not valid UTF-8"),
    ("empty body", b"", 400, "Request body is empty"),
    ("missing input", {"model": MODEL}, 400, "Missing required parameter: 'input'"),
    ("missing model", {"input": "x"}, 400, "Missing required parameter: 'model'"),
    ("unknown model", {"model": "gpt-9", "input": "x"}, 404, "does not exist"),
    ("input is a number", {"model": MODEL, "input": 5}, 400, "Invalid 'input'"),
    ("item is a number", {"model": MODEL, "input": ["ok", 7]}, 400, "Invalid 'input[1]'"),
    ("empty string", {"model": MODEL, "input": ""}, 400, "'input[0]': is an empty string"),
    (
        "blank string",
        {"model": MODEL, "input": ["ok", "   "]},
        400,
        "'input[1]': is an empty string",
    ),
    ("empty list", {"model": MODEL, "input": []}, 400, "at least 1 item"),
    ("too many inputs", {"model": MODEL, "input": ["x"] * 257}, 400, "at most 256 items"),
    ("over the token limit", {"model": MODEL, "input": ["ok", LONG]}, 400, "the limit is 256"),
    (
        "unknown field",
        {"model": MODEL, "input": "x", "temperature": 1},
        400,
        "Unrecognized request argument",
    ),
    (
        "bad encoding",
        {"model": MODEL, "input": "x", "encoding_format": "hex"},
        400,
        "'float' or 'base64'",
    ),
    (
        "dimensions",
        {"model": MODEL, "input": "x", "dimensions": 64},
        400,
        "'dimensions': is not supported",
    ),
    ("oversized body", {"model": MODEL, "input": ["x" * 1000] * 1100}, 413, "limit is 1000000"),
]


@pytest.mark.parametrize(
    "case, body, status, message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_gets_a_clear_4xx(embedding_server, case, body, status, message):
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body, "headers": JSON}
    response = requests.post(embedding_server.url + "/v1/embeddings", timeout=30, **kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"


def test_no_content_type_is_refused_by_name(embedding_server):
    """FastAPI parses JSON only when the client says it is JSON (a guard against cross-site posts)."""
    response = requests.post(
        embedding_server.url + "/v1/embeddings", data=b'{"model": "x", "input": "y"}'
    )
    assert (
        response.status_code == 400
        and "Content-Type: application/json" in response.json()["error"]["message"]
    )


def test_body_without_content_length_is_capped(embedding_server):
    """A chunked upload has no Content-Length to check up front: it is counted as it arrives."""

    def chunks():
        for _ in range(300):
            yield b" " * 10_000

    response = requests.post(
        embedding_server.url + "/v1/embeddings", data=chunks(), headers=JSON, timeout=30
    )
    assert (
        response.status_code == 413 and "exceeds the limit" in response.json()["error"]["message"]
    )


def test_token_limit_error_names_the_input(embedding_server):
    error = requests.post(
        embedding_server.url + "/v1/embeddings",
        json={"model": MODEL, "input": ["ok", LONG]},
        timeout=30,
    ).json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "'input[1]' has 302 tokens" in error["message"]


def test_unknown_routes_and_models_are_json_4xx(embedding_server):
    url = embedding_server.url
    assert requests.get(f"{url}/v2/models/nope", timeout=10).status_code == 404
    wrong_method = requests.get(url + "/v1/embeddings", timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert requests.get(url + "/nothing-here", timeout=10).json()["error"]["message"] == "Not Found"


def test_docs_list_the_request_schema(embedding_server):
    schema = requests.get(embedding_server.url + "/openapi.json", timeout=10).json()
    request = schema["components"]["schemas"]["EmbeddingRequest"]
    assert {"input", "model", "encoding_format"} <= request["properties"].keys()


def test_metrics_parse(embedding_server):
    url = embedding_server.url
    requests.post(url + "/v1/embeddings", json={"model": MODEL, "input": "count me"}, timeout=30)
    families = {
        f.name: f for f in text_string_to_metric_families(requests.get(url + "/metrics").text)
    }
    assert {
        "embedding_requests",
        "embedding_batch_size",
        "embedding_queue_depth",
        "embedding_request_latency_seconds",
        "embedding_requests_in_progress",
    } <= families.keys()
    assert (
        metric(url, "embedding_requests_total", {"route": "/v1/embeddings", "status": "200"}) >= 1
    )
    assert metric(url, "embedding_request_latency_seconds_count") >= 1


def test_health_answers_while_megabyte_bodies_are_tokenized(embedding_server):
    """Tokenizing 1 MB takes a tenth of a second or more; it runs in the tokenizer thread, so the
    event loop answers /health meanwhile (tokenizing on the loop made /health wait behind it)."""
    big = {
        "model": MODEL,
        "input": ["word " * 770] * 256,
    }  # just under 1 MB; each input over 256 tokens
    assert len(json.dumps(big)) < 1_000_000

    async def race():
        async with httpx.AsyncClient(base_url=embedding_server.url, timeout=60) as client:
            finished: list[str] = []

            async def big_request(i):
                response = await client.post("/v1/embeddings", json=big)
                assert response.status_code == 400  # too many tokens, found only by tokenizing
                finished.append(f"big {i}")

            async def probe():
                await asyncio.sleep(0.05)  # the big bodies are in and being tokenized
                response = await client.get("/health")
                assert response.status_code == 200
                finished.append("health")

            await asyncio.gather(*(big_request(i) for i in range(4)), probe())
            return finished

    order = asyncio.run(race())
    assert order.index("health") < 3, order  # /health came back before most of the big ones


def long_requests_at_once(url: str, count: int) -> list[httpx.Response]:
    """`count` concurrent 200-word requests, each from its own client."""

    async def one(i):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await client.post(
                "/v1/embeddings", json={"model": MODEL, "input": f"{i} " + "w " * 200}
            )

    async def all_at_once():
        return await asyncio.gather(*(one(i) for i in range(count)))

    return asyncio.run(all_at_once())


def test_queue_full_gets_503_with_retry_after():
    with serve(SERVER, "--max-batch-size", "1", "--max-queue", "4") as small:
        responses = long_requests_at_once(small.url, 40)
        assert {r.status_code for r in responses} == {200, 503}
        rejected = next(r for r in responses if r.status_code == 503)
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["code"] == "queue_full"


def test_slow_request_gets_504():
    with serve(SERVER, "--max-batch-size", "1", "--request-timeout", "0.05") as slow:
        statuses = [r.status_code for r in long_requests_at_once(slow.url, 20)]
        assert 504 in statuses and set(statuses) <= {200, 504}
        timed_out = requests.post(
            slow.url + "/v1/embeddings", json={"model": MODEL, "input": ["w " * 200] * 40}
        )
        assert timed_out.status_code == 504 and "timed out" in timed_out.json()["error"]["message"]
        assert (
            metric(slow.url, "embedding_queue_depth") == 0
        )  # timed-out inputs gave their slots back


def raw_request(port: int, body: dict, key: str | None = None) -> socket.socket:
    """Send a request on a plain socket and return it unread, so the test can hang up."""
    payload = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (auth, len(payload), payload)
    )
    return sock


def test_disconnected_client_frees_its_slots():
    with serve(SERVER, "--max-batch-size", "1", "--max-queue", "64") as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        sock = raw_request(
            port, {"model": MODEL, "input": [f"{i} " + "w " * 200 for i in range(64)]}
        )
        assert wait_until(lambda: metric(srv.url, "embedding_queue_depth") >= 10, timeout=5)
        sock.close()  # the client gives up
        assert wait_until(lambda: metric(srv.url, "embedding_queue_depth") == 0, timeout=2)
        # its 64 inputs were not all computed, and the freed queue takes a full new request
        assert metric(srv.url, "embedding_batch_size_count") < 64
        again = requests.post(
            srv.url + "/v1/embeddings", json={"model": MODEL, "input": ["x"] * 64}, timeout=60
        )
        assert again.status_code == 200


def test_cancelled_inputs_leave_the_queue_at_once():
    """The queue holds only inputs someone waits for: a cancelled request's inputs are removed
    immediately, not left for the worker to skip (they used to count outside max_queue)."""
    server = load_snippet(SERVER)

    async def scenario():
        batcher = server.Batcher(
            lambda ids: np.zeros((len(ids), 3)),
            max_batch_size=8,
            max_wait_ms=1,
            max_batch_tokens=1024,
            max_queue=10,
        )
        waiting = asyncio.create_task(
            batcher.submit([[1, 2, 3]] * 10, timeout=30)
        )  # no worker runs
        await asyncio.sleep(0.01)
        assert len(batcher.pending) == 10
        with pytest.raises(server.ApiError, match="queue is full"):
            await batcher.submit([[1]], timeout=30)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert batcher.pending == []
        worker = asyncio.create_task(batcher.run())
        answer = await batcher.submit([[1]] * 10, timeout=30)  # the whole queue is free again
        worker.cancel()
        return answer

    assert asyncio.run(scenario()).shape == (10, 3)


def test_forward_passes_group_similar_lengths():
    server = load_snippet(SERVER)
    batcher = server.Batcher(
        lambda ids: None, max_batch_size=64, max_wait_ms=1, max_batch_tokens=40, max_queue=64
    )
    lengths = [30, 2, 9, 3, 10, 8, 2]
    items = [server.Item([0] * n, future=None) for n in lengths]
    passes = [[len(item.token_ids) for item in group] for group in batcher.forward_passes(items)]
    assert passes == [[2, 2, 3, 8], [9, 10], [30]]  # each pass: rows x longest <= 40 padded tokens
    assert all(len(p) * max(p) <= 40 for p in passes)


def test_sigterm_finishes_accepted_requests(embed_one):
    with serve(SERVER, "--max-batch-size", "1") as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        texts = [f"accepted request {i} " + "w " * 200 for i in range(48)]
        # the references first: computing them while the server works would starve both of CPU
        expected = [embed_one(t) for t in texts]
        socks = [
            raw_request(port, {"model": MODEL, "input": t, "encoding_format": "float"})
            for t in texts
        ]

        def accepted() -> float:
            done = metric(
                srv.url, "embedding_requests_total", {"route": "/v1/embeddings", "status": "200"}
            )
            return done + metric(srv.url, "embedding_requests_in_progress")

        assert wait_until(lambda: accepted() == len(texts), timeout=10, interval=0.01)
        assert (
            metric(srv.url, "embedding_requests_in_progress") > 0
        )  # SIGTERM arrives with work queued
        srv.proc.send_signal(signal.SIGTERM)
        for want, sock in zip(expected, socks):
            with sock, sock.makefile("rb") as stream:
                status = stream.readline()
                assert b" 200 " in status, status
                headers = dict(
                    line.rstrip().split(b": ", 1) for line in iter(stream.readline, b"\r\n")
                )
                length = int(headers[b"content-length"])
                vector = json.loads(stream.read(length))["data"][0]["embedding"]
                assert float(np.dot(vector, want)) >= 0.9999
        # uvicorn re-raises the signal once drained: the exit status of a clean SIGTERM stop
        assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in srv.log()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)  # no longer accepting


def guarded_routes(url: str) -> list[tuple[str, str, dict]]:
    """Every route that serves the model or describes it: all need a key (the probes do not)."""
    body = {"model": MODEL, "input": "x"}
    v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    return [
        ("POST", "/v1/embeddings", body),
        ("GET", "/v2", {}),
        ("GET", f"/v2/models/{MODEL}", {}),
        ("POST", f"/v2/models/{MODEL}/infer", v2),
    ]


def test_api_keys_guard_every_route(tmp_path):
    keys_file = tmp_path / "keys.txt"
    hashed = hashlib.sha256(b"from-file").hexdigest()
    keys_file.write_text(
        f"# one key per line, or its hash: the file holds no working key\nsha256:{hashed}\n"
    )
    with serve(
        SERVER, "--api-key", "s3cret", "--api-key", "second", "--api-keys", str(keys_file)
    ) as srv:
        for method, path, body in guarded_routes(srv.url):
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
                denied = requests.request(
                    method, srv.url + path, json=body or None, headers=headers, timeout=10
                )
                assert denied.status_code == 401, (method, path, headers)
                assert denied.json()["error"]["code"] == "invalid_api_key"
                assert denied.headers["www-authenticate"] == "Bearer"
            for key in ("s3cret", "second", "from-file"):
                allowed = requests.request(
                    method,
                    srv.url + path,
                    json=body or None,
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=30,
                )
                assert allowed.status_code == 200, (method, path, key, allowed.text)
        good = OpenAI(base_url=srv.url + "/v1", api_key="second").embeddings.create(
            model=MODEL, input="x"
        )
        assert len(good.data[0].embedding) == 384
        for probe in (
            "/health",
            "/metrics",
            "/docs",
            "/openapi.json",
            "/v2/health/live",
            "/v2/health/ready",
            f"/v2/models/{MODEL}/ready",
        ):  # probes (Kubernetes sends no key) and the schema stay open
            assert requests.get(srv.url + probe, timeout=10).status_code == 200, probe


def test_rate_limit_per_key_answers_429_with_retry_after():
    with serve(SERVER, "--api-key", "a", "--api-key", "b", "--rate-limit", "5") as srv:

        def post(key):
            return requests.post(
                srv.url + "/v1/embeddings",
                json={"model": MODEL, "input": "x"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )

        statuses = [post("a").status_code for _ in range(7)]
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
        limited = post("a")
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(limited.headers["retry-after"]) <= 12  # one request every 12 s refills
        assert post("b").status_code == 200  # the other key has its own budget
        assert (
            metric(
                srv.url, "embedding_requests_total", {"route": "/v1/embeddings", "status": "429"}
            )
            == 3
        )


def test_not_ready_until_loaded():
    """Between start and model load, /health and the APIs answer 503, never 200 or 500."""
    with serve(SERVER, ready_path="/v2/health/live", startup_timeout=120) as srv:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = requests.get(srv.url + "/health", timeout=10)
            embed = requests.post(
                srv.url + "/v1/embeddings", json={"model": MODEL, "input": "x"}, timeout=30
            )
            seen.append((health.status_code, embed.status_code, health.json()["status"]))
            if health.status_code == 200:
                break
        assert seen[0] == (503, 503, "loading"), seen[:3]  # the loading phase was observed
        assert seen[-1] == (200, 200, "ready")
        assert set(seen) <= {(503, 503, "loading"), (503, 200, "loading"), (200, 200, "ready")}


def test_a_model_that_cannot_load_turns_health_503_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a folder that is not a model
    with serve(SERVER, "--model", str(tmp_path), ready_path="/v2/health/live") as srv:
        assert wait_until(
            lambda: requests.get(srv.url + "/health").json()["status"] == "failed", timeout=30
        )
        health = requests.get(srv.url + "/health", timeout=10)
        assert health.status_code == 503 and "loading the model failed" in health.json()["reason"]
        refused = requests.post(
            srv.url + "/v1/embeddings", json={"model": MODEL, "input": "x"}, timeout=10
        )
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_failed"
        assert "Traceback" in srv.log()  # the operator gets the whole story in the log


def test_a_missing_model_folder_is_a_one_line_cli_error(tmp_path):
    import subprocess
    import sys

    from helpers import SNIPPETS

    proc = subprocess.run(
        [sys.executable, str(SNIPPETS / SERVER), "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode == 2
        and "--model: no such folder" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_a_dead_batcher_turns_health_503_and_fails_waiting_requests(minilm_dir):
    """A bug in the batcher (simulated by breaking it in a running server) must not leave
    requests hanging until their timeout or /health saying ready."""
    server = load_snippet(SERVER)
    app = server.create_app(server.Settings(request_timeout=30))
    with serve_app(app) as url:
        assert wait_until(lambda: requests.get(url + "/health").status_code == 200, timeout=60)
        batcher = app.state.batcher

        async def broken_next_batch():
            await asyncio.sleep(0.5)  # long enough for the request below to be waiting
            raise RuntimeError("bug in the batcher")

        batcher.next_batch = broken_next_batch
        # the worker is inside the real next_batch: one request goes through, then it breaks
        assert (
            requests.post(url + "/v1/embeddings", json={"model": MODEL, "input": "x"}).status_code
            == 200
        )
        started = time.monotonic()
        waiting = requests.post(
            url + "/v1/embeddings", json={"model": MODEL, "input": "y"}, timeout=30
        )
        assert (
            waiting.status_code == 500
            and "bug in the batcher" in waiting.json()["error"]["message"]
        )
        assert time.monotonic() - started < 5  # failed at once, not after the 30 s timeout
        health = requests.get(url + "/health")
        assert health.status_code == 503 and "the batcher stopped" in health.json()["reason"]
        assert (
            requests.post(url + "/v1/embeddings", json={"model": MODEL, "input": "z"}).status_code
            == 503
        )
