"""Chat with any OpenAI-compatible server (this guide's, vLLM, SGLang, llama.cpp, Ollama) using `openai`.

python snippets/backends/chat_with_openai.py --url http://127.0.0.1:8000 --model SmolLM2-135M-Instruct
"""

import argparse

from openai import OpenAI

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="http://127.0.0.1:8000")
parser.add_argument("--model", default="SmolLM2-135M-Instruct")
parser.add_argument("--api-key", default="not-needed")
args = parser.parse_args()

client = OpenAI(base_url=f"{args.url}/v1", api_key=args.api_key)
messages = [{"role": "user", "content": "What is the capital of France?"}]

# One answer, all at once.
reply = client.chat.completions.create(
    model=args.model, messages=messages, max_tokens=32, temperature=0
)
print("answer:", reply.choices[0].message.content)
print("finish:", reply.choices[0].finish_reason, "| tokens:", reply.usage.completion_tokens)

# The same answer, streamed token by token as server-sent events.
stream = client.chat.completions.create(
    model=args.model,
    messages=messages,
    max_tokens=32,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:  # the last chunk, asked for with include_usage
        print("streamed:", "".join(pieces), f"({chunk.usage.completion_tokens} tokens)")
