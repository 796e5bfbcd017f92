"""How often a tool call comes back as a call: a named function and "required" (constrained by the
server), "auto" (the model decides), and, for contrast, the same model asked in plain words for
the arguments as JSON (no constraint at all).

Each mode sends the same requests: questions cycling over two tools, sampled at temperature 1.0
with a seed per request, a fixed max_tokens. An answer counts as a call when its finish_reason is
"tool_calls", its content null, and its arguments parse and fit the tool's parameter schema; for
the unconstrained contrast, when its text parses and fits. A request the server refuses counts
as no call, and the first refusal of each mode is recorded. The run also sends a tool whose
parameter schema is invalid and records what the server answers.

    python benchmarks/tool_calls.py                 # starts this guide's server (bfloat16)
    python benchmarks/tool_calls.py --vllm          # starts vLLM with the page's tool flags
    python benchmarks/tool_calls.py --url http://127.0.0.1:8001 --engine vLLM --model NAME
    python benchmarks/tool_calls.py --quick         # 5 requests per mode, to check the script

Results go to results/tool_calls.json and .md, one entry per engine: a run replaces its own
engine's entry and keeps the others' (each with the commit and date it was measured on).
"""

import argparse
import asyncio
import collections
import json
import sys
from pathlib import Path

import jsonschema
import requests
import workloads
from harness import REPO, Server, free_port, machine
from llm_server import MODEL_DIR
from openai import APIStatusError, AsyncOpenAI
from provenance import provenance
from publish import publish
from vllm_cpu import TOOL_FLAGS, vllm_command

SERVER = REPO / "snippets" / "backends" / "llm_server.py"
OURS = "this guide's server"
VLLM = "vLLM (vllm-cpu 0.32, eager)"
MAX_TOKENS = 128  # room for a call with long values; the finish reasons show any cut short
CONCURRENCY = 4
UNITS = {"enum": ["km", "mi"]}
PARAMETERS = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "convert_length": {
        "type": "object",
        "properties": {"value": {"type": "number"}, "from_unit": UNITS, "to_unit": UNITS},
        "required": ["value", "from_unit", "to_unit"],
        "additionalProperties": False,
    },
}
DESCRIPTIONS = {
    "get_weather": "The current weather in a city",
    "convert_length": "Convert a length between kilometres and miles",
}
TOOLS = [
    {"type": "function", "function": {"name": n, "description": DESCRIPTIONS[n], "parameters": p}}
    for n, p in PARAMETERS.items()
]
QUESTIONS = [  # (question, the tool that answers it)
    ("What is the weather in Paris?", "get_weather"),
    ("How many miles is 10 km?", "convert_length"),
    ("Is it raining in London right now?", "get_weather"),
    ("Convert 26.2 miles to kilometres.", "convert_length"),
    ("How warm is it in Madrid, in fahrenheit?", "get_weather"),
    ("What is 5 km in miles?", "convert_length"),
    ("Do I need a coat in Oslo today?", "get_weather"),
    ("How many kilometres are 100 miles?", "convert_length"),
    ("What's the temperature in Tokyo?", "get_weather"),
    ("Express 42 km in miles.", "convert_length"),
]
MODES = ["named", "required", "auto", "unconstrained"]
INVALID_TOOL = {
    "type": "function",
    "function": {"name": "broken", "parameters": {"type": "objekt"}},
}


def request(mode: str, i: int) -> dict:
    """Request i of a mode: the options beside model, max_tokens and sampling."""
    question, tool = QUESTIONS[i % len(QUESTIONS)]
    if mode == "unconstrained":
        ask = (
            f"{question}\nReply with only the JSON arguments for the function {tool}, "
            f"whose parameters follow this JSON Schema: {json.dumps(PARAMETERS[tool])}"
        )
        return {"messages": [{"role": "user", "content": ask}]}
    choice = {"type": "function", "function": {"name": tool}} if mode == "named" else mode
    return {
        "messages": [{"role": "user", "content": question}],
        "tools": TOOLS,
        "tool_choice": choice,
    }


def judge(i: int, choice) -> dict:
    """What one answer was: a call (finish_reason, null content), and are its arguments valid?
    An answer without a call has its text read as the arguments (the unconstrained contrast)."""
    message = choice.message
    if message.tool_calls:
        call = message.tool_calls[0].function
        name, text = call.name, call.arguments
    else:
        name, text = QUESTIONS[i % len(QUESTIONS)][1], message.content or ""
    return {
        "tool_calls": choice.finish_reason == "tool_calls",
        "content_null": message.content is None,
        "valid": valid(text, PARAMETERS.get(name)),
        "finish_reason": choice.finish_reason,
    }


