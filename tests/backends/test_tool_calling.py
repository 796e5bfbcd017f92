"""backends/tool_calling.py, the LLM server's optional tool-calling part, and its client snippet,
against the suite's server on loopback with the real `openai` client.

What the page claims: with a named function or "required" the answer is a call (finish_reason
"tool_calls", content null, arguments valid against the tool's schema, `$ref`s included);
streamed tool_calls deltas assemble into the arguments of the whole answer; "auto" returns a call
only when the whole answer is one; "none" leaves the tools out of the prompt; a bad parameter
schema, a tool_choice naming no tool or given without tools, and a tool message without the id
of an earlier call get a 400 naming the field; the client snippet's round trip completes.
"""

import asyncio
import importlib
import json
from pathlib import Path

import jsonschema
import pytest
import requests
from helpers import load_snippet, run_snippet
from openai import AsyncOpenAI, OpenAI

PART = "backends/tool_calling.py"
PROTOCOL = "backends/openai_protocol.py"
CLIENT = "backends/tools_with_openai.py"
MODEL = "SmolLM2-135M-Instruct"


def function_tool(name: str, description: str, parameters: dict) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


WEATHER = function_tool(
    "get_weather",
    "The current weather in a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
CONVERT = function_tool(  # its units through $ref: each tool's schema is its own document
    "convert_length",
    "Convert a length between kilometres and miles",
    {
        "type": "object",
        "$defs": {"unit": {"enum": ["km", "mi"]}},
        "properties": {
            "value": {"type": "number", "minimum": 0, "maximum": 100000},
            "from_unit": {"$ref": "#/$defs/unit"},
            "to_unit": {"$ref": "#/$defs/unit"},
        },
        "required": ["value", "from_unit", "to_unit"],
        "additionalProperties": False,
    },
)
TOOLS = [WEATHER, CONVERT]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
A_CALL = {
    "role": "assistant",
    "tool_calls": [
        {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    ],
}
QUESTIONS = [
    "What is the weather in Paris?",
    "How many miles is 10 km?",
    "Is it cold in Oslo today?",
    "Convert 3 miles to kilometres.",
]


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def test_a_forced_call_is_a_call_whose_arguments_fit_the_schema(llm_server):
    """Sampled hot, named and "required" answers: every one a single call, content null."""

    async def ask_all():
        async with AsyncOpenAI(base_url=llm_server.url + "/v1", api_key="x") as client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=MODEL,
                        messages=ask(question),
                        tools=TOOLS,
                        tool_choice=choice,
                        max_tokens=60,
                        temperature=1.0,
                        seed=seed,
                    )
                    for seed, question in enumerate(QUESTIONS)
                    for choice in (NAMED, "required")
                )
            )

    replies = asyncio.run(ask_all())
    for i, reply in enumerate(replies):
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        if i % 2 == 0:  # named
            assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("choice", [NAMED, "required"], ids=["named", "required"])
def test_streamed_deltas_assemble_into_the_whole_answers_arguments(llm_server, choice):
    client = OpenAI(base_url=llm_server.url + "/v1", api_key="x")
    request = {
        "model": MODEL,
        "messages": ask(QUESTIONS[1]),
        "tools": TOOLS,
        "tool_choice": choice,
        "max_tokens": 60,
        "temperature": 0,
    }
    [whole] = client.chat.completions.create(**request).choices[0].message.tool_calls
    deltas, finish = [], None
    for chunk in client.chat.completions.create(**request, stream=True):
        deltas += chunk.choices[0].delta.tool_calls or []
        assert chunk.choices[0].delta.content is None
        finish = chunk.choices[0].finish_reason or finish
    first, *rest = deltas
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == whole.function.name
    assert len(rest) > 1 and all(d.index == 0 and d.id is None for d in rest)  # in pieces
    streamed = first.function.arguments + "".join(d.function.arguments for d in rest)
    assert streamed == whole.function.arguments and finish == "tool_calls"


@pytest.fixture(scope="module")
def part():
    """The tool-calling part as the protocol imports it (one copy of its classes)."""
    load_snippet(PROTOCOL)
    return importlib.import_module(Path(PART).stem)


def read(reader, text: str, size: int = 5) -> list[dict]:
    deltas = []
    for start in range(0, len(text), size):
        deltas += reader.feed(text[start : start + size])
    return deltas + reader.finish()


