"""backends/benchmark_dialect.py in the LLM server: the requests benchmark clients send.

The request shapes are guidellm's (0.8, `backends/openai/request_handlers.py`): a fixed output
length through `ignore_eos` with `stop: null`, `max_completion_tokens` on chat and `max_tokens` on
the legacy completions route, `stream_options` with vLLM's `continuous_usage_stats`, and chat
content as a list of text parts (a request captured from guidellm 0.8.1 itself). The
server must answer them as vLLM does: exactly the asked number of tokens, usage on every chunk.
"""

import json

import pytest
import requests
from helpers import load_snippet
from openai import OpenAI

MODEL = "SmolLM2-135M-Instruct"
DIALECT = "backends/benchmark_dialect.py"
STREAM = {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


def events(url: str, path: str, body: dict) -> list[dict]:
    with requests.post(url + path, json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_guidellms_fixed_length_requests_get_exactly_that_many_tokens(llm_server, path):
    if path == "/v1/chat/completions":
        hi = [{"type": "text", "text": "Say hi."}]  # guidellm sends content as a list of parts
        body = {"messages": [{"role": "user", "content": hi}], "max_completion_tokens": 40}
    else:
        body = {"prompt": "Hello", "max_tokens": 40}
    body = {"model": MODEL, "stop": None, "ignore_eos": True, "temperature": 0, **STREAM, **body}
    chunks = events(llm_server.url, path, body)
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 40  # "Say hi." alone ends after a few tokens
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    with_choices = [chunk for chunk in chunks if chunk["choices"]]
    assert all("usage" in chunk for chunk in with_choices)  # continuous usage stats
    counts = [chunk["usage"]["completion_tokens"] for chunk in with_choices]
    assert counts == sorted(counts) and counts[-1] == 40


def test_min_tokens_holds_off_the_end_and_is_checked_against_max_tokens(llm_server):
    url = llm_server.url + "/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0}
    natural = requests.post(url, json={**body, "max_tokens": 80}, timeout=60).json()
    ended_at = natural["usage"]["completion_tokens"]
    assert natural["choices"][0]["finish_reason"] == "stop" and ended_at < 60  # the model's end
    held = requests.post(url, json={**body, "max_tokens": 80, "min_tokens": ended_at + 10})
    assert held.json()["usage"]["completion_tokens"] >= ended_at + 10
    impossible = requests.post(url, json={**body, "max_tokens": 10, "min_tokens": 11}, timeout=60)
    assert impossible.status_code == 400 and impossible.json()["error"]["param"] == "min_tokens"


def test_the_legacy_completions_route_through_the_openai_client(llm_server, smollm2):
    tokenizer, model = smollm2
    client = OpenAI(base_url=llm_server.url + "/v1", api_key="x")
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    ids = tokenizer("The capital of France is", return_tensors="pt")
    expected = model.generate(**ids, max_new_tokens=8, do_sample=False)[0][ids.input_ids.shape[1] :]
    assert reply.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert reply.object == "text_completion" and reply.usage.completion_tokens <= 8


@pytest.mark.parametrize(
    "field, value", [("echo", True), ("suffix", "!"), ("logprobs", 2), ("best_of", 2), ("n", 2)]
)
def test_completion_fields_it_does_not_implement_get_a_400_naming_them(llm_server, field, value):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, field: value}
    response = requests.post(llm_server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == field


def test_the_length_rule_forbids_only_end_of_sequence_tokens_and_only_until_the_length():
    import torch

    dialect = load_snippet(DIALECT)
    [rule] = dialect.length_rules(False, 2, max_tokens=10, eos_ids={3})
    for step in range(3):
        logits = torch.zeros(6)
        rule(logits)
        assert (
            torch.isinf(logits[3]) == (step < 2) and torch.isfinite(logits[[0, 1, 2, 4, 5]]).all()
        )
        assert rule.accept(0) is False
    assert dialect.length_rules(False, 0, max_tokens=10, eos_ids={3}) == ()


def test_content_as_text_parts_is_joined_and_any_other_part_is_a_400(llm_server):
    def ask(content):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
        }
        return requests.post(llm_server.url + "/v1/chat/completions", json=body, timeout=60)

    parts = [
        {"type": "text", "text": "What is the capital "},
        {"type": "text", "text": "of France?"},
    ]
    as_parts, as_text = ask(parts).json(), ask("What is the capital of France?").json()
    assert as_parts["choices"][0]["message"] == as_text["choices"][0]["message"]
    image = ask([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    assert image.status_code == 400
    assert image.json()["error"]["param"] == "messages[0].content"
    assert "only text parts" in image.json()["error"]["message"]
