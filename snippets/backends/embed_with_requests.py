"""One embeddings call with `requests`: the plain HTTP request behind every client library.

python snippets/backends/embed_with_requests.py --url http://127.0.0.1:8000
"""

import argparse

import requests

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="http://127.0.0.1:8000")
parser.add_argument(
    "--api-key", help="sent as 'Authorization: Bearer <key>' if the server needs one"
)
args = parser.parse_args()

response = requests.post(
    f"{args.url}/v1/embeddings",
    json={
        "model": "all-MiniLM-L6-v2",
        "input": ["How do I serve a model?", "Deploying models to users"],
    },
    headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {},
    timeout=30,
)
if response.status_code != 200:  # errors come back as {"error": {"message": ...}}
    raise SystemExit(f"HTTP {response.status_code}: {response.json()['error']['message']}")

first, second = (item["embedding"] for item in response.json()["data"])
similarity = sum(a * b for a, b in zip(first, second))  # the vectors are unit length: dot = cosine
print(f"2 embeddings of {len(first)} floats, {response.json()['usage']['total_tokens']} tokens")
print(f"cosine similarity: {similarity:.3f}")
