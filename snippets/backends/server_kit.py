"""What every model server in this guide shares: errors, API keys, limits, health and a clean stop.

The embedding server and the LLM server import this file from their own folder, so copy the three
files together. Nothing here knows about models:

- `ApiError` and `install_error_handlers`: every error is an OpenAI-style JSON body
  `{"error": {"message", "type", "param", "code"}}`, bad request bodies included (FastAPI's
  validation errors are rendered by one handler);
- `Guard`: pure ASGI middleware (safe for streaming responses) that caps the body size, checks
  bearer keys in constant time, rate-limits each key and refuses text that is not text (a lone
  UTF-16 surrogate) on every route, naming the field;
- `Health`: the phase a readiness probe sees (loading, ready, draining, failed with a reason);
- `unless_disconnected`: await work, or cancel it when the client hangs up;
- `DrainingServer`: on SIGTERM, report draining, stop accepting, finish what was accepted;
- `open_request_log`, `log_answer`, `AnswerLog` and POST /v1/feedback: the request log of
  request_log.py.
"""

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field
from request_log import RequestLog, Row, WriterStopped
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("servebook")
T = TypeVar("T")
# Probes, metrics and the schema need no key (as in vLLM): a Kubernetes probe carries none. Keep
# /metrics on the internal network. The Open Inference Protocol's probes are matched as patterns.
OPEN_PATHS = frozenset({"/health", "/metrics", "/docs", "/openapi.json"})
OPEN_PATTERN = re.compile(r"/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready")
MAX_BUCKETS = 10_000  # rate-limit buckets kept; the least recently used goes first


def is_open(path: str) -> bool:
    """True for the routes anyone may call: health and readiness probes, metrics, the schema."""
    return path in OPEN_PATHS or OPEN_PATTERN.fullmatch(path) is not None


# --8<-- [start:errors]
class ApiError(Exception):
    """An error to send to the client as an OpenAI-style JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code, self.headers = code, headers


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    err_type = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def field_path(loc: tuple) -> str:
    """('body', 'input', 1) -> "input[1]": the field as the client wrote it."""
    path = ""
    for part in loc[1:]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def describe_validation_error(error: dict) -> tuple[str, str | None]:
    """One readable sentence for pydantic's first complaint about a request body."""
    path = field_path(error["loc"])
    if error["type"] == "json_invalid":
        return f"Request body is not valid JSON: {error['ctx']['error']}.", None
    if error["type"] == "missing" and not path:
        return "Request body is empty; send a JSON object.", None
    if error["type"] == "model_attributes_type" and not path:
        return (
            "Request body must be a JSON object sent with 'Content-Type: application/json'.",
            None,
        )
    if error["type"] == "extra_forbidden":
        return f"Unrecognized request argument supplied: {path}.", path
    if error["type"] == "missing":
        return f"Missing required parameter: '{path}'.", path
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    return f"Invalid '{path}': {message}.", path


def install_error_handlers(app: FastAPI) -> None:
    """Render every failure as an OpenAI-style body; an unexpected one is logged, never shown."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error_response(error.status, error.message, error.param, error.code, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError):
        message, param = describe_validation_error(error.errors()[0])
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        cause = error.__cause__  # FastAPI wraps what went wrong while reading the body
        if isinstance(cause, ApiError):
            return await api_error(request, cause)
        if isinstance(cause, UnicodeDecodeError):
            return error_response(400, "Request body is not valid UTF-8.")
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "Internal error; it has been logged.")


# --8<-- [end:errors]


# --8<-- [start:guard]
class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, bursts up to the same number.

    At most MAX_BUCKETS are kept, least recently used dropped first: without keys the buckets are
    per client address, and a server must not grow by one entry for every address it ever saw.
    A dropped bucket starts full again, which only ever favours a client idle for that long.
    """

    def __init__(self, per_minute: float, max_buckets: int = MAX_BUCKETS):
        self.rate, self.capacity, self.max_buckets = per_minute / 60, per_minute, max_buckets
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time)

    def retry_after(self, key: str) -> int:
        """Take a token for `key`: 0 if allowed, else the seconds until one is available."""
        now = time.monotonic()
        tokens, last = self.buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        self.buckets[key] = (tokens - 1 if allowed else tokens, now)  # now the most recent
        if len(self.buckets) > self.max_buckets:
            self.buckets.popitem(last=False)
        return 0 if allowed else math.ceil((1 - tokens) / self.rate)


