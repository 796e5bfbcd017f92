"""Send many embedding requests at once with httpx, and match every answer to its input.

Each worker has its own `httpx.AsyncClient`: one client shared by dozens of workers costs
milliseconds of client CPU per request and can halve the throughput you measure.

    python snippets/backends/embed_concurrently.py --url http://127.0.0.1:8000 --requests 200 --concurrency 16
"""

import argparse
import asyncio
import time

import httpx


async def worker(url: str, texts: list[str], answers: dict[str, list[float]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for text in texts:
            response = await client.post(
                "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": text}
            )
            response.raise_for_status()
            answers[text] = response.json()["data"][0]["embedding"]


async def main(url: str, n_requests: int, concurrency: int) -> dict[str, list[float]]:
    texts = [
        f"request number {i} asks about {'serving ' * (i % 7)}models" for i in range(n_requests)
    ]
    answers: dict[str, list[float]] = {}
    started = time.perf_counter()
    await asyncio.gather(*(worker(url, texts[k::concurrency], answers) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    print(
        f"{len(answers)} of {n_requests} answered in {elapsed:.2f} s ({len(answers) / elapsed:.0f} requests/s)"
    )
    return answers


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.requests, args.concurrency))
