"""backends/llm_server.py and its clients, against real servers on loopback ports.

What the page claims: concurrent greedy answers equal transformers' own `generate`; a sampled
neighbour never changes a greedy answer; continuous batching is real (a short request that joins
a long one finishes first); streaming and non-streaming agree; bad input gets a 400 naming the
field; every route but the probes needs a key, and each key has its own rate limit; a failed
prefill fails only its own request; a request past its deadline gets 504 (an error event when
streaming); a failure mid-stream is an error event then [DONE]; a model that cannot load or an
engine that dies turns /health to 503 with the reason; nothing heavy runs on the event loop;
a dropped stream leaves the batch; SIGTERM finishes running streams.

The tests run the server in float32, where batched greedy decoding equals one-at-a-time decoding
token for token (in bfloat16 a different batch shape can flip a near-tie token).
"""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import requests
import torch
from helpers import SNIPPETS, load_snippet, run_snippet, serve, serve_app, wait_until
from openai import APIStatusError, AsyncOpenAI, OpenAI
from prometheus_client.parser import text_string_to_metric_families
from starlette.middleware.base import BaseHTTPMiddleware
from transformers import AutoTokenizer

SERVER = "backends/llm_server.py"
DETOKENIZER = "backends/detokenizer.py"  # part 4 of the server, in its own file
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def greedy(smollm2):
    """The reference: transformers' own greedy generate, one prompt at a time."""
    tokenizer, model = smollm2

    def generate(prompt: str, max_tokens: int) -> str:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        return tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)

    return generate


def chat(url: str, prompt: str, **params) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **params}
    response = requests.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def sse_lines(url: str, body: dict, headers: dict | None = None) -> list[str]:
    with requests.post(
        url + "/v1/chat/completions", json=body, stream=True, timeout=120, headers=headers
    ) as response:
        assert response.status_code == 200, response.text
        return [line for line in response.iter_lines(decode_unicode=True) if line]


def metric(url: str, name: str, labels: dict | None = None) -> float:
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and (labels is None or labels.items() <= sample.labels.items()):
                return sample.value
    return 0.0


PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about servers.",
    "List three fruits.",
    "Explain batching in one sentence.",
    "Say hello.",
    "What is 2+2?",
]


def test_concurrent_greedy_answers_equal_generate(llm_server, greedy):
    async def ask_all():
        async with AsyncOpenAI(base_url=llm_server.url + "/v1", api_key="x") as client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": p}],
                        max_tokens=24 + 8 * i,
                        temperature=0,
                    )
                    for i, p in enumerate(PROMPTS)
                )
            )

    replies = asyncio.run(ask_all())
    for i, (prompt, reply) in enumerate(zip(PROMPTS, replies)):
        assert reply.choices[0].message.content == greedy(prompt, 24 + 8 * i), prompt


def test_greedy_is_unaffected_by_a_sampled_neighbour(llm_server, greedy):
    url = llm_server.url

    async def pair():
        async with AsyncOpenAI(base_url=url + "/v1", api_key="x") as client:
            hot = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Tell a story."}],
                max_tokens=32,
                temperature=1.5,
                top_p=0.9,
                seed=7,
            )
            cold = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": PROMPTS[1]}],
                max_tokens=40,
                temperature=0,
            )
            return await asyncio.gather(hot, cold)

    sampled, greedy_reply = asyncio.run(pair())
    assert greedy_reply.choices[0].message.content == greedy(PROMPTS[1], 40)
    again = chat(url, "Tell a story.", max_tokens=32, temperature=1.5, top_p=0.9, seed=7)
    assert (
        again["choices"][0]["message"]["content"] == sampled.choices[0].message.content
    )  # the seed decides
    other_seed = chat(url, "Tell a story.", max_tokens=32, temperature=1.5, top_p=0.9, seed=8)
    assert other_seed["choices"][0]["message"]["content"] != sampled.choices[0].message.content


