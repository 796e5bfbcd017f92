"""Send an OpenAI batch file to any OpenAI-compatible server, a few requests at a time, so that a
run stopped midway (a crash, a kill, a reboot) can simply be started again.

Each answer is appended to the output file the moment it arrives, in one write; a rerun reads the
output first and skips every custom_id already answered, so in the end each request is answered
exactly once. What a kill can cost is the requests in flight at that moment: the server may have
answered them, but the client never wrote them down, so the rerun sends them again (at most
`--concurrency` of them).

The input is OpenAI's batch file format, one request per line:

    {"custom_id": "ticket-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

and each output line has the shape OpenAI's and vLLM's batch runners write:

    {"id": "...", "custom_id": "ticket-1", "response": {"status_code": 200, "request_id": "...",
     "body": {...}}, "error": null}

    python snippets/backends/batch_client.py batch_requests.jsonl answers.jsonl \\
        --url http://127.0.0.1:8000 --concurrency 4

A request the server refuses (a 4xx such as a 400) is answered: its status and body go to the
output. An overload (429, 503), a server error or a lost connection is not: the request stays
unanswered, the run ends with a one-line message and exit status 1, and the next run retries it.
"""

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

import httpx

RETRY_LATER = {408, 429, 500, 502, 503, 504}  # answers that say "not now", not "no"


class BatchFileError(Exception):
    """A problem with the input file that the user must fix; printed as one line."""


def read_requests(path: Path) -> list[dict]:
    """The batch file's requests, checked: a JSON object per line with a unique custom_id, method
    POST, a URL path and a body object."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise BatchFileError(f"{path}: {error.strerror}") from None
    requests, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            raise BatchFileError(f"{path}:{number}: not JSON ({error.msg})") from None
        problem = request_problem(request, seen)
        if problem:
            raise BatchFileError(f"{path}:{number}: {problem}")
        seen.add(request["custom_id"])
        requests.append(request)
    return requests


def request_problem(request, seen: set[str]) -> str | None:
    """What is wrong with one line of the batch file, or None."""
    if not isinstance(request, dict):
        return "a line must be a JSON object"
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id must be a non-empty string"
    if custom_id in seen:
        return f"custom_id {custom_id!r} appears twice"
    if request.get("method") != "POST":
        return "method must be POST"
    if not isinstance(request.get("url"), str) or not request["url"].startswith("/"):
        return "url must be a path such as /v1/chat/completions"
    if not isinstance(request.get("body"), dict):
        return "body must be a JSON object"
    return None


def answered_ids(output: Path) -> set[str]:
    """The custom_ids the output already holds. A last line without its newline was cut short by
    a kill while it was being written: it is removed, and its request is sent again."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        with output.open("r+b") as f:
            f.truncate(len(whole))
    ids = set()
    for number, line in enumerate(whole.splitlines(), start=1):
        try:
            ids.add(json.loads(line)["custom_id"])
        except (ValueError, TypeError, KeyError):
            raise BatchFileError(f"{output}:{number}: not an answer line; is this the output?")
    return ids


async def send(client: httpx.AsyncClient, request: dict) -> dict | None:
    """One request's output line, or None when it should be retried on a later run."""
    try:
        reply = await client.post(request["url"], json=request["body"])
    except httpx.TransportError:
        return None
    if reply.status_code in RETRY_LATER:
        return None
    try:
        body = reply.json()
    except ValueError:
        body = {"error": {"message": reply.text[:1000]}}
    server_id = body.get("id") if isinstance(body, dict) else None
    request_id = reply.headers.get("x-request-id") or server_id or ""
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": request["custom_id"],
        "response": {"status_code": reply.status_code, "request_id": request_id, "body": body},
        "error": None,
    }


async def run_batch(
    requests: list[dict], output: Path, url: str, concurrency: int, api_key: str | None = None
) -> dict:
    """Send every request not yet in `output`, at most `concurrency` at a time, appending each
    answer as it arrives; return how many were skipped, answered and left for a rerun."""
    done = answered_ids(output)
    todo = iter([r for r in requests if r["custom_id"] not in done])  # shared by the workers
    counts = {"skipped": len(done), "answered": 0, "left": 0}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # Unbuffered: each answer is one write() of a whole line, so a kill cuts at most that line.
    with output.open("ab", buffering=0) as out:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:

            async def worker() -> None:
                for request in todo:
                    line = await send(client, request)
                    if line is None:
                        counts["left"] += 1
                    else:
                        out.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
                        counts["answered"] += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="the batch file (JSONL requests)")
    parser.add_argument("output", type=Path, help="the answers (JSONL), appended to")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    parser.add_argument("--api-key", help="sent as a bearer token")
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    try:
        requests = read_requests(args.input)
        counts = asyncio.run(
            run_batch(requests, args.output, args.url, args.concurrency, args.api_key)
        )
    except (BatchFileError, OSError, ValueError) as error:  # bad files: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{counts['answered']} answered, {counts['skipped']} already in {args.output}, "
        f"{counts['left']} left for a rerun"
    )
    sys.exit(1 if counts["left"] else 0)


if __name__ == "__main__":
    main()
