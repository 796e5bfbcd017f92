"""An optional part of llm_server.py: the dialect benchmark clients speak (guidellm, vLLM's own
`vllm bench serve`), so that they measure this server as they measure vLLM.

- `ignore_eos` and `min_tokens` (vLLM's extensions of the OpenAI request): a benchmark fixes each
  answer's length, or the model's end-of-sequence token would make the lengths vary. Both become a
  logits processor that forbids end-of-sequence tokens until the answer is long enough.
- POST /v1/completions, the legacy OpenAI route with one prompt string, as a router the app
  includes. Fields it does not implement (`echo`, `suffix`, `logprobs`, `best_of`, `n` above 1)
  get a 400 naming them.

To drop it: leave out `ignore_eos`, `min_tokens` and `continuous_usage_stats` in
openai_protocol.py, and in llm_server.py the `length_rules` call and the `completions_router`
include.
"""

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai_protocol import (
    MAX_SEED,
    MODEL_ID,
    StopStrings,
    StreamOptions,
    check_model,
    error_event,
)
from pydantic import BaseModel, ConfigDict, Field
from server_kit import AnswerLog, ApiError, unless_disconnected


# --8<-- [start:length]
class NoEndBefore:
    """A logits processor: end-of-sequence tokens are forbidden until `length` tokens exist."""

    def __init__(self, eos_ids: set[int], length: int):
        self.eos_ids, self.length, self.generated = list(eos_ids), length, 0

    def __call__(self, logits: torch.Tensor) -> None:
        if self.generated < self.length:
            logits[self.eos_ids] = float("-inf")

    def accept(self, token_id: int) -> bool:
        self.generated += 1
        return False  # never ends a sequence itself


def length_rules(
    ignore_eos: bool, min_tokens: int, max_tokens: int, eos_ids: set[int]
) -> tuple[NoEndBefore, ...]:
    """The processors for a request's length settings: `ignore_eos` runs to max_tokens exactly,
    `min_tokens` at least that far. `min_tokens` above max_tokens can never be met: 400."""
    if min_tokens > max_tokens:
        message = (
            f"'min_tokens' is {min_tokens}, above the {max_tokens} tokens the answer may have."
        )
        raise ApiError(400, message, param="min_tokens", code="invalid_value")
    length = max_tokens if ignore_eos else min_tokens
    return (NoEndBefore(eos_ids, length),) if length else ()


# --8<-- [end:length]


# --8<-- [start:completions]
class CompletionRequest(BaseModel):
    """The body of the legacy POST /v1/completions: one prompt string, continued as it is."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: Annotated[str, Field(json_schema_extra={"enum": [MODEL_ID]})]  # another name: 404
    prompt: Annotated[str, Field(min_length=1)]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for this route
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: StopStrings = []
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    n: int = 1
    echo: Any = None
    suffix: Any = None
    logprobs: Any = None
    best_of: Any = None


def refuse_unimplemented(body: CompletionRequest) -> None:
    """Ignoring one of these would change what the client gets without telling it."""
    for name in ("echo", "suffix", "logprobs", "best_of"):
        if getattr(body, name) not in (None, False):
            message = f"Unsupported parameter: '{name}' is not supported by this server."
            raise ApiError(400, message, param=name, code="unsupported_parameter")
    if body.n != 1:
        message = f"'n' is {body.n}; this server returns one completion per request."
        raise ApiError(400, message, param="n", code="unsupported_parameter")


router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    arrived, state = time.perf_counter(), request.app.state
    answer_log = AnswerLog(
        request.app, f"cmpl-{uuid.uuid4().hex}", "/v1/completions", body.prompt, body.user
    )
    check_model(body.model)
    refuse_unimplemented(body)
    state.health.require_ready()
    llm = state.llm
    prompt_ids = await llm.encode(lambda tokenizer: tokenizer(body.prompt)["input_ids"])
    if not prompt_ids:  # e.g. only control characters, which the tokenizer drops
        raise ApiError(400, "'prompt' has no tokens once tokenized.", param="prompt")
    params = llm.sampling_params(
        len(prompt_ids),
        body.max_tokens,
        "max_tokens",
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=tuple(body.stop),
    )
    rules = length_rules(body.ignore_eos, body.min_tokens, params.max_tokens, llm.engine.eos_ids)
    generation = llm.generate(prompt_ids, params, answer_log, rules, arrived=arrived)
    reply = CompletionReply(answer_log.request_id, int(time.time()), generation)
    headers = {"X-Request-Id": reply.id}
    if body.stream:
        options = body.stream_options or StreamOptions()
        stream = reply.events(options.include_usage, options.continuous_usage_stats)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    finished, text = await unless_disconnected(request, generation.text())
    if not finished:
        return Response(status_code=499)
    choice = reply.choice(text, generation.finish_reason)
    return JSONResponse(reply.body([choice], usage=generation.usage()), headers=headers)


class CompletionReply:
    """The text_completion shapes: one body, or a stream of them as server-sent events."""

    def __init__(self, reply_id: str, created: int, generation):
        self.id, self.created, self.generation = reply_id, created, generation

    def choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def body(self, choices: list, **extra) -> dict:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": MODEL_ID,
            "choices": choices,
            **extra,
        }

    def event(self, choices: list, **extra) -> str:
        return f"data: {json.dumps(self.body(choices, **extra))}\n\n"

    async def events(self, include_usage: bool, continuous_usage: bool) -> AsyncIterator[str]:
        """Text pieces, then the finish_reason (logged before it leaves), the usage if asked
        for (on every chunk with continuous_usage_stats), [DONE]; a failure is an error event."""
        generation = self.generation
        try:
            async with contextlib.aclosing(generation.pieces) as pieces:  # a hang-up: its row
                async for piece in pieces:
                    extra = {"usage": generation.usage()} if continuous_usage else {}
                    yield self.event([self.choice(piece, None)], **extra)
            extra = {"usage": generation.usage()} if continuous_usage else {}
            yield self.event([self.choice("", generation.finish_reason)], **extra)
            if include_usage:
                yield self.event([], usage=generation.usage())
        except ApiError as error:
            yield error_event(error.status, error.message, error.code)
        yield "data: [DONE]\n\n"


# --8<-- [end:completions]