def test_a_short_request_joining_a_long_one_finishes_first(llm_server):
    """Continuous batching, observed: the short request joins the running batch and leaves it
    as soon as it is done, while the long one keeps streaming (then the test hangs up on it)."""
    url = llm_server.url
    running_seen: list[float] = []

    async def watch_running(stop: asyncio.Event):
        async with httpx.AsyncClient(base_url=url) as client:
            while not stop.is_set():
                text = (await client.get("/metrics")).text
                running_seen.extend(
                    s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == "llm_running_sequences"
                )
                await asyncio.sleep(0.02)

    async def scenario():
        finished: list[str] = []
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_running(stop))
        async with AsyncOpenAI(base_url=url + "/v1", api_key="x") as client:
            long_stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Write a very long essay about rivers."}],
                max_tokens=300,
                temperature=0.7,
                seed=1,
                stream=True,
            )

            async def read_long():
                async for _ in long_stream:
                    pass
                finished.append("long")

            reader = asyncio.create_task(read_long())
            await asyncio.sleep(1.0)  # the long one is decoding
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Say hi."}],
                max_tokens=8,
                temperature=0,
            )
            finished.append("short")
            await asyncio.sleep(0.5)  # the long one would be done by now if it had been held up
            reader.cancel()
            await long_stream.close()
        stop.set()
        await watcher
        return finished

    assert asyncio.run(scenario()) == ["short"]
    assert max(running_seen) >= 2  # both were in the batch at once
    assert wait_until(lambda: metric(url, "llm_running_sequences") == 0, timeout=10)


def test_stream_and_non_stream_agree(llm_server):
    url = llm_server.url
    whole = chat(url, PROMPTS[2], max_tokens=40, temperature=0)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPTS[2]}],
        "max_tokens": 40,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines = sse_lines(url, body)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    last = [c for c in chunks if c["choices"]][-1]["choices"][0]
    assert last["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_16_concurrent_streams_finish_with_the_right_reason(llm_server):
    async def one(client, i):
        max_tokens = 4 + 3 * i
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Write a long essay about the number {i}."}],
            max_tokens=max_tokens,
            temperature=0.7,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
        )
        finish, usage = None, None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            usage = chunk.usage or usage
        return max_tokens, finish, usage

    async def run_all():
        async with AsyncOpenAI(base_url=llm_server.url + "/v1", api_key="x") as client:
            return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = asyncio.run(run_all())
    assert any(finish == "length" for _, finish, _ in results)  # 4 tokens cannot finish an essay
    for max_tokens, finish, usage in results:
        assert 1 <= usage.completion_tokens <= max_tokens
        if finish == "length":
            assert usage.completion_tokens == max_tokens
        else:  # stopped by the end-of-sequence token, possibly on the very last allowed token
            assert finish == "stop"


def test_stop_strings(llm_server):
    reply = chat(llm_server.url, PROMPTS[0], max_tokens=30, temperature=0, stop=["Paris"])
    assert reply["choices"][0]["message"]["content"] == "The capital of France is "
    assert reply["choices"][0]["finish_reason"] == "stop"
    split = chat(
        llm_server.url, PROMPTS[0], max_tokens=30, temperature=0, stop="of Fr"
    )  # spans two tokens
    assert split["choices"][0]["message"]["content"] == "The capital "


def test_client_snippets(llm_server):
    """The two chat snippets run against vLLM as well, in test_engines.py."""
    url = llm_server.url
    out = run_snippet("backends/llm_load.py", "--url", url, "--requests", "8", "--concurrency", "4")
    assert out.startswith("8 requests in") and "output_tokens_per_s" in out


