"""backends/llm_server.py and its clients, against a real server on a loopback port.

The server runs in float32 here: batched greedy output is then token-for-token the model's own
`generate` output (in bfloat16 a different batch shape can flip a near-tie token).
"""

import asyncio
import json
import signal
import socket
import time

import pytest
import requests
import torch
from openai import AsyncOpenAI, OpenAI
from prometheus_client.parser import text_string_to_metric_families

from helpers import run_snippet, serve

SERVER = "backends/llm_server.py"
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def server(smollm2_dir):
    with serve(SERVER, "--model", str(smollm2_dir), "--dtype", "float32", "--max-running", "16") as handle:
        yield handle


@pytest.fixture(scope="module")
def greedy(smollm2):
    """The reference: transformers' own greedy generate, one prompt at a time."""
    tokenizer, model = smollm2

    def generate(prompt: str, max_tokens: int) -> str:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        return tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return generate


def chat(url: str, prompt: str, **params) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **params}
    response = requests.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def metric(url: str, name: str) -> float:
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


PROMPTS = ["What is the capital of France?", "Write a haiku about servers.", "List three fruits.",
           "Explain batching in one sentence.", "Say hello.", "What is 2+2?"]


def test_concurrent_greedy_answers_equal_generate(server, greedy):
    async def ask_all():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="x") as client:
            return await asyncio.gather(*(
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                               max_tokens=24 + 8 * i, temperature=0)
                for i, p in enumerate(PROMPTS)))

    replies = asyncio.run(ask_all())
    for i, (prompt, reply) in enumerate(zip(PROMPTS, replies)):
        assert reply.choices[0].message.content == greedy(prompt, 24 + 8 * i), prompt


def test_greedy_is_unaffected_by_a_sampled_neighbour(server, greedy):
    async def pair():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="x") as client:
            hot = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell a story."}],
                                                 max_tokens=60, temperature=1.5, top_p=0.9, seed=7)
            cold = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPTS[1]}],
                                                  max_tokens=40, temperature=0)
            return await asyncio.gather(hot, cold)

    sampled, greedy_reply = asyncio.run(pair())
    assert greedy_reply.choices[0].message.content == greedy(PROMPTS[1], 40)
    again = chat(server.url, "Tell a story.", max_tokens=60, temperature=1.5, top_p=0.9, seed=7)
    assert again["choices"][0]["message"]["content"] == sampled.choices[0].message.content  # the seed decides
    other_seed = chat(server.url, "Tell a story.", max_tokens=60, temperature=1.5, top_p=0.9, seed=8)
    assert other_seed["choices"][0]["message"]["content"] != sampled.choices[0].message.content


def test_stream_and_non_stream_agree(server):
    whole = chat(server.url, PROMPTS[2], max_tokens=40, temperature=0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 40,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert [c for c in chunks if c["choices"]][-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_16_concurrent_streams_finish_with_the_right_reason(server):
    async def one(client, i):
        max_tokens = 4 + 6 * i
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Write a long essay about the number {i}."}],
            max_tokens=max_tokens, temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True})
        finish, usage = None, None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            usage = chunk.usage or usage
        return max_tokens, finish, usage

    async def run_all():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="x") as client:
            return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = asyncio.run(run_all())
    assert any(finish == "length" for _, finish, _ in results)  # 4 tokens cannot finish an essay
    for max_tokens, finish, usage in results:
        assert 1 <= usage.completion_tokens <= max_tokens
        if finish == "length":
            assert usage.completion_tokens == max_tokens
        else:  # stopped by the end-of-sequence token, possibly on the very last allowed token
            assert finish == "stop"


def test_stop_strings(server):
    reply = chat(server.url, PROMPTS[0], max_tokens=30, temperature=0, stop=["Paris"])
    assert reply["choices"][0]["message"]["content"] == "The capital of France is "
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_client_snippets(server):
    out = run_snippet("backends/chat_with_openai.py", "--url", server.url)
    assert "answer: The capital of France is Paris." in out
    assert "streamed: The capital of France is Paris." in out and "finish: stop" in out
    out = run_snippet("backends/chat_with_requests_sse.py", "--url", server.url)
    assert "finish_reason=" in out and int(out.split(" events")[0]) > 2
    out = run_snippet("backends/llm_load.py", "--url", server.url, "--requests", "8", "--concurrency", "4")
    assert out.startswith("8 requests in") and "output_tokens_per_s" in out


