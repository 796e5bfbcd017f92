"""An optional part of llm_server.py: tool calling (OpenAI's `tools` and `tool_choice`).

SmolLM2's chat template has no place for tools, so the tools go into a system block, and a call
is written as one JSON object, `{"name":"...","arguments":{...}}`. With `tool_choice` "required"
or a named function the answer must be a call: an llguidance grammar built from the tool schemas
(a logits processor) allows nothing else, and its arguments fit the tool's parameter schema.
With "auto" the model writes freely, and an answer that is such an object naming a known tool
is returned as a call. "none" leaves the tools out of the prompt.

To drop it: in openai_protocol.py leave out the `tools`, `tool_choice` and `parallel_tool_calls`
fields, the `tool` role, the messages' `tool_calls` and `tool_call_id`, `check_tool_fields` and
ChatReply's `tools`; in llm_server.py the `chat_messages` and `tool_use` lines of the chat route.
"""

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Literal

import jsonschema
import llguidance
from pydantic import BaseModel, ConfigDict, Field
from server_kit import ApiError
from structured_output import GrammarMask

MAX_TOOLS = 128  # as OpenAI's API
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}
COMPACT = {"x-guidance": {"whitespace_flexible": False}}  # no padding between JSON tokens


# --8<-- [start:shapes]
class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict = Field(  # a JSON Schema of an object
        default_factory=lambda: dict(NO_PARAMETERS),
        json_schema_extra={"properties": {"type": {"const": "object"}}, "required": ["type"]},
    )
    strict: bool | None = None  # the arguments always fit the schema when a call is forced


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
Tools = Annotated[list[Tool], Field(max_length=MAX_TOOLS)]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(BaseModel):
    """A call in an assistant message the client sends back (the answer's own shape)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: str
    type: Literal["function"]
    function: FunctionCall


# --8<-- [end:shapes]


# --8<-- [start:prompt]
def call_head(name: str) -> str:
    """How a call to `name` starts: what the model writes and what the grammar forces."""
    return f'{{"name":"{name}","arguments":'


def choice_of(body) -> str | NamedToolChoice:
    """The request's tool_choice, with OpenAI's default: "auto" when there are tools."""
    return body.tool_choice or ("auto" if body.tools else "none")


def forces_a_call(choice) -> bool:
    """True for "required" and for a named function: the answer must be a call."""
    return choice == "required" or isinstance(choice, NamedToolChoice)


def callable_tools(body) -> list[FunctionDefinition]:
    """The functions the answer may call: none, the named one, or all of them."""
    choice = choice_of(body)
    if choice == "none":
        return []
    named = isinstance(choice, NamedToolChoice)
    tools = body.tools or []
    return [t.function for t in tools if not named or t.function.name == choice.function.name]


def tools_block(functions: list[FunctionDefinition], choice) -> str:
    """The system block that presents the tools (SmolLM2's template has no section for them)."""
    lines = ["You can call these tools (one JSON object each: name, description, parameters):"]
    lines += [json.dumps(f.model_dump(exclude_none=True, exclude={"strict"})) for f in functions]
    lines.append(
        "To call a tool, answer with one JSON object and nothing else: "
        '{"name":"<tool name>","arguments":{<its parameters>}}.'
    )
    if choice == "auto":
        lines.append("If no tool helps, answer in plain text instead.")
    else:
        lines.append("Answer now with a call.")
    return "\n".join(lines)


def chat_messages(body) -> list[dict]:
    """The messages as SmolLM2's template takes them: the tools in the system block, earlier calls
    as the JSON the model writes, tool results as `tool` turns."""
    messages = []
    for message in body.messages:
        if message.tool_calls:
            calls = [
                call_head(c.function.name) + c.function.arguments + "}" for c in message.tool_calls
            ]
            text = "\n".join(([message.content] if message.content else []) + calls)
            messages.append({"role": "assistant", "content": text})
        else:
            messages.append(message.model_dump(exclude_none=True, exclude={"tool_call_id"}))
    if functions := callable_tools(body):
        block = tools_block(functions, choice_of(body))
        if messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0].get('content', '')}\n\n{block}"}
        else:
            messages.insert(0, {"role": "system", "content": block})
    return messages