class Guard:
    """Pure ASGI middleware in front of every route but the open ones: keys, rate limit, body
    size, and text that is really text. Pure ASGI (not @app.middleware("http")) so that streamed
    responses pass through untouched."""

    def __init__(
        self, app, api_keys: list[str], rate_limit_per_minute: float | None, max_body_bytes: int
    ):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.key_hashes = [key_hash(key) for key in api_keys]  # the keys themselves are not kept
        self.limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_open(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        caller = self.authenticate(headers.get(b"authorization", b""))
        if caller is None:
            response = error_response(
                401,
                "Missing or wrong API key (send 'Authorization: Bearer <key>').",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            return await response(scope, receive, send)
        client = caller or (scope.get("client") or ("unknown",))[0]  # an ASGI client may be None
        if self.limiter and (wait := self.limiter.retry_after(client)):
            response = error_response(
                429,
                f"Rate limit reached for this key; retry in {wait} s.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
            return await response(scope, receive, send)
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self.too_large(int(declared))(scope, receive, send)
        body = await self.read_body(receive)
        if body is None:  # the client left, or sent more than the limit without saying so
            return await self.too_large()(scope, receive, send)
        json_end = headers.get(b"inference-header-content-length", b"")
        if field := lone_surrogate_field(body[: int(json_end)] if json_end.isdigit() else body):
            response = error_response(
                400,
                f"Invalid '{field}': it holds a lone UTF-16 surrogate (half of a pair), "
                "which is not text; send valid Unicode.",
                param=field,
                code="invalid_text",
            )
            return await response(scope, receive, send)
        await self.app(scope, replay(body, receive), send)

    def authenticate(self, authorization: bytes) -> str | None:
        """An id for the matching key ("" when the server has none), or None. Every stored hash is
        compared in constant time, so the answer's timing says nothing about how close a guess was;
        the id (the start of the key's hash) can be logged, the key never is."""
        if not self.key_hashes:
            return ""
        if not authorization.startswith(b"Bearer "):
            return None
        given = hashlib.sha256(authorization.removeprefix(b"Bearer ")).digest()
        matches = [hmac.compare_digest(given, stored) for stored in self.key_hashes]
        return self.key_hashes[matches.index(True)].hex()[:12] if any(matches) else None

    def too_large(self, declared: int | None = None) -> JSONResponse:
        if declared is None:
            message = f"Request body exceeds the limit of {self.max_body_bytes} bytes."
        else:
            message = f"Request body is {declared} bytes; the limit is {self.max_body_bytes}."
        return error_response(413, message, code="body_too_large")

    async def read_body(self, receive) -> bytes | None:
        """The whole body (the routes read it whole anyway), or None past the size limit."""
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return None
            more = message.get("more_body", False)
        return bytes(body)


def replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then the client's own messages (a
    disconnect, which the routes watch for)."""
    delivered = False

    async def receive_again():
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


# A lone surrogate can only arrive as a JSON escape (UTF-8 cannot encode one), so the JSON is
# parsed a second time only for a body that has such an escape.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate_field(body: bytes) -> str | None:
    """The field (as field_path writes it) of the first string holding a lone surrogate: such a
    string breaks tokenizers and SQLite alike, so no route may see one."""
    if not SURROGATE_ESCAPE.search(body):
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None  # not JSON: the route's own parsing names the problem
    return first_lone_surrogate(document, "")


def first_lone_surrogate(value, path: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # a paired surrogate was decoded into one character already
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        items = [(f"{path}.{key}" if path else str(key), item) for key, item in value.items()]
        items += [(path or "body", key) for key in value]  # a key is text too
    elif isinstance(value, list):
        items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    else:
        return None
    for item_path, item in items:
        if found := first_lone_surrogate(item, item_path):
            return found
    return None


# --8<-- [end:guard]


def key_hash(key: str) -> bytes:
    """A key as the server keeps it: its SHA-256. A keys file may hold 'sha256:<hex>' lines, so
    the file on disk gives nobody a working key."""
    if key.startswith("sha256:"):
        return bytes.fromhex(key.removeprefix("sha256:"))
    return hashlib.sha256(key.encode()).digest()


def load_api_keys(keys: list[str] | None, keys_file: Path | None) -> list[str]:
    """Keys from repeated --api-key flags and from a file of one key (or 'sha256:<hex>') per line."""
    found = list(keys or [])
    if keys_file:
        lines = keys_file.read_text().splitlines()
        found += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return found


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both servers share: address, keys, rate limit."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (repeat for several keys)",
    )
    parser.add_argument(
        "--api-keys", type=Path, metavar="FILE", help="a file of keys, one per line"
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        metavar="N",
        help="requests per minute allowed per key (per client address without keys)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="behind a proxy: trust X-Forwarded-For from these addresses (comma-separated), so "
        "rate limits and logs see the real client (passed to uvicorn)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let a web page from ORIGIN (e.g. http://127.0.0.1:5500) call the API (repeatable)",
    )
    parser.add_argument(
        "--log-db",
        type=Path,
        metavar="PATH",
        help="log every answer to this SQLite file and accept POST /v1/feedback",
    )
    parser.add_argument(
        "--log-sync",
        choices=["NORMAL", "FULL"],
        default="NORMAL",
        help="NORMAL survives a crash of the server; FULL also a power cut, at an fsync per commit",
    )


def check_server_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Validate the shared options; return the API keys. Errors end in one usage line."""
    if args.api_keys and not args.api_keys.is_file():
        parser.error(f"--api-keys: no such file: {args.api_keys}")
    if args.rate_limit is not None and args.rate_limit <= 0:
        parser.error("--rate-limit must be > 0")
    if args.log_db and not args.log_db.parent.is_dir():
        parser.error(f"--log-db: no such folder: {args.log_db.parent}")
    return load_api_keys(args.api_key, args.api_keys)


# --8<-- [start:feedback]
class Feedback(BaseModel):
    """The body of POST /v1/feedback: a rating of one logged answer, by the id the answer carried."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: Annotated[str, Field(min_length=1)]
    rating: Literal[1, -1]
    correction: str | None = None
    comment: str | None = None


feedback_router = APIRouter()


@feedback_router.post("/v1/feedback")
async def feedback(body: Feedback, request: Request):
    """Attach a thumbs up or down (and an optional correction) to a logged answer; a repeat
    replaces the earlier rating. Served only when the server keeps a request log."""
    async with log_errors_as_503("The feedback could not be recorded"):
        found = await request.app.state.request_log.feedback(
            body.id, body.rating, body.correction, body.comment
        )
    if not found:
        raise ApiError(
            404, f"No logged request has the id '{body.id}'.", param="id", code="not_found"
        )
    return {"id": body.id, "rating": body.rating, "status": "recorded"}


# --8<-- [end:feedback]


def open_request_log(app: FastAPI, path: Path | None, synchronous: str) -> None:
    """With --log-db, keep a request log and serve /v1/feedback; without, neither exists (a client
    probing /v1/feedback then gets 404 and hides its thumbs). Should the log's writer ever stop,
    /health turns failed at once, so an orchestrator replaces the server."""

    def on_stop(error: BaseException) -> None:
        app.state.health.fail("the request log stopped", error)

    app.state.request_log = RequestLog(path, synchronous, on_stop=on_stop) if path else None
    if path:
        app.include_router(feedback_router)


def close_request_log(app: FastAPI) -> None:
    """At shutdown, after the last request: commit what is queued and stop the writer."""
    if app.state.request_log is not None:
        app.state.request_log.close()


@contextlib.asynccontextmanager
async def log_errors_as_503(what: str):
    """A log that cannot write (a full disk, a stopped writer) is the server's trouble, not the
    client's: 503 with the reason, never a 500 or a wait."""
    try:
        yield
    except (sqlite3.Error, WriterStopped) as error:
        raise ApiError(503, f"{what}: {error}.", code="log_unavailable") from None


async def log_answer(app: FastAPI, row: Row) -> None:
    """Record an answered request, awaiting its commit (call before the response's last byte)."""
    if app.state.request_log is not None:
        async with log_errors_as_503("The answer could not be logged"):
            await app.state.request_log.record(row)


def log_answer_later(app: FastAPI, row: Row) -> None:
    """Queue a row without waiting: for a request that ended early (the client may be gone)."""
    if app.state.request_log is not None:
        with contextlib.suppress(WriterStopped):  # /health already says failed
            app.state.request_log.record_later(row)


@dataclass
class AnswerLog:
    """The one request-log row of a generated answer, written once: committed (awaited) for an
    answer that is complete, sent without waiting for one that ended early (its client may be
    gone). Create it when the request arrives: its latency counts from then."""

    app: FastAPI
    request_id: str
    route: str
    prompt: Any  # anything JSON can hold: the messages, or a raw prompt
    user: str | None
    arrived: float = field(default_factory=time.time)
    written: bool = False

    def row(self, text: str, status: int) -> Row:
        state = self.app.state
        latency_ms = (time.time() - self.arrived) * 1000
        prompt, output = json.dumps(self.prompt), json.dumps(text)
        return Row(
            self.request_id, self.arrived, self.route, state.model_id,
            state.settings.model_version, self.user, prompt, output, latency_ms, status,
        )  # fmt: skip

    async def commit(self, text: str, status: int) -> None:
        self.written = True
        await log_answer(self.app, self.row(text, status))

    def send(self, text: str, status: int) -> None:
        if not self.written:
            self.written = True
            log_answer_later(self.app, self.row(text, status))


class Health:
    """What /health reports: loading -> ready -> draining, or failed with the reason."""

    def __init__(self):
        self.phase, self.reason = "loading", None

    def fail(self, what: str, error: BaseException) -> None:
        """Record a fatal failure (and log its traceback): /health turns 503 with the reason."""
        self.phase, self.reason = "failed", f"{what}: {type(error).__name__}: {error}"
        log.error("%s", self.reason, exc_info=error)

    def response(self, model: str) -> JSONResponse:
        body = {"status": self.phase, "model": model}
        if self.reason:
            body["reason"] = self.reason
        return JSONResponse(body, status_code=200 if self.phase == "ready" else 503)

    def require_ready(self) -> None:
        """Refuse work unless ready: 503 with the reason a client can act on."""
        if self.phase == "loading":
            raise ApiError(
                503, "Model is still loading.", code="not_ready", headers={"Retry-After": "5"}
            )
        if self.phase == "draining":
            raise ApiError(503, "Server is shutting down.", code="shutting_down")
        if self.phase == "failed":
            raise ApiError(503, f"Server cannot serve: {self.reason}", code="server_failed")


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away (call once the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Await `work`, or cancel it when the client hangs up first: (finished, result).

    Both tasks are cancelled and awaited on every path, so no task outlives the request.
    """
    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.wait({task, watcher})
    if task.cancelled():
        return False, None
    return True, task.result()


class DrainingServer(uvicorn.Server):
    """On SIGTERM: report draining (503), stop accepting, let accepted requests finish, exit.

    With `on_drain_timeout`, requests still running `drain_seconds` after the signal are ended by
    it (the LLM server sends each stream an error event), so none is cut without a word; give
    uvicorn's own timeout_graceful_shutdown a few seconds more.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        health: Health,
        drain_seconds: float | None = None,
        on_drain_timeout: Callable[[], None] | None = None,
    ):
        super().__init__(config)
        self.health = health
        self.drain_seconds, self.on_drain_timeout = drain_seconds, on_drain_timeout

    def handle_exit(self, sig, frame):
        if self.health.phase == "ready":
            self.health.phase = "draining"
            if self.on_drain_timeout is not None:
                timer = threading.Timer(self.drain_seconds, self.on_drain_timeout)
                timer.daemon = True
                timer.start()
        super().handle_exit(sig, frame)


class RequestMetrics:
    """Pure ASGI middleware: requests counted by route and status (a stream when it ends); for the
    routes in `timed`, requests in progress and their latency too."""

    def __init__(
        self,
        app,
        requests: Counter,
        route_of: Callable[[str], str],
        timed: frozenset = frozenset(),
        in_progress: Gauge | None = None,
        latency: Histogram | None = None,
    ):
        self.app, self.requests, self.route_of = app, requests, route_of
        self.timed, self.in_progress, self.latency = timed, in_progress, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = self.route_of(scope["path"])
        timed = route in self.timed
        status, started = 500, time.perf_counter()

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if timed:
            self.in_progress.inc()
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self.requests.labels(route, str(status)).inc()
            if timed:
                self.in_progress.dec()
                self.latency.observe(time.perf_counter() - started)


def add_middleware(
    app: FastAPI,
    metrics: dict,
    api_keys: list[str],
    rate_limit: float | None,
    max_body_bytes: int,
    cors_origins: list[str],
) -> None:
    """The middleware stack, outermost first: CORS (a browser's preflight is answered before any
    key check), metrics (`metrics` are RequestMetrics' arguments; they then also count 401, 413
    and 429), then the guard."""
    app.add_middleware(
        Guard, api_keys=api_keys, rate_limit_per_minute=rate_limit, max_body_bytes=max_body_bytes
    )
    app.add_middleware(RequestMetrics, **metrics)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-Id"],
        )


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
