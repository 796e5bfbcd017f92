"""Embeddings with the official `openai` client, pointed at a self-hosted server.

Any server that speaks the OpenAI embeddings API works: change `base_url`, keep your code.

    python snippets/backends/embed_with_openai.py --url http://127.0.0.1:8000
"""

import argparse

from openai import OpenAI

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="http://127.0.0.1:8000")
parser.add_argument("--api-key", default="not-needed", help="the server's --api-key, if it has one")
args = parser.parse_args()

client = OpenAI(base_url=f"{args.url}/v1", api_key=args.api_key)
result = client.embeddings.create(
    model="all-MiniLM-L6-v2", input=["batching", "dynamic batching of requests"]
)
vectors = [item.embedding for item in result.data]
print(f"{len(vectors)} embeddings of {len(vectors[0])} floats from {result.model}")
print(f"cosine similarity: {sum(a * b for a, b in zip(*vectors)):.3f}")