# --8<-- [end:prompt]


# --8<-- [start:check]
def check_tool_fields(body) -> None:
    """What the schema cannot say about tools (each a 400 naming the field): tool_choice needs
    tools and must name one of them, a forced call leaves no room for a response_format, and a
    conversation's tool messages answer calls made earlier in it."""
    names = [tool.function.name for tool in body.tools or []]
    for i, name in enumerate(names):
        if name in names[:i]:
            invalid(f"tools[{i}].function.name", f"a second tool is named '{name}'")
    choice = body.tool_choice
    if choice is not None and not names:
        invalid("tool_choice", "there are no 'tools' to choose from")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        invalid("tool_choice.function.name", f"no tool is named '{choice.function.name}'")
    if (
        forces_a_call(choice)
        and body.response_format is not None
        and body.response_format.type != "text"
    ):
        invalid("response_format", "a tool_choice that forces a call decides the format")
    check_messages(body.messages)


def check_messages(messages) -> None:
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.tool_calls and message.role != "assistant":
            invalid(f"{where}.tool_calls", "only an assistant message carries tool calls")
        if message.content is None and not message.tool_calls:
            raise ApiError(
                400, f"Missing required parameter: '{where}.content'.", f"{where}.content"
            )
        if message.role == "tool" and message.tool_call_id is None:
            missing = f"Missing required parameter: '{where}.tool_call_id'."
            raise ApiError(400, missing, param=f"{where}.tool_call_id")
        if message.role == "tool" and message.tool_call_id not in call_ids:
            unknown = f"no earlier assistant message has a call with id '{message.tool_call_id}'"
            invalid(f"{where}.tool_call_id", unknown)
        if message.role != "tool" and message.tool_call_id is not None:
            invalid(f"{where}.tool_call_id", "only a 'tool' message answers a call")
        call_ids.update(call.id for call in message.tool_calls or [])


def invalid(param: str, why: str):
    raise ApiError(400, f"Invalid '{param}': {why}.", param=param, code="invalid_value")


# --8<-- [end:check]


# --8<-- [start:grammar]
def check_parameters(index: int, schema: dict, tokenizer: llguidance.LLTokenizer) -> None:
    """A tool's parameters must be an object schema that JSON Schema's meta-schema and llguidance
    both accept; else a 400 naming `tools[i].function.parameters`."""
    param = f"tools[{index}].function.parameters"
    try:
        jsonschema.Draft202012Validator.check_schema(schema)  # what OpenAI's API takes
        error = llguidance.LLMatcher.validate_grammar(
            llguidance.LLMatcher.grammar_from_json_schema(schema), tokenizer
        )
    except jsonschema.SchemaError as bad:
        error = bad.message
    except RecursionError:
        error = "nested too deeply"
    if not error and schema.get("type") != "object":
        error = 'the parameters of a function are an object: give it "type": "object"'
    if error:
        raise ApiError(400, f"Invalid '{param}': {error}", param=param, code="invalid_schema")


def call_grammar(functions: list[FunctionDefinition]) -> str:
    """A Lark grammar (llguidance's dialect) whose only sentences are calls to these functions.
    Each function's schema stays a document of its own, so its `$ref`s resolve as written."""
    rules = ["start: " + " | ".join(f"call_{i}" for i in range(len(functions)))]
    for i, function in enumerate(functions):
        rules.append(f'call_{i}: {json.dumps(call_head(function.name))} args_{i} "}}"')
        rules.append(f"args_{i}: %json {json.dumps({**function.parameters, **COMPACT})}")
    return "\n".join(rules)


@dataclass(frozen=True)
class ToolUse:
    """What a request's tools mean for its answer: the functions it may call, and whether the
    grammar (`mask`, a logits processor) makes the answer a call."""

    names: tuple[str, ...] = ()
    forced: bool = False
    mask: tuple[GrammarMask, ...] = ()

    def reader(self) -> "CallReader":
        return CallReader(self.names, self.forced)


