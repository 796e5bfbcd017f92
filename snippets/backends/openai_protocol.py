"""Part 1 of llm_server.py, as vLLM splits it: the OpenAI chat API's shapes. The request body,
with the bounds every field must keep, and the two response shapes: the whole completion, and
its stream of server-sent events.

Unknown fields are refused (a misspelt option that silently does nothing is worse than a 400);
fields the OpenAI API has but the server does not implement are accepted by the schema and
refused by name.
"""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from server_kit import ApiError
from structured_output import ResponseFormat  # an optional part: drop with this field
from tool_calling import ToolCall, ToolChoice, Tools, ToolUse, check_tool_fields  # optional too

MODEL_ID = "SmolLM2-135M-Instruct"
MAX_STOP_STRINGS = 4
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


# --8<-- [start:request]
def text_of_parts(content: Any) -> Any:
    """Content in the list form, `[{"type": "text", "text": ...}]`, as benchmark clients such as
    guidellm send it, joined into one string. A text model has no use for other parts."""
    if not isinstance(content, list):
        return content
    if not all(isinstance(p, dict) and p.keys() == {"type", "text"} for p in content) or any(
        p["type"] != "text" or not isinstance(p["text"], str) for p in content
    ):
        raise ValueError('only text parts are accepted: [{"type": "text", "text": "..."}]')
    return "".join(part["text"] for part in content)


def shapes_by_role(schema: dict) -> None:
    """A message's OpenAPI schema, one shape per role as OpenAI documents it (the validation stays
    Message's and check_tool_fields'): client generators and fuzzers then build what is taken."""
    text, calls = {"type": "string"}, schema["properties"]["tool_calls"]["anyOf"][0]

    def shape(roles: list[str], required: list[str], **more) -> dict:
        properties = {"role": {"enum": roles}, "name": text, **more}
        required = ["role", *required]
        return {"properties": properties, "required": required, "additionalProperties": False}

    schema["oneOf"] = [
        shape(["system", "user"], ["content"], content=text),
        shape(["assistant"], ["content"], content=text),
        shape(
            ["assistant"], ["tool_calls"], content={"type": ["string", "null"]}, tool_calls=calls
        ),
        shape(["tool"], ["content", "tool_call_id"], content=text, tool_call_id=text),
    ]
    for key in ("properties", "required", "additionalProperties"):
        del schema[key]


class Message(BaseModel):
    """One turn. Content is required but for an assistant turn that made tool calls; a `tool`
    turn answers one of them by its id (check_tool_fields says so by name)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=shapes_by_role)
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str | None, BeforeValidator(text_of_parts)] = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: the usage so far on every chunk


def stops_as_a_list(value):
    """OpenAI takes one stop string, a list of them, or null."""
    return [value] if isinstance(value, str) else [] if value is None else value


StopStrings = Annotated[
    list[Annotated[str, Field(min_length=1)]],
    Field(max_length=MAX_STOP_STRINGS),
    BeforeValidator(stops_as_a_list),
]
# Fields of the OpenAI API this server does not implement: accepted by the schema, refused by name
# (ignoring one would silently change what the request means).
NOT_IMPLEMENTED = [
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
]


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions. Unknown fields are refused; fields the OpenAI API
    has but this server does not implement are accepted by the schema and refused by name."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"dependentRequired": {"tool_choice": ["tools"]}},
    )
    model: Annotated[str, Field(json_schema_extra={"enum": [MODEL_ID]})]  # another name: 404
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # vLLM's extension: sample among the k most likely
    stop: StopStrings = []
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: Literal[1] = 1
    response_format: ResponseFormat | None = None
    ignore_eos: bool = False  # vLLM's, for benchmarks: run to max_tokens (benchmark_dialect.py)
    min_tokens: int = Field(0, ge=0)  # vLLM's: no end of sequence before this many tokens
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True  # either way, an answer makes at most one call
    functions: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None


def check_model(name: str) -> None:
    if name != MODEL_ID:
        unknown = f"The model '{name}' does not exist; this server has '{MODEL_ID}'."
        raise ApiError(404, unknown, param="model", code="model_not_found")


def check_request(body: ChatRequest) -> None:
    """What the schema cannot say: the model must be this server's, and a field the OpenAI API
    has but this server ignores would silently change the meaning of a request: refuse it by
    name instead."""
    check_model(body.model)
    for name in NOT_IMPLEMENTED:
        if getattr(body, name) not in (None, False, [], {}):
            unsupported = f"Unsupported parameter: '{name}' is not supported by this server."
            raise ApiError(400, unsupported, param=name, code="unsupported_parameter")
    check_tool_fields(body)


# --8<-- [end:request]


# --8<-- [start:reply]
@dataclass
class ChatReply:
    """The OpenAI response shapes for one request: the whole completion, or its SSE stream."""

    id: str
    model: str
    created: int
    generation: Any  # llm_server's Generation: its pieces, finish_reason and usage()
    tools: ToolUse = field(default_factory=ToolUse)  # tool_calling.py: how the text is read

    def completion(self, text: str) -> dict:
        reader = self.tools.reader()
        message = reader.message(text)
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason(reader)}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.generation.usage(),
        }

    def chunk(self, choices: list, **extra) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    async def events(self, options: StreamOptions | None) -> AsyncIterator[str]:
        """Server-sent events. The answer is logged before the finish_reason chunk leaves (the
        openai SDK stops reading there). A failure after the stream has begun is sent as an
        error event, then [DONE] (the status line already said 200): never a silent cut."""
        options, reader = options or StreamOptions(), self.tools.reader()
        try:
            start = {"role": "assistant", "content": None if reader.forced else ""}
            yield self.delta(start, options)
            async with contextlib.aclosing(self.generation.pieces) as pieces:  # a hang-up: its row
                async for piece in pieces:
                    for delta in reader.feed(piece):  # content, or a tool call's parts
                        yield self.delta(delta, options)
            for delta in reader.finish():
                yield self.delta(delta, options)
            end = {"index": 0, "delta": {}, "finish_reason": self.finish_reason(reader)}
            yield self.chunk([end], **self.usage_so_far(options))
            if options.include_usage:
                yield self.chunk([], usage=self.generation.usage())
        except ApiError as error:
            yield error_event(error.status, error.message, error.code)
        yield "data: [DONE]\n\n"

    def delta(self, delta: dict, options: StreamOptions) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        return self.chunk([choice], **self.usage_so_far(options))

    def finish_reason(self, reader) -> str | None:
        return "tool_calls" if reader.called else self.generation.finish_reason

    def usage_so_far(self, options: StreamOptions) -> dict:
        return {"usage": self.generation.usage()} if options.continuous_usage_stats else {}


def error_event(status: int, message: str, code: str | None) -> str:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    error = {"message": message, "type": kind, "param": None, "code": code}
    return f"data: {json.dumps({'error': error})}\n\n"


# --8<-- [end:reply]