def test_auto_returns_a_call_only_when_the_whole_answer_is_one(part):
    auto = part.ToolUse(names=("get_weather",))
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    reader = auto.reader()
    assert reader.feed(call[:10]) == []  # it may be a call: held to the end
    *_, last = read(reader, call[10:])
    assert reader.called and last["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    message = auto.reader().message(" " + call + "\n")
    assert (
        message["content"] is None and message["tool_calls"][0]["function"]["name"] == "get_weather"
    )
    for text in ("It is sunny.", '{"name": "get_time", "arguments": {}}', '{"city": "Oslo"}', "{"):
        reader = auto.reader()
        assert "".join(d["content"] for d in read(reader, text)) == text and not reader.called
    reader = auto.reader()
    assert reader.feed("Sure") == [{"content": "Sure"}]  # plain text streams at once
    assert reader.feed(' {"name"') == [{"content": ' {"name"'}]


def test_a_forced_call_streams_its_arguments_and_a_cut_one_is_not_called(part):
    forced = part.ToolUse(names=("get_weather", "convert_length"), forced=True)
    whole = '{"name":"convert_length","arguments":{"value":10,"from_unit":"km","to_unit":"mi"}}'
    reader = forced.reader()
    deltas = read(reader, whole, size=3)
    assert deltas[0]["tool_calls"][0]["function"] == {"name": "convert_length", "arguments": ""}
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:]]
    assert "".join(pieces) == '{"value":10,"from_unit":"km","to_unit":"mi"}' and reader.called
    cut = forced.reader()
    message = cut.message(whole[:50])  # max_tokens ran out inside the arguments
    head = len(part.call_head("convert_length"))
    assert not cut.called and message["tool_calls"][0]["function"]["arguments"] == whole[head:50]


def test_the_tools_go_into_the_system_block_and_calls_back_as_json(part):
    protocol = load_snippet(PROTOCOL)
    body = protocol.ChatRequest.model_validate(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                *ask("Weather?"),
                A_CALL,
                {"role": "tool", "tool_call_id": "call_7", "content": "sunny"},
            ],
            "tools": TOOLS,
            "tool_choice": NAMED,
        }
    )
    system, _, assistant, tool = part.chat_messages(body)
    assert system["content"].startswith("Be brief.\n\n") and '"get_weather"' in system["content"]
    assert '"convert_length"' not in system["content"]  # a named call shows only its tool
    assert assistant == {"role": "assistant", "content": '{"name":"get_weather","arguments":{}}'}
    assert tool == {"role": "tool", "content": "sunny"}


def test_none_leaves_the_tools_out_of_the_prompt(llm_server):
    def prompt_tokens(**fields) -> int:
        body = {"model": MODEL, "messages": ask(QUESTIONS[0]), "max_tokens": 1, **fields}
        response = requests.post(llm_server.url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["usage"]["prompt_tokens"]

    bare = prompt_tokens()
    assert prompt_tokens(tools=TOOLS, tool_choice="none") == bare < prompt_tokens(tools=TOOLS)


BAD_SCHEMA = function_tool("broken", "", {"type": "objekt"})
BAD_PATTERN = function_tool(
    "broken", "", {"type": "object", "properties": {"code": {"type": "string", "pattern": "("}}}
)
NOT_AN_OBJECT = function_tool("broken", "", {"type": "string"})
BAD = [
    ("invalid schema", {"tools": [BAD_SCHEMA]}, "tools[0].function.parameters"),
    (
        "schema llguidance refuses",
        {"tools": [WEATHER, BAD_PATTERN]},
        "tools[1].function.parameters",
    ),
    ("parameters not an object", {"tools": [NOT_AN_OBJECT]}, "tools[0].function.parameters"),
    ("bad tool name", {"tools": [function_tool("get weather", "", {})]}, "tools[0].function.name"),
    ("two tools, one name", {"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ("tool_choice without tools", {"tool_choice": "required"}, "tool_choice"),
    (
        "tool_choice naming no tool",
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
        "tool_choice.function.name",
    ),
    (
        "forced call with a response_format",
        {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
        "response_format",
    ),
    (
        "tool message without tool_call_id",
        {"messages": [*ask("Weather?"), A_CALL, {"role": "tool", "content": "sunny"}]},
        "messages[2].tool_call_id",
    ),
    (
        "tool message answering no call",
        {"messages": [*ask("Weather?"), {"role": "tool", "tool_call_id": "x", "content": "1"}]},
        "messages[1].tool_call_id",
    ),
    (
        "tool_calls on a user message",
        {"messages": [{**ask("Weather?")[0], **{k: v for k, v in A_CALL.items() if k != "role"}}]},
        "messages[0].tool_calls",
    ),
    ("user message without content", {"messages": [{"role": "user"}]}, "messages[0].content"),
]


@pytest.mark.parametrize("case, fields, param", BAD, ids=[c[0] for c in BAD])
def test_bad_tool_fields_get_a_400_naming_the_field(llm_server, case, fields, param):
    body = {"model": MODEL, "messages": ask("Weather?"), "max_tokens": 5, **fields}
    response = requests.post(llm_server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and f"'{param}'" in error["message"]


def test_the_client_snippets_round_trip(llm_server):
    out = run_snippet(CLIENT, "--url", llm_server.url)
    lines = {}  # each label's first line
    for line in out.splitlines():
        label, _, rest = line.partition(": ")
        lines.setdefault(label, rest)
    assert lines["named"].startswith("tool_calls None get_weather {")
    assert lines["ran"].startswith("get_weather -> {") and '"sky": "sunny"' in lines["ran"]
    finish, answer = lines["final"].split(" ", 1)
    assert finish in ("stop", "length") and answer.strip() and answer != "None"
    assert lines["streamed"] == "tool_calls True"
    assert lines["required"].startswith("tool_calls ") and " -> {" in lines["required"]
    assert lines["auto"].endswith("answered in text") or " called [" in lines["auto"]
