"""A minimal load generator for any OpenAI-compatible chat server: throughput, TTFT and latency.

Point it at vLLM, TGI, SGLang, Ollama or this guide's server. Each worker keeps its own client
and streams, so time to first token (TTFT) and time per output token (TPOT) are measured per
request, from the client's side.

    python snippets/backends/llm_load.py --url http://127.0.0.1:8000 --requests 16 --concurrency 8
"""

import argparse
import asyncio
import statistics
import time

from openai import AsyncOpenAI


async def one_request(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    first, tokens = None, 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    done = time.perf_counter()
    first = first or done
    return {
        "ttft": first - started,
        "latency": done - started,
        "tokens": tokens,
        "tpot": (done - first) / max(tokens - 1, 1),
    }


async def worker(url: str, model: str, jobs: asyncio.Queue, results: list) -> None:
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="not-needed", timeout=600) as client:
        while not jobs.empty():
            prompt, max_tokens = jobs.get_nowait()
            results.append(await one_request(client, model, prompt, max_tokens))


async def main(url: str, model: str, n_requests: int, concurrency: int) -> dict:
    jobs: asyncio.Queue = asyncio.Queue()
    for i in range(n_requests):
        jobs.put_nowait(
            (f"Write a short story about a robot number {i}.", [16, 64, 128, 32][i % 4])
        )
    results: list[dict] = []
    started = time.perf_counter()
    await asyncio.gather(*(worker(url, model, jobs, results) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    summary = {
        "requests_per_s": len(results) / elapsed,
        "output_tokens_per_s": sum(r["tokens"] for r in results) / elapsed,
        "ttft_p50_s": statistics.median(r["ttft"] for r in results),
        "latency_p50_s": statistics.median(r["latency"] for r in results),
    }
    print(
        f"{len(results)} requests in {elapsed:.1f} s: "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary.items())
    )
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.model, args.requests, args.concurrency))