HI = [{"role": "user", "content": "hi"}]
BAD = [
    ("malformed JSON", b'{"model": ', 400, "not valid JSON"),
    ("non-UTF-8", b'{"model": "\xff"}', 400, "not valid UTF-8"),
    ("missing messages", {"model": MODEL}, 400, "Missing required parameter: 'messages'"),
    ("empty messages", {"model": MODEL, "messages": []}, 400, "Invalid 'messages'"),
    (
        "unknown role",
        {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "Invalid 'messages[0].role'",
    ),
    (
        "non-string content",
        {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
        400,
        "Invalid 'messages[0].content'",
    ),
    (
        "max_tokens zero",
        {"model": MODEL, "messages": HI, "max_tokens": 0},
        400,
        "Invalid 'max_tokens'",
    ),
    (
        "max_tokens a boolean",
        {"model": MODEL, "messages": HI, "max_tokens": True},
        400,
        "Invalid 'max_tokens'",
    ),
    (
        "max_tokens beyond context",
        {"model": MODEL, "messages": HI, "max_tokens": 5000},
        400,
        "context window is 2048",
    ),
    (
        "temperature too high",
        {"model": MODEL, "messages": HI, "temperature": 3},
        400,
        "Invalid 'temperature'",
    ),
    (
        "temperature a string",
        {"model": MODEL, "messages": HI, "temperature": "0.5"},
        400,
        "Invalid 'temperature'",
    ),
    ("top_p zero", {"model": MODEL, "messages": HI, "top_p": 0}, 400, "Invalid 'top_p'"),
    (
        "prompt too long",
        {"model": MODEL, "messages": [{"role": "user", "content": "word " * 2100}]},
        400,
        "the context window is 2048",
    ),
    (
        "unsupported parameter",
        {"model": MODEL, "messages": HI, "functions": [{"name": "f"}]},
        400,
        "'functions' is not supported",
    ),
    ("n above 1", {"model": MODEL, "messages": HI, "n": 2}, 400, "Invalid 'n'"),
    (
        "unknown field",
        {"model": MODEL, "messages": HI, "temprature": 1},
        400,
        "Unrecognized request argument supplied: temprature",
    ),
    ("bad stop", {"model": MODEL, "messages": HI, "stop": 5}, 400, "Invalid 'stop'"),
    (
        "too many stops",
        {"model": MODEL, "messages": HI, "stop": list("abcde")},
        400,
        "Invalid 'stop'",
    ),
    ("unknown model", {"model": "gpt-9", "messages": HI}, 404, "does not exist"),
]


@pytest.mark.parametrize("case, body, status, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gets_a_clear_error(llm_server, case, body, status, message):
    kwargs = (
        {"json": body}
        if isinstance(body, dict)
        else {"data": body, "headers": {"Content-Type": "application/json"}}
    )
    response = requests.post(llm_server.url + "/v1/chat/completions", timeout=30, **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_models_metrics_and_docs(llm_server):
    url = llm_server.url
    assert requests.get(url + "/v1/models", timeout=10).json()["data"][0]["id"] == MODEL
    chat(url, "Say hello.", max_tokens=8, temperature=0)
    names = {f.name for f in text_string_to_metric_families(requests.get(url + "/metrics").text)}
    assert {
        "llm_requests",
        "llm_prompt_tokens",
        "llm_output_tokens",
        "llm_time_to_first_token_seconds",
        "llm_time_per_output_token_seconds",
        "llm_running_sequences",
        "llm_waiting_sequences",
    } <= names
    assert metric(url, "llm_output_tokens_total") >= 8
    assert metric(url, "llm_time_to_first_token_seconds_count") >= 1
    assert (
        metric(url, "llm_requests_total", {"route": "/v1/chat/completions", "status": "200"}) >= 1
    )
    schema = requests.get(url + "/openapi.json", timeout=10).json()["components"]["schemas"]
    assert {"messages", "max_tokens", "temperature"} <= schema["ChatRequest"]["properties"].keys()


def test_health_answers_while_megabyte_prompts_are_tokenized(llm_server):
    """The chat template and tokenizer run in the tokenizer thread: /health is answered while
    four 1 MB prompts (~200,000 tokens each, rejected as too long once counted) are encoded."""
    big = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 199_000}]}

    async def race():
        finished: list[str] = []
        async with httpx.AsyncClient(base_url=llm_server.url, timeout=60) as client:

            async def big_request(i):
                response = await client.post("/v1/chat/completions", json=big)
                assert (
                    response.status_code == 400
                    and "context window" in response.json()["error"]["message"]
                )
                finished.append(f"big {i}")

            async def probe():
                await asyncio.sleep(0.1)
                started = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                finished.append(f"health in {time.perf_counter() - started:.3f} s")

            await asyncio.gather(*(big_request(i) for i in range(4)), probe())
        return finished

    order = asyncio.run(race())
    assert order[0].startswith("health") or order[1].startswith("health"), order


def test_tgi_generate_route(llm_server, smollm2):
    tokenizer, model = smollm2
    out = run_snippet("backends/generate_with_tgi_api.py", "--url", llm_server.url)
    prompt = "The three primary colours are"
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        expected = model.generate(**ids, max_new_tokens=20, do_sample=False)
    assert (
        out.strip()
        == "generated: "
        + tokenizer.decode(
            expected[0][ids["input_ids"].shape[1] :], skip_special_tokens=True
        ).strip()
    )
    bad = requests.post(
        llm_server.url + "/generate", json={"inputs": "", "parameters": {}}, timeout=10
    )
    assert bad.status_code == 400 and "'inputs'" in bad.json()["error"]["message"]
    bad = requests.post(
        llm_server.url + "/generate", json={"inputs": "x", "parameters": {"best_of": 2}}, timeout=10
    )
    assert bad.status_code == 400 and "best_of" in bad.json()["error"]["message"]


def test_structured_output_always_fits_the_schema(llm_server):
    """Sampled hot, sixteen answers constrained by a JSON schema: each that stops parses and
    validates, and the grammar lets most close their JSON well within max_tokens."""
    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "colour": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["name", "age", "colour"],
        "additionalProperties": False,
    }

    async def ask_all():
        async with AsyncOpenAI(base_url=llm_server.url + "/v1", api_key="x") as client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": f"Invent person number {i}."}],
                        response_format={
                            "type": "json_schema",
                            "json_schema": {"name": "person", "schema": schema},
                        },
                        max_tokens=80,
                        temperature=1.0,
                        seed=i,
                    )
                    for i in range(16)
                )
            )

    replies = asyncio.run(ask_all())
    stopped = [
        r.choices[0].message.content for r in replies if r.choices[0].finish_reason == "stop"
    ]
    assert len(stopped) >= 14
    for answer in stopped:
        jsonschema.validate(json.loads(answer), schema)
    anything = chat(
        llm_server.url,
        "Give me a JSON object.",
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    if anything["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(anything["choices"][0]["message"]["content"]), dict)


STRUCTURED_BAD = [
    (
        "bad schema",
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
        "Invalid 'response_format.json_schema.schema'",
    ),
    ("schema missing", {"type": "json_schema"}, "'response_format.json_schema' is required"),
    (
        "schema not an object",
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}},
        "Invalid 'response_format.json_schema.schema'",
    ),
    ("unknown type", {"type": "xml"}, "Invalid 'response_format.type'"),
]