LONG_PROMPT = "word " * 2100
BAD = [
    ("malformed JSON", b'{"model": ', 400, "not valid JSON"),
    ("non-UTF-8", b'{"model": "\xff"}', 400, "not valid UTF-8"),
    ("missing messages", {"model": MODEL}, 400, "Missing required parameter: 'messages'"),
    ("empty messages", {"model": MODEL, "messages": []}, 400, "non-empty list"),
    ("unknown role", {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "'messages[0].role'"),
    ("non-string content", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400,
     "'messages[0].content' must be a string"),
    ("max_tokens zero", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400,
     "'max_tokens' must be an integer >= 1"),
    ("max_tokens beyond context", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 5000}, 400, "context window is 2048"),
    ("temperature too high", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
     400, "'temperature' must be a number in [0, 2]"),
    ("top_p zero", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400,
     "'top_p' must be a number in (0, 1]"),
    ("prompt too long", {"model": MODEL, "messages": [{"role": "user", "content": LONG_PROMPT}]}, 400,
     "the context window is 2048"),
    ("unsupported parameter", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                               "tools": [{"type": "function"}]}, 400, "'tools' is not supported"),
    ("n above 1", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "'n' must be 1"),
    ("unknown field", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temprature": 1}, 400,
     "Unrecognized request argument supplied: temprature"),
    ("bad stop", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": 5}, 400, "'stop'"),
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
]


@pytest.mark.parametrize("case, body, status, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gets_a_clear_error(server, case, body, status, message):
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    response = requests.post(server.url + "/v1/chat/completions", timeout=30, **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_models_and_metrics(server):
    assert requests.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"] == MODEL
    chat(server.url, "Say hello.", max_tokens=8, temperature=0)
    names = {f.name for f in text_string_to_metric_families(requests.get(server.url + "/metrics").text)}
    assert {"llm_requests", "llm_prompt_tokens", "llm_output_tokens", "llm_time_to_first_token_seconds",
            "llm_time_per_output_token_seconds", "llm_running_sequences", "llm_waiting_sequences"} <= names
    assert metric(server.url, "llm_output_tokens_total") >= 8
    assert metric(server.url, "llm_time_to_first_token_seconds_count") >= 1


def test_queue_full_gets_503(smollm2_dir):
    with serve(SERVER, "--model", str(smollm2_dir), "--max-running", "1", "--max-waiting", "1") as small:
        async def hammer():
            async def one(i):
                async with AsyncOpenAI(base_url=small.url + "/v1", api_key="x", max_retries=0) as client:
                    try:
                        await client.chat.completions.create(
                            model=MODEL, messages=[{"role": "user", "content": f"Story {i}"}], max_tokens=40)
                        return 200, None
                    except Exception as error:
                        return error.status_code, error.response.headers.get("retry-after")
            return await asyncio.gather(*(one(i) for i in range(8)))

        results = asyncio.run(hammer())
        assert {status for status, _ in results} == {200, 503}
        assert all(retry == "1" for status, retry in results if status == 503)


def test_disconnected_stream_stops_consuming_compute(smollm2_dir):
    with serve(SERVER, "--model", str(smollm2_dir)) as srv:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay."}],
                "max_tokens": 1500, "temperature": 1.0, "seed": 1, "stream": True}
        with requests.post(srv.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
            assert metric(srv.url, "llm_running_sequences") == 1
        # closing the response closed the connection: the sequence must leave the batch
        deadline = time.monotonic() + 5
        while metric(srv.url, "llm_running_sequences") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(srv.url, "llm_running_sequences") == 0
        produced = metric(srv.url, "llm_output_tokens_total")
        time.sleep(0.5)
        assert metric(srv.url, "llm_output_tokens_total") == produced < 1500


def test_sigterm_finishes_running_streams(smollm2_dir):
    with serve(SERVER, "--model", str(smollm2_dir)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Count from one to fifty."}],
                "max_tokens": 60, "temperature": 0, "stream": True}
        with requests.post(srv.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as response:
            lines = response.iter_lines(decode_unicode=True)
            assert next(lines).startswith("data: ")
            srv.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the running stream was finished, not cut
        assert json.loads(rest[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in ("stop", "length")
        assert srv.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Traceback" not in srv.log()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)


def test_api_key(smollm2_dir):
    with serve(SERVER, "--model", str(smollm2_dir), "--api-key", "k") as srv:
        denied = requests.post(srv.url + "/v1/chat/completions", json={"model": MODEL}, timeout=10)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        reply = OpenAI(base_url=srv.url + "/v1", api_key="k").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert reply.usage.completion_tokens >= 1


def test_tgi_generate_route(server, smollm2):
    tokenizer, model = smollm2
    out = run_snippet("backends/generate_with_tgi_api.py", "--url", server.url)
    prompt = "The three primary colours are"
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        expected = model.generate(**ids, max_new_tokens=20, do_sample=False)
    assert out.strip() == "generated: " + tokenizer.decode(expected[0][ids["input_ids"].shape[1]:],
                                                           skip_special_tokens=True).strip()
    bad = requests.post(server.url + "/generate", json={"inputs": "", "parameters": {}}, timeout=10)
    assert bad.status_code == 400 and "'inputs'" in bad.json()["error"]["message"]
    bad = requests.post(server.url + "/generate", json={"inputs": "x", "parameters": {"best_of": 2}}, timeout=10)
    assert bad.status_code == 400 and "best_of" in bad.json()["error"]["message"]
