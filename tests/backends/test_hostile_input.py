"""One request must never take a server down: the defects a hostile or careless client found.

Each test sends what a real client once sent (a seed past 2^63, a temperature that is 0 in
float32, a lone UTF-16 surrogate, an id reused by a Triton client, ...) to a real server on
loopback and asserts three things: the answer is a 4xx naming the field (or the request works),
the server still says ready, and the next ordinary request is answered. The sampler itself is
checked by property tests over every setting the request model accepts.
"""

import asyncio
import json
import sqlite3
import threading
import time

import numpy as np
import pytest
import requests
import torch
from fastapi.routing import iter_route_contexts
from helpers import load_snippet, serve, serve_app, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

LLM = "backends/llm_server.py"
EMBEDDINGS = "backends/embedding_server.py"
LLM_MODEL = "SmolLM2-135M-Instruct"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
HI = [{"role": "user", "content": "Say hi."}]
LONE_SURROGATE = '"\\ud800"'  # JSON text: a string holding half of a UTF-16 pair


def still_serving(url: str, chat: bool = True) -> None:
    """The server says ready and answers an ordinary request."""
    assert requests.get(url + "/health", timeout=10).json()["status"] == "ready"
    if chat:
        body = {"model": LLM_MODEL, "messages": HI, "max_tokens": 2}
        assert requests.post(url + "/v1/chat/completions", json=body, timeout=60).ok
    else:
        body = {"model": EMBEDDING_MODEL, "input": "still here"}
        assert requests.post(url + "/v1/embeddings", json=body, timeout=60).ok