@pytest.mark.parametrize(
    "case, response_format, message", STRUCTURED_BAD, ids=[c[0] for c in STRUCTURED_BAD]
)
def test_a_bad_response_format_gets_a_400(llm_server, case, response_format, message):
    response = requests.post(
        llm_server.url + "/v1/chat/completions",
        timeout=30,
        json={"model": MODEL, "messages": HI, "response_format": response_format},
    )
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_a_cached_system_prompt_gives_the_same_answers(llm_server, smollm2):
    """The second request with the same system prompt reuses its cached KV (the hit counter says
    so) and answers exactly as transformers' generate does on the whole prompt."""
    tokenizer, model = smollm2
    system = {"role": "system", "content": "You are a terse assistant for a bicycle shop. " * 6}
    hits = metric(llm_server.url, "llm_prefix_cache_hits_total")
    for question in ("Do you sell helmets?", "Can you fix a puncture?"):
        messages = [system, {"role": "user", "content": question}]
        body = {"model": MODEL, "messages": messages, "max_tokens": 20, "temperature": 0}
        reply = requests.post(llm_server.url + "/v1/chat/completions", json=body, timeout=60).json()
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=20, do_sample=False)
        expected = tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert reply["choices"][0]["message"]["content"] == expected
    assert metric(llm_server.url, "llm_prefix_cache_hits_total") >= hits + 1
    assert metric(llm_server.url, "llm_prefix_cache_tokens_total") > 50


# Pieces tested in process: the detokenizer, the sampler, the engine.


def test_detokenizer_matches_a_full_decode_reading_a_short_window(smollm2):
    tokenizer = smollm2[0]
    server = load_snippet(DETOKENIZER)
    text = "Plain words, then naïve café, 東京, and an emoji 🚀 in a longer answer. " * 8
    ids = tokenizer.encode(text)
    windows: list[int] = []

    class Counting:
        def decode(self, ids, **kwargs):
            windows.append(len(ids))
            return tokenizer.decode(ids, **kwargs)

    detokenizer = server.Detokenizer(Counting(), stops=())
    streamed = "".join(detokenizer.add(i) for i in ids) + detokenizer.flush()
    assert streamed == tokenizer.decode(ids, skip_special_tokens=True)
    assert (
        len(ids) > 100 and max(windows) <= 6
    )  # each step decodes a few tokens, never the whole answer


