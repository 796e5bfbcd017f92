"""Stream a chat answer with plain `requests`, parsing the server-sent events by hand.

What every OpenAI-compatible streaming client does underneath: POST with "stream": true, read the
response line by line, decode each `data: {...}` line as a chunk, stop at `data: [DONE]`.

    python snippets/backends/chat_with_requests_sse.py --url http://127.0.0.1:8000
"""

import argparse
import json

import requests

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="http://127.0.0.1:8000")
parser.add_argument("--model", default="SmolLM2-135M-Instruct")
args = parser.parse_args()

request = {
    "model": args.model,
    "messages": [{"role": "user", "content": "Name three planets."}],
    "max_tokens": 40,
    "temperature": 0,
    "stream": True,
}
with requests.post(
    f"{args.url}/v1/chat/completions", json=request, stream=True, timeout=60
) as response:
    if response.status_code != 200:
        raise SystemExit(f"HTTP {response.status_code}: {response.json()['error']['message']}")
    text, finish_reason, events = "", None, 0
    for line in response.iter_lines(decode_unicode=True):
        if not line.startswith("data: "):
            continue  # blank separator lines and SSE comments
        if line == "data: [DONE]":
            break
        events += 1
        event = json.loads(line.removeprefix("data: "))
        if "error" in event:  # the server failed after the stream began
            raise SystemExit(f"stream failed: {event['error']['message']}")
        choice = event["choices"][0]
        text += choice["delta"].get("content") or ""
        finish_reason = choice["finish_reason"] or finish_reason

print(f"{events} events, finish_reason={finish_reason}")
print(text)