def valid(text: str, schema: dict | None) -> bool:
    if schema is None:  # a call to a tool that does not exist
        return False
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def run_mode(client: AsyncOpenAI, model: str, mode: str, n: int) -> dict:
    gate = asyncio.Semaphore(CONCURRENCY)

    refusals = []

    async def one(i: int) -> dict:
        async with gate:
            try:
                reply = await client.chat.completions.create(
                    model=model, max_tokens=MAX_TOKENS, temperature=1.0, seed=i, **request(mode, i)
                )
            except APIStatusError as error:
                refusals.append(f"HTTP {error.status_code}: {error.message}"[:300])
                return {
                    "tool_calls": False,
                    "content_null": False,
                    "valid": False,
                    "finish_reason": None,
                }
        return judge(i, reply.choices[0])

    answers = await asyncio.gather(*(one(i) for i in range(n)))
    checks = ("tool_calls", "content_null", "valid")
    counts = {key: sum(a[key] for a in answers) for key in checks}
    counts["all_three"] = sum(all(a[key] for key in checks) for a in answers)
    counts["refused"] = len(refusals)
    counts["finish_reasons"] = dict(collections.Counter(str(a["finish_reason"]) for a in answers))
    first = {"first_refusal": refusals[0]} if refusals else {}
    return {"requests": n, **counts, "share": round(counts["all_three"] / n, 3), **first}


def invalid_schema_answer(url: str, model: str) -> dict:
    """What the server answers a tool whose parameter schema is not a JSON Schema."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    try:
        response = requests.post(
            f"{url}/v1/chat/completions",
            json={**body, "tools": [INVALID_TOOL], "tool_choice": "required"},
            timeout=120,
        )
    except requests.RequestException as error:  # e.g. the server dropped the connection
        return {"status": None, "body": f"{type(error).__name__}: {error}"[:400]}
    return {"status": response.status_code, "body": response.text[:400]}


def measure(url: str, model: str, n: int, modes: list[str] = MODES) -> dict:
    async def all_modes() -> dict:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="not-needed") as client:
            return {mode: await run_mode(client, model, mode, n) for mode in modes}

    return {"modes": asyncio.run(all_modes()), "invalid_schema": invalid_schema_answer(url, model)}


def reasons(counts: dict) -> str:
    """Finish reasons as `tool_calls` 49, `length` 1 (None: the request was refused)."""
    return ", ".join(f"`{reason}` {n}" for reason, n in sorted(counts.items(), key=lambda c: -c[1]))


def markdown_table(result: dict) -> str:
    header = "| engine | tool_choice | requests | finish_reason tool_calls | content null |"
    header += " valid arguments | all three | refused | finish reasons |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    refusals = []
    for engine, entry in result["engines"].items():
        for mode, row in entry["modes"].items():
            label = "none: arguments asked for in words" if mode == "unconstrained" else mode
            lines.append(
                f"| {engine} | {label} | {row['requests']} | {row['tool_calls']} "
                f"| {row['content_null']} | {row['valid']} | {row['all_three']} "
                f"| {row['refused']} | {reasons(row['finish_reasons'])} |"
            )
            if "first_refusal" in row:
                refusals.append(f"- {engine}, {label}: `{row['first_refusal'][:200]}`")
    settings = (
        f"Temperature 1.0 with a seed per request, max_tokens {result['max_tokens']}, "
        f"{CONCURRENCY} requests at a time. Valid arguments: the call's arguments (with no call, "
        "the answer's text) parse as JSON and fit the tool's parameter schema."
    )
    lines += ["", settings, "", *refusals]
    for engine, entry in result["engines"].items():
        bad = entry["invalid_schema"]
        lines.append(
            f"- {engine} (measured on {entry['commit'][:7]}, {entry['date']}): a tool whose "
            f'parameters are `{{"type": "objekt"}}` gets HTTP {bad["status"]}, '
            f"`{bad['body'][:200]}`"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 requests per mode")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--vllm", action="store_true", help="start vLLM instead of this server")
    parser.add_argument("--url", help="measure the server already running here (e.g. vLLM)")
    parser.add_argument("--engine", help=f"its name in the results (default: {OURS!r})")
    parser.add_argument("--model", default=workloads.CHAT_MODEL, help="the served model's name")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES, help="(all four)")
    args = parser.parse_args()
    if args.url and not args.engine:
        parser.error("--url needs --engine: the name its figures go under")
    engine, n = args.engine or (VLLM if args.vllm else OURS), 5 if args.quick else 50
    started = provenance([Path(__file__), SERVER], ("vllm-cpu",) if args.vllm else ())
    if args.url:
        entry = measure(args.url.rstrip("/"), args.model, n, args.modes)
    else:
        port = free_port()
        command = [sys.executable, str(SERVER), "--model", str(MODEL_DIR)]
        if args.vllm:
            command = vllm_command("start", MODEL_DIR, "--enforce-eager", *TOOL_FLAGS)
        with Server([*command, "--port", str(port)], port, timeout=600) as server:
            entry = measure(server.url, args.model, n, args.modes)
    entry.update(commit=started["commit"], date=started["date"][:10], url=args.url or "started")
    previous = args.out_dir / "tool_calls.json"
    engines = json.loads(previous.read_text())["engines"] if previous.exists() else {}
    result = {
        "provenance": started,
        "quick": args.quick,
        "requests": n,
        "max_tokens": MAX_TOKENS,
        **machine(),
        "engines": {**engines, engine: entry},
    }
    publish("tool_calls", result, markdown_table(result), args.out_dir)


if __name__ == "__main__":
    main()