def test_detokenizer_cuts_at_a_stop_string_spanning_tokens(smollm2):
    tokenizer = smollm2[0]
    server = load_snippet(DETOKENIZER)
    ids = tokenizer.encode("The answer is forty-two, not forty-one.")
    detokenizer = server.Detokenizer(tokenizer, stops=("y-tw",))
    sent = ""
    for token in ids:
        sent += detokenizer.add(token)
        if detokenizer.stopped:
            break
    assert sent == "The answer is fort" and detokenizer.stopped
    holds_back = server.Detokenizer(tokenizer, stops=("forty-nine",))
    whole = "".join(holds_back.add(i) for i in ids) + holds_back.flush()
    assert whole == "The answer is forty-two, not forty-one." and not holds_back.stopped


def test_sampling_leaves_the_global_generator_alone():
    server = load_snippet(SERVER)
    logits = torch.randn(2, 1000)
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    for seed in (None, 5):
        seqs = [
            server.Sequence(
                [1],
                server.SamplingParams(max_tokens=5, temperature=1.0, top_p=top_p, seed=seed),
                loop=None,
            )
            for top_p in (0.9, 1.0)
        ]
        for _ in range(5):
            server.sample(logits, seqs)
    assert torch.equal(torch.random.get_rng_state(), before)  # torch.seed() used to reseed it


def test_nucleus_sampling_draws_only_inside_top_p():
    """Whether the nucleus is found among the top 256 or needs the whole vocabulary, only tokens
    inside it are drawn, in proportion to their probability."""
    server = load_snippet(SERVER)
    peaked = torch.full((1000,), 1e-4)
    peaked[:3] = torch.tensor([0.5, 0.3, 0.1])  # the nucleus for top_p 0.85 is 3 tokens
    gentle = torch.linspace(
        2, 1, 1000
    )  # the nucleus for top_p 0.5 is ~450 tokens: beyond the top 256
    for probs, top_p in ((peaked / peaked.sum(), 0.85), (gentle / gentle.sum(), 0.5)):
        ranked = probs.sort(descending=True)
        inside = ranked.indices[ranked.values.cumsum(0) - ranked.values < top_p].tolist()
        seq = server.Sequence(
            [1], server.SamplingParams(max_tokens=1, top_p=top_p, seed=0), loop=None
        )
        drawn = [server.draw(probs, seq) for _ in range(3000)]
        assert set(drawn) <= set(inside)
        assert (
            len(set(drawn)) > min(len(inside), 300) * 0.6
        )  # and it is not collapsed onto a few of them


class FailsOnMarker:
    """The real model, except that the prefill of a prompt containing `marker` raises."""

    def __init__(self, model, marker: list[int]):
        self.model, self.marker, self.config = model, marker, model.config

    def __call__(self, input_ids, **kwargs):
        ids = input_ids[0].tolist()
        if input_ids.shape[1] > 1 and any(
            ids[i : i + len(self.marker)] == self.marker for i in range(len(ids))
        ):
            raise RuntimeError("injected prefill failure")
        return self.model(input_ids=input_ids, **kwargs)


def test_a_failed_prefill_fails_only_its_own_request(smollm2, smollm2_dir, greedy):
    tokenizer, model = smollm2
    server = load_snippet(SERVER)
    marker = tokenizer.encode(" EXPLODE")
    fatal: list[BaseException] = []
    engine = server.Engine(
        FailsOnMarker(model, marker),
        {tokenizer.eos_token_id},
        max_running=16,
        max_waiting=64,
        on_fatal=fatal.append,
    )
    decoder = AutoTokenizer.from_pretrained(smollm2_dir)
    llm = server.AsyncEngine(engine, tokenizer, decoder, server.Settings(request_timeout=300))
    threading.Thread(target=engine.run_forever, daemon=True).start()
    prompts = [f"Write two sentences about the number {i}." for i in range(4)]

    def prompt_ids(text: str) -> list[int]:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]

    async def scenario():
        greedy_params = server.SamplingParams(max_tokens=24, temperature=0)
        good = [llm.generate(prompt_ids(p), greedy_params) for p in prompts]
        answers = [asyncio.create_task(generation.text()) for generation in good]
        while len(engine.running) < len(prompts):  # wait until they are all streaming
            await asyncio.sleep(0.05)
        bad = llm.generate(prompt_ids("Please EXPLODE now."), server.SamplingParams(max_tokens=24))
        with pytest.raises(server.ApiError, match="injected prefill failure"):
            await bad.text()
        return await asyncio.gather(*answers)

    try:
        texts = asyncio.run(scenario())
    finally:
        engine.stopped.set()
    assert texts == [greedy(p, 24) for p in prompts]  # the others finished, unchanged
    assert fatal == [] and engine.failure is None