async def tool_use(thread: ThreadPoolExecutor, tokenizer: llguidance.LLTokenizer, body) -> ToolUse:
    """Check every tool's schema and, for "required" or a named tool, compile the grammar of a
    call, in `thread` (a large schema takes milliseconds)."""
    if not body.tools:
        return ToolUse()
    functions, forced = callable_tools(body), forces_a_call(body.tool_choice)

    def prepare() -> tuple[GrammarMask, ...]:
        for i, tool in enumerate(body.tools):
            check_parameters(i, tool.function.parameters, tokenizer)
        if not forced:
            return ()
        grammar = llguidance.LLMatcher.grammar_from_lark(call_grammar(functions))
        if error := llguidance.LLMatcher.validate_grammar(grammar, tokenizer):
            raise ApiError(400, f"Invalid 'tools': {error}", param="tools", code="invalid_schema")
        return (GrammarMask(llguidance.LLMatcher(tokenizer, grammar)),)

    mask = await asyncio.get_running_loop().run_in_executor(thread, prepare)
    return ToolUse(tuple(f.name for f in functions), forced, mask)


# --8<-- [end:grammar]


# --8<-- [start:reader]
@dataclass
class CallReader:
    """Reads an answer, piece by piece, into the deltas of OpenAI's reply: content, or a tool
    call (its id and name once the call's head is read, then its arguments as they come). The
    whole answer goes through the same reader, so streamed and whole replies agree.

    A forced answer is a call from its first character; its arguments are sent as written, all
    but the last character, which may be the call's closing brace. Under "auto" an answer that
    starts with "{" may be a call: it is held to the end, then read as JSON."""

    names: tuple[str, ...]
    forced: bool
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    name: str | None = None  # set once the call's head is read
    arguments: str = ""  # sent so far
    content: str = ""  # sent so far
    held: str = ""  # read, not sent yet
    called: bool = False  # a whole call was read: finish_reason "tool_calls"

    def feed(self, piece: str) -> list[dict]:
        self.held += piece
        if self.forced:
            return self.read_forced()
        if self.names and not self.content and self.held.lstrip()[:1] in ("", "{"):  # a call?
            return []
        return self.send_content()

    def finish(self) -> list[dict]:
        """The deltas the end of the answer releases."""
        if self.forced and self.name is not None:
            if self.held == "}":
                self.called, self.held = True, ""
                return []
            return self.send_arguments(self.held)  # cut short (max_tokens): the part written
        if not self.forced and (call := read_call(self.held, self.names)):
            self.called, self.held = True, ""
            return [self.header(call[0]), *self.send_arguments(call[1])]
        return self.send_content()

    def message(self, text: str) -> dict:
        """The whole answer as one assistant message."""
        self.feed(text)
        self.finish()
        if self.name is None:
            return {"role": "assistant", "content": self.content}
        call = {"name": self.name, "arguments": self.arguments}
        tool_call = {"id": self.id, "type": "function", "function": call}
        return {"role": "assistant", "content": self.content or None, "tool_calls": [tool_call]}

    def read_forced(self) -> list[dict]:
        deltas = []
        if self.name is None:
            name = next((n for n in self.names if self.held.startswith(call_head(n))), None)
            if name is None:
                return []
            self.held = self.held[len(call_head(name)) :]
            deltas.append(self.header(name))
        if len(self.held) > 1:
            deltas += self.send_arguments(self.held[:-1])
            self.held = self.held[-1]
        return deltas

    def header(self, name: str) -> dict:
        self.name = name
        call = {"index": 0, "id": self.id, "type": "function"}
        return {"tool_calls": [{**call, "function": {"name": name, "arguments": ""}}]}

    def send_arguments(self, text: str) -> list[dict]:
        self.arguments += text
        return [{"tool_calls": [{"index": 0, "function": {"arguments": text}}]}] if text else []

    def send_content(self) -> list[dict]:
        text, self.held = self.held, ""
        self.content += text
        return [{"content": text}] if text else []


def read_call(text: str, names: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, arguments as JSON text) when the whole text is one call to a known tool."""
    try:
        call = json.loads(text)
    except ValueError:
        return None
    if not (
        isinstance(call, dict)
        and call.keys() == {"name", "arguments"}
        and call["name"] in names
        and isinstance(call["arguments"], dict)
    ):
        return None
    return call["name"], json.dumps(call["arguments"], ensure_ascii=False)


# --8<-- [end:reader]
