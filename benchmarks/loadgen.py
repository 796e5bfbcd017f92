"""The one load generator every benchmark here uses: it runs in its own process, one keep-alive
HTTP connection per worker, on uvloop, and prints one JSON summary.

Closed loop (`--concurrency N`): N workers send back to back. Open loop (`--rate R`): requests
arrive as a Poisson process at R per second whatever the server does, each on a free pooled
connection. Bodies come from a workload file (a JSON list, see workloads.py) and are sent in
order, cycling. For chat bodies with "stream": true it reads the server-sent events and records
time to first token (TTFT), time per output token (TPOT) and the completion's token count.

    python benchmarks/loadgen.py --url http://127.0.0.1:8000 --path /v1/embeddings \\
        --workload payloads.json --concurrency 32 --max-requests 3000 --max-seconds 15

HTTP/1.1 on raw asyncio streams: on a two-core machine a full client library (httpx, openai)
would spend CPU the server needs, and the benchmark would measure the client.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import uvloop


class Unanswered(ConnectionError):
    """The connection ended before the status line: the server never read the request."""


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a JSON POST and reads the whole answer."""

    IDLE_LIMIT_S = (
        4  # servers close idle keep-alive connections (uvicorn after 5 s): reconnect first
    )

    def __init__(self, host: str, port: int, path: str, headers: bytes):
        self.host, self.port, self.path, self.headers = host, port, path, headers
        self.reader = self.writer = None
        self.last_used = 0.0

    async def post(self, body: bytes) -> dict:
        """One request; a connection the server closed or reset counts as a failed request
        (status 0) and the next request opens a new one. One exception: a kept-alive connection
        that ends before any answer was closed by the server between requests (llama-server does
        so after every stream, whatever its Keep-Alive header says), so the request is sent once
        more on a new connection."""
        started = time.perf_counter()
        for _ in range(2):
            reused = self.writer is not None
            try:
                return await self.exchange(body, started)
            except Unanswered:
                self.close()
                if not reused:
                    break
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                self.close()
                break
        return {"status": 0, "latency": time.perf_counter() - started}

    async def exchange(self, body: bytes, started: float) -> dict:
        if self.writer is not None and time.monotonic() - self.last_used > self.IDLE_LIMIT_S:
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (self.path.encode(), self.headers, len(body), body)
        )
        try:
            status_line = await self.reader.readline()
        except ConnectionResetError as error:
            raise Unanswered from error
        if not status_line:
            raise Unanswered
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self.reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") == b"chunked":
            record = await self.read_events(started)
        else:
            await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
            record = {}
        self.last_used = time.monotonic()
        return {"status": status, "latency": time.perf_counter() - started, **record}

    async def read_events(self, started: float) -> dict:
        """Server-sent events in a chunked body: first-token time and the token count."""
        first, tokens, chunks, buffer = None, 0, 0, b""
        while size := int((await self.reader.readline()).strip() or b"0", 16):
            buffer += (await self.reader.readexactly(size + 2))[:-2]
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: {"):
                    continue
                data = json.loads(event[6:])
                if "error" in data:
                    raise RuntimeError(f"stream failed: {data['error']['message']}")
                if data.get("choices") and data["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
                    chunks += 1
                if data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
        await self.reader.readline()  # the blank line after the last chunk
        done = time.perf_counter()
        first = first or done
        tokens = tokens or chunks  # a server that does not report usage: one token per chunk
        return {
            "ttft": first - started,
            "tokens": tokens,
            "tpot": (done - first) / max(tokens - 1, 1),
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(
    connect, bodies: list[bytes], concurrency: int, max_requests: int, max_seconds: float
) -> tuple[list[dict], float]:
    """Each worker takes the next body in workload order (a fast worker takes more of them, as a
    real client would), until max_requests are sent or max_seconds have passed."""
    sent = 0
    stop_at = time.monotonic() + max_seconds
    records: list[dict] = []

    async def worker():
        nonlocal sent
        connection = connect()
        try:
            while sent < max_requests and time.monotonic() < stop_at:
                body, sent = bodies[sent % len(bodies)], sent + 1
                records.append(await connection.post(body))
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - started


async def open_loop(
    connect, bodies: list[bytes], rate: float, max_requests: int, max_seconds: float, seed: int
) -> tuple[list[dict], float]:
    gaps = np.random.default_rng(seed).exponential(1 / rate, max_requests)
    idle: list[Connection] = []
    records: list[dict] = []

    async def one(body: bytes):
        connection = idle.pop() if idle else connect()
        records.append(await connection.post(body))
        idle.append(connection)

    started = time.perf_counter()
    tasks, due = [], started
    for i, gap in enumerate(gaps):
        due += gap
        if due - started > max_seconds:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for connection in idle:
        connection.close()
    return records, elapsed


def summarise(records: list[dict], elapsed: float) -> dict:
    ok = [r for r in records if r["status"] == 200]

    def pct(key: str, scale: float = 1000) -> dict:
        values = [r[key] for r in ok if key in r]
        if not values:
            return {}
        p50, p95, p99 = np.percentile(values, [50, 95, 99]) * scale
        return {
            f"{key}_p50": round(float(p50), 2),
            f"{key}_p95": round(float(p95), 2),
            f"{key}_p99": round(float(p99), 2),
        }

    summary = {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(ok) / elapsed, 2),
        **pct("latency"),
    }
    if ok and "tokens" in ok[0]:
        summary["output_tokens"] = sum(r["tokens"] for r in ok)
        summary["output_tokens_per_s"] = round(summary["output_tokens"] / elapsed, 1)
        summary.update(pct("ttft"))
        summary.update(pct("tpot"))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://host:port")
    parser.add_argument("--path", required=True, help="the route to POST to, e.g. /v1/embeddings")
    parser.add_argument(
        "--workload", type=Path, required=True, help="a JSON list of request bodies"
    )
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop: this many workers")
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--max-requests", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=15)
    parser.add_argument(
        "--warmup", type=int, default=0, help="requests per worker before measuring"
    )
    parser.add_argument("--api-key")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.workload.is_file():
        parser.error(f"--workload: no such file: {args.workload}")
    host, port = args.url.removeprefix("http://").split(":")
    headers = f"Authorization: Bearer {args.api_key}\r\n".encode() if args.api_key else b""
    bodies = [json.dumps(body).encode() for body in json.loads(args.workload.read_text())]

    def connect() -> Connection:
        return Connection(host, int(port), args.path, headers)

    async def run() -> dict:
        workers = args.concurrency or 4
        if args.warmup:  # connections, allocator and caches warm, nothing recorded
            await closed_loop(connect, bodies, workers, args.warmup * workers, 60)
        if args.concurrency:
            records, elapsed = await closed_loop(
                connect, bodies, args.concurrency, args.max_requests, args.max_seconds
            )
        else:
            records, elapsed = await open_loop(
                connect, bodies, args.rate, args.max_requests, args.max_seconds, args.seed
            )
        return summarise(records, elapsed)

    try:
        summary = uvloop.run(run())
    except (OSError, RuntimeError, ValueError) as error:
        sys.exit(f"loadgen: {type(error).__name__}: {error}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