class FailsWhenTold:
    """The real model, until `broken` is set: then every forward pass raises."""

    def __init__(self, model):
        self.model, self.config, self.broken = model, model.config, False

    def __call__(self, **kwargs):
        if self.broken:
            raise RuntimeError("injected decode failure")
        return self.model(**kwargs)


def test_failures_mid_stream_and_a_dead_engine_are_visible(smollm2_dir):
    server = load_snippet(SERVER)
    app = server.create_app(server.Settings(model=smollm2_dir, dtype="float32"))
    assert not any(
        m.cls is BaseHTTPMiddleware for m in app.user_middleware
    )  # pure ASGI: streams pass through
    with serve_app(app) as url:
        assert wait_until(lambda: requests.get(url + "/health").status_code == 200, timeout=60)
        engine = app.state.engine
        engine.model = FailsWhenTold(engine.model)
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a long essay."}],
            "max_tokens": 200,
            "stream": True,
        }
        with requests.post(
            url + "/v1/chat/completions", json=body, stream=True, timeout=60
        ) as response:
            lines = response.iter_lines(decode_unicode=True)
            for _ in range(6):
                next(lines)  # a few tokens arrived
            engine.model.broken = True
            rest = [line for line in lines if line]
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert "injected decode failure" in error["message"] and error["type"] == "server_error"
        assert rest[-1] == "data: [DONE]"  # an error event, then the end: never a silent cut

        engine.model.broken = False  # one failed step does not stop the engine
        assert chat(url, "Say hi.", max_tokens=4, temperature=0)["usage"]["completion_tokens"] >= 1

        def scheduler_bug():
            time.sleep(0.5)  # a request arrives meanwhile and waits
            raise RuntimeError("bug in the scheduler")

        engine.admit = scheduler_bug
        started = time.monotonic()
        waiting = requests.post(
            url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60
        )
        assert (
            waiting.status_code == 500
            and "bug in the scheduler" in waiting.json()["error"]["message"]
        )
        assert time.monotonic() - started < 10  # failed at once, not at its deadline
        health = requests.get(url + "/health", timeout=10)
        assert health.status_code == 503 and "the engine stopped" in health.json()["reason"]
        refused = requests.post(
            url + "/v1/chat/completions", json={**body, "stream": False}, timeout=10
        )
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_failed"


# Servers with their own settings.


def test_queue_full_and_deadlines(smollm2_dir):
    with serve(
        SERVER,
        "--model",
        str(smollm2_dir),
        "--max-running",
        "1",
        "--max-waiting",
        "1",
        "--request-timeout",
        "2",
    ) as small:

        async def hammer():
            async def one(i):
                async with AsyncOpenAI(
                    base_url=small.url + "/v1", api_key="x", max_retries=0
                ) as client:
                    try:
                        await client.chat.completions.create(
                            model=MODEL,
                            messages=[{"role": "user", "content": f"Story {i}"}],
                            max_tokens=10,
                        )
                        return 200, None
                    except APIStatusError as error:
                        return error.status_code, error.response.headers.get("retry-after")

            return await asyncio.gather(*(one(i) for i in range(8)))

        results = asyncio.run(hammer())
        assert {status for status, _ in results} == {200, 503}
        assert all(retry == "1" for status, retry in results if status == 503)

        long = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 1500,
            "temperature": 1.0,
            "seed": 3,
        }
        started = time.monotonic()
        late = requests.post(small.url + "/v1/chat/completions", json=long, timeout=60)
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        assert time.monotonic() - started < 10
        lines = sse_lines(small.url, {**long, "stream": True})
        assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "timeout"
        assert lines[-1] == "data: [DONE]"
        assert wait_until(lambda: metric(small.url, "llm_running_sequences") == 0, timeout=5)


