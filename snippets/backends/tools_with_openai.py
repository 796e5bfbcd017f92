"""Tool calling with the `openai` client: a named function, "required" and "auto", a streamed call,
and a round trip (the model's call, run here, its result sent back, the final answer).

Only the URL and the model name depend on the server: this guide's, or vLLM started with its
tool-calling flags.

    python snippets/backends/tools_with_openai.py --url http://127.0.0.1:8000
"""

import argparse
import json

import jsonschema
from openai import OpenAI

WEATHER = {  # made-up readings: the point is the call, not the forecast
    "paris": {"temperature_c": 18, "sky": "sunny"},
    "london": {"temperature_c": 12, "sky": "rain"},
}


def get_weather(city: str, unit: str) -> dict:
    reading = WEATHER.get(city.lower(), {"temperature_c": 20, "sky": "clear"})
    celsius = reading["temperature_c"]
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temperature, "unit": unit, "sky": reading["sky"]}


def convert_length(value: float, from_unit: str, to_unit: str) -> dict:
    km = value * 1.609344 if from_unit == "mi" else value
    return {"value": round(km / 1.609344 if to_unit == "mi" else km, 3), "unit": to_unit}


def tool(function, description: str, properties: dict) -> dict:
    parameters = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    spec = {"name": function.__name__, "description": description, "parameters": parameters}
    return {"type": "function", "function": spec}


UNITS = {"enum": ["km", "mi"]}
TOOLS = [
    tool(
        get_weather,
        "The current weather in a city",
        {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    ),
    tool(
        convert_length,
        "Convert a length between kilometres and miles",
        {"value": {"type": "number"}, "from_unit": UNITS, "to_unit": UNITS},
    ),
]
FUNCTIONS = {function.__name__: function for function in (get_weather, convert_length)}
SCHEMAS = {spec["function"]["name"]: spec["function"]["parameters"] for spec in TOOLS}


def run(call) -> str:
    """Run one of the model's calls here, after checking its arguments against the schema."""
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return json.dumps(FUNCTIONS[call.function.name](**arguments))


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="http://127.0.0.1:8000")
parser.add_argument("--model", default="SmolLM2-135M-Instruct")
args = parser.parse_args()
client = OpenAI(base_url=f"{args.url}/v1", api_key="not-needed")


def ask(messages: list, **options):
    return client.chat.completions.create(
        model=args.model, messages=messages, tools=TOOLS, max_tokens=60, temperature=0, **options
    )


# A named function: the answer must be a call to it.
weather = {"type": "function", "function": {"name": "get_weather"}}
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
reply = ask(messages, tool_choice=weather)
choice = reply.choices[0]
[call] = choice.message.tool_calls
print(
    "named:",
    choice.finish_reason,
    choice.message.content,
    call.function.name,
    call.function.arguments,
)

# The round trip: run each call, send its result back under its id, until the model answers in
# text (within three rounds: a model may keep calling).
for _ in range(3):
    if not choice.message.tool_calls:
        break
    messages.append(choice.message)
    for call in choice.message.tool_calls:
        result = run(call)
        print("ran:", call.function.name, "->", result)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    choice = ask(messages).choices[0]
print("final:", choice.finish_reason, choice.message.content)

# The same named call, streamed: the deltas carry the id and name, then the arguments in pieces.
stream = ask(messages[:1], tool_choice=weather, stream=True)
streamed, finish = {}, None
for chunk in stream:
    for delta in chunk.choices[0].delta.tool_calls or []:
        part = streamed.setdefault(delta.index, {"name": "", "arguments": ""})
        part["name"] += delta.function.name or ""
        part["arguments"] += delta.function.arguments or ""
    finish = chunk.choices[0].finish_reason or finish
print(
    "streamed:",
    finish,
    streamed[0]["arguments"] == reply.choices[0].message.tool_calls[0].function.arguments,
)

# "required": some call, the model picks which.
question = [{"role": "user", "content": "How many miles is 10 km?"}]
choice = ask(question, tool_choice="required").choices[0]
for call in choice.message.tool_calls:
    print(
        "required:",
        choice.finish_reason,
        call.function.name,
        call.function.arguments,
        "->",
        run(call),
    )

# "auto": the model decides whether to call at all (a small model mostly answers in text).
choice = ask(question, tool_choice="auto").choices[0]
called = [call.function.name for call in choice.message.tool_calls or []]
print("auto:", choice.finish_reason, f"called {called}" if called else "answered in text")
