"""Ask for JSON that fits a schema, with the `openai` client, and check what comes back.

The server constrains decoding with the schema, so even a 135M-parameter model answers with JSON
that parses and validates: the same request works against vLLM, SGLang and OpenAI itself.

    python snippets/backends/structured_output_with_openai.py --url http://127.0.0.1:8000
"""

import argparse
import json

import jsonschema
from openai import OpenAI

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {
            "type": "integer",
            "minimum": 0,
            "maximum": 50,
        },  # bounds close a number
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "country", "population_millions", "is_capital"],
    "additionalProperties": False,
}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="http://127.0.0.1:8000")
parser.add_argument("--model", default="SmolLM2-135M-Instruct")
args = parser.parse_args()

client = OpenAI(base_url=f"{args.url}/v1", api_key="not-needed")
reply = client.chat.completions.create(
    model=args.model,
    messages=[
        {"role": "user", "content": "Describe Paris as JSON: city, country, population, capital?"}
    ],
    response_format={
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": CITY, "strict": True},
    },
    max_tokens=100,
    temperature=0,
)
answer, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
print("finish:", finish)
print("answer:", answer)
if finish == "length":  # cut off at max_tokens: valid so far, but not a whole object
    raise SystemExit("the answer was cut at max_tokens; raise it or bound the schema's fields")
data = json.loads(answer)  # parses...
jsonschema.validate(data, CITY)  # ...and fits the schema
print("valid:", sorted(data))