def rows(db, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


# 1. Sampling settings outside what the sampler can honour.

OUT_OF_RANGE = [
    ("/v1/chat/completions", {"seed": 2**64}, "seed"),
    ("/v1/chat/completions", {"seed": -1}, "seed"),
    ("/v1/chat/completions", {"temperature": 2.5}, "temperature"),
    ("/v1/chat/completions", {"top_p": 0}, "top_p"),
    ("/v1/chat/completions", {"top_k": 0}, "top_k"),
    ("/generate", {"parameters": {"seed": 2**64, "do_sample": True}}, "parameters.seed"),
    ("/generate", {"parameters": {"top_k": -3, "do_sample": True}}, "parameters.top_k"),
    ("/generate", {"parameters": {"temperature": -1, "do_sample": True}}, "parameters.temperature"),
    ("/generate", {"parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
]


@pytest.mark.parametrize(
    "route, fields, param", OUT_OF_RANGE, ids=[f"{r}-{p}" for r, _, p in OUT_OF_RANGE]
)
def test_out_of_range_sampling_settings_get_a_400_naming_the_field(
    llm_server, route, fields, param
):
    if route == "/generate":
        body = {"inputs": "Hello", **fields}
    else:
        body = {"model": LLM_MODEL, "messages": HI, "max_tokens": 4, **fields}
    response = requests.post(llm_server.url + route, json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    still_serving(llm_server.url)


@pytest.mark.parametrize(
    "route, body, param",
    [
        ("/generate", {"inputs": "\u0006"}, "inputs"),
        ("/v1/completions", {"model": LLM_MODEL, "prompt": "\u0006"}, "prompt"),
    ],
)
def test_a_prompt_with_no_tokens_gets_a_400(llm_server, route, body, param):
    """Schemathesis found it: a control character alone tokenizes to nothing, and an empty
    prompt reached the model (500 model_error)."""
    response = requests.post(llm_server.url + route, json=body, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    still_serving(llm_server.url)


def test_a_temperature_that_is_zero_in_float32_means_greedy(llm_server):
    """1e-300 is 0 in float32: dividing logits by it gave inf and killed the engine. Below 1e-5
    the request is greedy, as in vLLM."""
    url = llm_server.url
    body = {"model": LLM_MODEL, "messages": HI, "max_tokens": 8}
    greedy = requests.post(url + "/v1/chat/completions", json={**body, "temperature": 0}).json()
    for tiny in (1e-300, 1e-6):
        reply = requests.post(url + "/v1/chat/completions", json={**body, "temperature": tiny})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"] == greedy["choices"][0]["message"]
    tgi = {"inputs": "Hello", "parameters": {"do_sample": True, "temperature": 1e-300}}
    assert requests.post(url + "/generate", json=tgi, timeout=60).status_code == 200
    still_serving(url)


# 1. The sampler: every setting the request model accepts, any logits row with a finite entry.


@pytest.fixture(scope="module")
def llm():
    return load_snippet(LLM)


def logits_rows(vocab: int = 50):
    """Rows of float32 logits with at least one finite entry; the rest anything, inf and NaN too."""
    any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)
    finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
    return st.tuples(
        st.lists(any_float, min_size=vocab, max_size=vocab),
        st.integers(0, vocab - 1),
        finite,
    ).map(lambda t: t[0][: t[1]] + [t[2]] + t[0][t[1] + 1 :])


def accepted_settings(llm):
    """Sampling settings drawn from the bounds of the chat request model itself."""

    def bounded(name, strategy):
        return strategy.filter(lambda value: accepts(llm, name, value))

    return st.fixed_dictionaries(
        {
            "temperature": bounded("temperature", st.floats(0, 2)),
            "top_p": bounded("top_p", st.floats(0, 1)),
            "top_k": st.one_of(st.none(), bounded("top_k", st.integers(-5, 10**6))),
            "seed": st.one_of(st.none(), bounded("seed", st.integers(-5, 2**64))),
        }
    )


def accepts(llm, name: str, value) -> bool:
    try:
        llm.ChatRequest.model_validate(
            {"model": LLM_MODEL, "messages": HI, name: value}, strict=False
        )
    except Exception:  # noqa: BLE001 -- refused by the request model: not a case to sample
        return False
    return True


def test_the_sampler_never_raises_for_accepted_settings(llm):
    """For every accepted setting and every row with a finite entry: one token, and it is one
    whose logit was finite (a NaN or inf entry can never be drawn)."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(row=logits_rows(), params=accepted_settings(llm))
    def check(row, params):
        logits = torch.tensor([row], dtype=torch.float32)
        seq = llm.Sequence([1], llm.SamplingParams(max_tokens=1, **params), loop=None)
        [token] = llm.sample(logits.clone(), [seq])
        assert token is not None and not seq.done
        assert 0 <= token < len(row) and np.isfinite(row[token])

    check()


def test_a_row_without_a_finite_logit_fails_only_its_sequence(llm):
    rows_ = torch.tensor([[float("nan")] * 5, [0.0, 1.0, 5.0, 2.0, 0.5]])
    loop = asyncio.new_event_loop()
    try:
        broken, fine = (
            llm.Sequence([1], llm.SamplingParams(max_tokens=4, temperature=0), loop=loop)
            for _ in range(2)
        )
        tokens = llm.sample(rows_, [broken, fine])
        loop.run_until_complete(asyncio.sleep(0))  # deliver the events the sampler sent
        assert tokens == [None, 2]
        assert broken.done and not fine.done
        error = broken.events.get_nowait()
        assert isinstance(error, llm.ApiError) and error.code == "model_error"
    finally:
        loop.close()


class BreaksOnAccept:
    """A logits processor that allows every token and then fails to accept one."""

    def __call__(self, logits):
        pass

    def accept(self, token_id):
        raise RuntimeError("injected failure while accepting a token")


def test_a_failure_while_accepting_a_token_fails_only_its_sequence(llm, smollm2, smollm2_dir):
    tokenizer, model = smollm2
    fatal: list[BaseException] = []
    engine = llm.Engine(
        model, {tokenizer.eos_token_id}, max_running=8, max_waiting=8, on_fatal=fatal.append
    )
    decoder = AutoTokenizer.from_pretrained(smollm2_dir)
    async_engine = llm.AsyncEngine(engine, tokenizer, decoder, llm.Settings(request_timeout=120))
    threading.Thread(target=engine.run_forever, daemon=True).start()
    prompt = tokenizer.apply_chat_template(
        HI, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]

    async def scenario():
        params = llm.SamplingParams(max_tokens=12, temperature=0)
        good = async_engine.generate(list(prompt), params)
        bad = async_engine.generate(list(prompt), params, processors=(BreaksOnAccept(),))
        with pytest.raises(llm.ApiError, match="injected failure") as failed:
            await bad.text()
        assert failed.value.status == 500 and failed.value.code == "model_error"
        return await good.text()

    try:
        assert asyncio.run(scenario())
    finally:
        engine.stopped.set()
    assert fatal == [] and engine.failure is None


# 2. Lone surrogates, on every route that takes text.

SURROGATE_CASES = [
    (LLM, "/v1/chat/completions", "messages[0].content"),
    (LLM, "/v1/chat/completions", "user"),
    (LLM, "/generate", "inputs"),
    (LLM, "/v1/feedback", "comment"),
    (EMBEDDINGS, "/v1/embeddings", "input[0]"),
    (EMBEDDINGS, "/v1/embeddings", "user"),
    (EMBEDDINGS, "/v2/models/all-MiniLM-L6-v2/infer", "inputs[0].data[0]"),
]


def surrogate_body(route: str, field: str) -> str:
    """A raw JSON body with a lone surrogate in `field` (json.dumps would escape it the same)."""
    s = LONE_SURROGATE
    if route == "/v1/chat/completions":
        content = s if field.startswith("messages") else '"Hi"'
        user = f', "user": {s}' if field == "user" else ""
        return (
            f'{{"model": "{LLM_MODEL}", "max_tokens": 2, '
            f'"messages": [{{"role": "user", "content": {content}}}]{user}}}'
        )
    if route == "/generate":
        return f'{{"inputs": {s}}}'
    if route == "/v1/feedback":
        return f'{{"id": "x", "rating": 1, "comment": {s}}}'
    if route == "/v1/embeddings":
        text = s if field.startswith("input") else '"hello"'
        user = f', "user": {s}' if field == "user" else ""
        return f'{{"model": "{EMBEDDING_MODEL}", "input": [{text}]{user}}}'
    return f'{{"inputs": [{{"name": "text", "datatype": "BYTES", "shape": [1], "data": [{s}]}}]}}'


@pytest.mark.parametrize(
    "server, route, field", SURROGATE_CASES, ids=[f"{r}-{f}" for _, r, f in SURROGATE_CASES]
)
def test_a_lone_surrogate_gets_a_400_naming_the_field(
    llm_server, embedding_server, server, route, field
):
    url = (llm_server if server == LLM else embedding_server).url
    response = requests.post(
        url + route,
        data=surrogate_body(route, field).encode(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and "surrogate" in error["message"]
    still_serving(url, chat=server == LLM)
    logged = {"model": EMBEDDING_MODEL, "input": "logged after", "user": "u"}
    if server == EMBEDDINGS:  # the log writer is alive: a logged answer still arrives
        assert requests.post(url + "/v1/embeddings", json=logged, timeout=30).ok


# 5. Open Inference Protocol ids are the client's; the log's key is the server's.


def test_a_reused_inference_request_id_is_logged_twice_under_server_ids(embedding_server):
    url = embedding_server.url + f"/v2/models/{EMBEDDING_MODEL}/infer"
    body = {
        "id": "triton-7",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["same id"]}],
    }
    first, second = (requests.post(url, json=body, timeout=30) for _ in range(2))
    assert first.status_code == second.status_code == 200, second.text
    assert first.json()["id"] == second.json()["id"] == "triton-7"  # echoed as the client sent it
    server_ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert len(set(server_ids)) == 2 and "triton-7" not in server_ids
    logged = rows(
        embedding_server.log_db,
        "SELECT id, client_id FROM requests WHERE client_id = ? ORDER BY created_at",
        "triton-7",
    )
    assert sorted(logged) == sorted((sid, "triton-7") for sid in server_ids)
    feedback = {"id": server_ids[1], "rating": 1}
    assert requests.post(embedding_server.url + "/v1/feedback", json=feedback).status_code == 200


# 6. Latency in the log counts from the request's arrival.


def test_logged_latency_counts_from_arrival(llm_server):
    url = llm_server.url
    cases = [
        ("/generate", {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 24}}),
        (
            "/v1/chat/completions",
            {"model": LLM_MODEL, "messages": HI, "max_tokens": 24, "temperature": 0},
        ),
    ]
    for route, body in cases:
        started = time.perf_counter()
        response = requests.post(url + route, json=body, timeout=60)
        elapsed_ms = (time.perf_counter() - started) * 1000
        [(latency,)] = rows(
            llm_server.log_db,
            "SELECT latency_ms FROM requests WHERE id = ?",
            response.headers["x-request-id"],
        )
        assert 0.5 * elapsed_ms <= latency <= elapsed_ms, (route, latency, elapsed_ms)


# 9 and 10. The guard: probes stay open, buckets are bounded, a missing client is no 500.


def test_rate_limiter_keeps_at_most_10000_buckets_least_recently_used_first_out():
    kit = load_snippet("backends/server_kit.py")
    limiter = kit.RateLimiter(per_minute=60)
    for i in range(10_050):
        limiter.retry_after(f"client-{i}")
    assert len(limiter.buckets) == 10_000
    assert "client-0" not in limiter.buckets and "client-10049" in limiter.buckets
    limiter.retry_after("client-50")  # the oldest, used again: now the most recent
    limiter.retry_after("client-new")
    assert "client-50" in limiter.buckets and "client-51" not in limiter.buckets


def test_a_request_without_a_client_address_is_rate_limited_not_a_500():
    kit = load_snippet("backends/server_kit.py")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = kit.Guard(app, api_keys=[], rate_limit_per_minute=1, max_body_bytes=100)
    scope = {"type": "http", "path": "/v1/models", "method": "GET", "headers": [], "client": None}
    statuses = []

    async def call():
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await guard(scope, receive, send)

    for _ in range(2):
        asyncio.run(call())
    assert statuses == [200, 429]


def test_forwarded_client_addresses_get_their_own_buckets():
    """Behind a proxy, --forwarded-allow-ips makes X-Forwarded-For the client's address, so one
    caller's burst does not use up everybody's limit."""
    with serve(EMBEDDINGS, "--rate-limit", "2", "--forwarded-allow-ips", "127.0.0.1") as srv:

        def models(client: str) -> int:
            return requests.get(
                srv.url + f"/v2/models/{EMBEDDING_MODEL}",
                headers={"X-Forwarded-For": client},
                timeout=10,
            ).status_code

        assert [models("10.0.0.1") for _ in range(3)] == [200, 200, 429]
        assert models("10.0.0.2") == 200


# 12. A stream still running when the drain ends gets an error event, [DONE] and its row.


def test_a_stream_longer_than_the_drain_ends_with_an_error_event_and_a_row(smollm2_dir, tmp_path):
    log_db = tmp_path / "requests.db"
    with serve(
        LLM, "--model", str(smollm2_dir), "--drain-seconds", "1", "--log-db", str(log_db)
    ) as srv:
        body = {
            "model": LLM_MODEL,
            "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 1500,
            "temperature": 1.0,
            "seed": 5,
            "stream": True,
        }
        with requests.post(
            srv.url + "/v1/chat/completions", json=body, stream=True, timeout=60
        ) as response:
            request_id = response.headers["x-request-id"]
            lines = response.iter_lines(decode_unicode=True)
            for _ in range(4):
                next(lines)
            srv.proc.send_signal(15)
            rest = [line for line in lines if line]
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert error["code"] == "shutting_down" and rest[-1] == "data: [DONE]"
        assert srv.proc.wait(timeout=60) in (0, -15)
        assert "Traceback" not in srv.log()
    [(status, output)] = rows(
        log_db, "SELECT status, output FROM requests WHERE id = ?", request_id
    )
    assert status == 503 and json.loads(output)  # the partial answer is kept


def test_the_model_raising_mid_batch_fails_only_that_batch(minilm_dir):
    """The model raising mid-batch fails that batch's requests alone (500 model_error)."""
    server = load_snippet(EMBEDDINGS)
    app = server.create_app(server.Settings(max_wait_ms=50))
    with serve_app(app) as url:
        assert wait_until(lambda: requests.get(url + "/health").status_code == 200, timeout=60)
        real = app.state.batcher.embed

        def embed(token_ids):
            if any(len(ids) > 40 for ids in token_ids):
                raise RuntimeError("injected model failure")
            return real(token_ids)

        app.state.batcher.embed = embed
        body = {"model": EMBEDDING_MODEL, "input": "word " * 60}
        failed = requests.post(url + "/v1/embeddings", json=body, timeout=30)
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "model_error"
        still_serving(url, chat=False)


def app_routes(module, **settings) -> list[tuple[str, str]]:
    """(method, path) for every route the server's app really has, path parameters filled in."""
    app = module.create_app(module.Settings(**settings))
    model = getattr(module, "MODEL_NAME", None) or module.MODEL_ID
    found = []
    for route in iter_route_contexts(app.routes):  # included routers' routes too
        for method in sorted(route.methods or []):
            if method != "HEAD":
                found.append((method, route.path.replace("{name}", model)))
    return found


@pytest.mark.parametrize("server", [LLM, EMBEDDINGS])
def test_keys_and_limits_cover_every_route_but_the_probes(server, smollm2_dir, tmp_path):
    """The routes come from app.routes, so a route added later is covered without editing a list:
    each inference route needs a key and counts against that key's limit; the probes (/health,
    /metrics, the Open Inference Protocol's health and ready routes) need neither."""
    module = load_snippet(server)
    import server_kit  # the servers' own copy, on sys.path beside them

    extra = {"model": smollm2_dir} if server == LLM else {}
    routes = app_routes(module, log_db=tmp_path / "routes.db", **extra)
    keys = [f"key-{i}" for i in range(len(routes))]
    args = ["--log-db", str(tmp_path / "log.db"), "--rate-limit", "1"]
    args += [arg for key in keys for arg in ("--api-key", key)]
    if server == LLM:
        args += ["--model", str(smollm2_dir)]
    with serve(server, *args) as srv:
        for (method, path), key in zip(routes, keys):
            body = {} if method == "POST" else None
            if server_kit.is_open(path):
                for _ in range(3):
                    answer = requests.request(method, srv.url + path, json=body, timeout=30)
                    assert answer.status_code not in (401, 429), (path, answer.status_code)
                continue
            assert requests.request(method, srv.url + path, json=body).status_code == 401, path
            headers = {"Authorization": f"Bearer {key}"}
            first = requests.request(method, srv.url + path, json=body, headers=headers)
            assert first.status_code not in (401, 429), (path, first.text)
            second = requests.request(method, srv.url + path, json=body, headers=headers)
            assert second.status_code == 429, path
    open_paths = {path for _, path in routes if server_kit.is_open(path)}
    assert {"/health", "/metrics"} <= open_paths
    if server == EMBEDDINGS:
        assert {
            "/v2/health/live",
            "/v2/health/ready",
            f"/v2/models/{EMBEDDING_MODEL}/ready",
        } <= open_paths