def test_api_keys_and_rate_limit_guard_every_route(smollm2_dir, tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("k3\n")
    with serve(
        SERVER,
        "--model",
        str(smollm2_dir),
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--api-keys",
        str(keys_file),
        "--rate-limit",
        "8",
    ) as srv:
        routes = [
            ("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 2}),
            ("POST", "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
            ("GET", "/v1/models", None),
        ]
        for method, path, body in routes:  # /generate used to run without a key
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}):
                denied = requests.request(
                    method, srv.url + path, json=body, headers=headers, timeout=10
                )
                assert (
                    denied.status_code == 401
                    and denied.json()["error"]["code"] == "invalid_api_key"
                ), path
            for key in ("k1", "k2", "k3"):
                allowed = requests.request(
                    method,
                    srv.url + path,
                    json=body,
                    timeout=60,
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert allowed.status_code == 200, (path, key, allowed.text)
        for probe in ("/health", "/metrics", "/docs", "/openapi.json"):
            assert requests.get(srv.url + probe, timeout=10).status_code == 200, probe
        reply = OpenAI(base_url=srv.url + "/v1", api_key="k2").chat.completions.create(
            model=MODEL, messages=HI, max_tokens=4
        )
        assert reply.usage.completion_tokens >= 1
        # each key made 3 or 4 requests of its 8 a minute: k1 runs out after 4 or 5 more
        statuses = [
            requests.get(srv.url + "/v1/models", headers={"Authorization": "Bearer k1"}).status_code
            for _ in range(6)
        ]
        assert statuses.count(429) >= 1 and statuses[0] == 200
        limited = requests.get(srv.url + "/v1/models", headers={"Authorization": "Bearer k1"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert (
            requests.get(srv.url + "/v1/models", headers={"Authorization": "Bearer k3"}).status_code
            == 200
        )


def test_disconnected_stream_stops_consuming_compute(smollm2_dir):
    """With a key check in front (pure ASGI middleware), a client that hangs up mid-stream
    still cancels its sequence."""
    with serve(SERVER, "--model", str(smollm2_dir), "--api-key", "k") as srv:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 1500,
            "temperature": 1.0,
            "seed": 1,
            "stream": True,
        }
        with requests.post(
            srv.url + "/v1/chat/completions",
            json=body,
            stream=True,
            timeout=60,
            headers={"Authorization": "Bearer k"},
        ) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
            assert metric(srv.url, "llm_running_sequences") == 1
        # closing the response closed the connection: the sequence must leave the batch
        assert wait_until(lambda: metric(srv.url, "llm_running_sequences") == 0, timeout=5)
        produced = metric(srv.url, "llm_output_tokens_total")
        time.sleep(0.5)
        assert metric(srv.url, "llm_output_tokens_total") == produced < 1500


def test_sigterm_finishes_running_streams(smollm2_dir):
    with serve(SERVER, "--model", str(smollm2_dir)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count from one to fifty."}],
            "max_tokens": 60,
            "temperature": 0,
            "stream": True,
        }
        with requests.post(
            srv.url + "/v1/chat/completions", json=body, stream=True, timeout=60
        ) as response:
            lines = response.iter_lines(decode_unicode=True)
            assert next(lines).startswith("data: ")
            srv.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the running stream was finished, not cut
        assert json.loads(rest[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in (
            "stop",
            "length",
        )
        assert srv.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Traceback" not in srv.log()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_model_that_cannot_load_turns_health_503_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a folder that is not a model
    with serve(SERVER, "--model", str(tmp_path), ready_path="/docs") as srv:
        assert wait_until(
            lambda: requests.get(srv.url + "/health").json()["status"] == "failed", timeout=30
        )
        health = requests.get(srv.url + "/health", timeout=10)
        assert health.status_code == 503 and "loading the model failed" in health.json()["reason"]
        refused = requests.post(
            srv.url + "/v1/chat/completions", json={"model": MODEL, "messages": HI}
        )
        assert (
            refused.status_code == 503
            and "loading the model failed" in refused.json()["error"]["message"]
        )
        assert "Traceback" in srv.log()


def test_a_missing_model_path_is_a_one_line_cli_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SNIPPETS / SERVER), "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--model: no such file or folder" in proc.stderr
    assert "Traceback" not in proc.stderr
