"""The LLM server's parts, each on its own: its OpenAI protocol and its metrics, and the optional
prefix cache (an admission hook), structured-output mask (a logits processor) and TGI's route (a
router the server includes)."""

import pytest
import requests
import torch
from helpers import load_snippet
from prometheus_client.parser import text_string_to_metric_families

PROTOCOL = "backends/openai_protocol.py"
METRICS = "backends/llm_metrics.py"
PREFIX_PART = "backends/prefix_cache.py"
STRUCTURED_PART = "backends/structured_output.py"
TGI_PART = "backends/tgi_route.py"


class Tally:
    """Stands in for a Prometheus counter."""

    def __init__(self):
        self.value = 0

    def inc(self, amount: int = 1):
        self.value += amount


class Request:
    def __init__(self, prompt_ids, shared_prefix):
        self.prompt_ids, self.shared_prefix = prompt_ids, shared_prefix


def test_a_cached_prefix_gives_the_logits_of_a_whole_prefill(smollm2):
    tokenizer, model = smollm2
    part = load_snippet(PREFIX_PART)
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is a KV cache?"},
    ]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    shared = part.system_prompt_length(tokenizer, messages, ids)
    assert 0 < shared < len(ids)
    hits, saved = Tally(), Tally()
    cache = part.PrefixCache(4, hits, saved)
    with torch.inference_mode():
        _, first = cache.prefill(model, Request(ids, shared))  # computes and stores the prefix
        _, second = cache.prefill(model, Request(ids, shared))  # starts from the stored copy
        whole = model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert (hits.value, saved.value) == (1, shared)
    assert torch.allclose(second, whole, atol=1e-4) and torch.allclose(first, whole, atol=1e-4)
    off = part.PrefixCache(0, Tally(), Tally())
    with torch.inference_mode():
        off.prefill(model, Request(ids, shared))
    assert off.entries == {}  # size 0: nothing is kept


def test_the_grammar_mask_allows_only_what_can_continue_the_json(smollm2):
    tokenizer, model = smollm2
    part = load_snippet(STRUCTURED_PART)
    grammar_tokenizer = part.grammar_tokenizer(tokenizer, model.config.vocab_size)
    response_format = part.ResponseFormat.model_validate(
        {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object", "required": ["n"]}},
        }
    )
    grammar = part.grammar_for(response_format)
    mask = part.GrammarMask(part.llguidance.LLMatcher(grammar_tokenizer, grammar))

    def allowed() -> set[int]:
        logits = torch.zeros(model.config.vocab_size)
        mask(logits)
        return set(torch.isfinite(logits).nonzero().flatten().tolist())

    assert tokenizer.encode("Hello")[0] not in allowed()  # prose cannot start the answer
    valid = tokenizer.encode('{"n":1}')
    for i, token in enumerate(valid):
        assert token in allowed(), tokenizer.decode(valid[: i + 1])
        mask.accept(token)
    assert tokenizer.eos_token_id in allowed()  # complete: the answer may end here
    assert part.grammar_for(None) is None


def test_the_tgi_route_is_a_router_the_server_includes(smollm2_dir):
    part = load_snippet(TGI_PART)
    server = load_snippet("backends/llm_server.py")
    assert [route.path for route in part.router.routes] == ["/generate"]
    app = server.create_app(server.Settings(model=smollm2_dir))
    assert "/generate" in app.openapi()["paths"]
    assert part.GenerateRequest.model_validate({"inputs": "Hi"}).parameters.max_new_tokens == 20


def test_the_protocol_bounds_what_the_sampler_cannot_honour():
    protocol = load_snippet(PROTOCOL)
    body = {"model": protocol.MODEL_ID, "messages": [{"role": "user", "content": "Hi"}]}
    for field, value in (("seed", 2**63), ("seed", -1), ("top_k", 0), ("top_p", 0)):
        with pytest.raises(ValueError, match=field):
            protocol.ChatRequest.model_validate({**body, field: value})
    assert protocol.ChatRequest.model_validate({**body, "seed": 2**63 - 1}).seed == 2**63 - 1
    with pytest.raises(protocol.ApiError, match="'functions' is not supported"):
        protocol.check_request(
            protocol.ChatRequest.model_validate({**body, "functions": [{"name": "f"}]})
        )


def test_every_metric_the_part_declares_is_served(llm_server):
    declared = {family.name for family in load_snippet(METRICS).registry.collect()}
    page = requests.get(llm_server.url + "/metrics", timeout=10).text
    served = {family.name for family in text_string_to_metric_families(page)}
    assert declared and declared <= served
