"""Call Text Generation Inference's native `/generate` route with `requests`.

TGI is in maintenance mode since 2025-12, but many deployments still speak its API: a raw prompt
in `inputs`, settings in `parameters`, greedy decoding unless `do_sample` is true. This guide's
LLM server offers the same route so the client is tested here.

    python snippets/backends/generate_with_tgi_api.py --url http://127.0.0.1:8080
"""

import argparse

import requests

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="http://127.0.0.1:8080")
args = parser.parse_args()

response = requests.post(
    f"{args.url}/generate",
    json={"inputs": "The three primary colours are", "parameters": {"max_new_tokens": 20}},
    timeout=60,
)
response.raise_for_status()
print("generated:", response.json()["generated_text"].strip())
