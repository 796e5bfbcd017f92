"""An optional part of llm_server.py: structured output, a logits processor of its engine.

OpenAI's `response_format` (`json_object`, or `json_schema` with a JSON Schema) is compiled by
llguidance into a grammar; at every step the grammar's mask forbids every token that could not
continue valid JSON, so the answer always parses and fits the schema.

To drop it: leave out `response_format` from ChatRequest (openai_protocol.py), and in
llm_server.py the `grammar_tokenizer` line at load and the `grammar_mask` call in the chat route.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import llguidance
import llguidance.hf
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from server_kit import ApiError


# --8<-- [start:structured]
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


class GrammarMask:
    """A logits processor: only the tokens the grammar allows next keep their logits."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    def __call__(self, logits: torch.Tensor) -> None:
        """llguidance computes the allowed set as a bitmask, one bit per vocabulary entry."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: logits.shape[-1]].astype(bool)
        logits[torch.from_numpy(~allowed)] = float("-inf")

    def accept(self, token_id: int) -> bool:
        """Advance the grammar; True once it is complete (nothing more may follow)."""
        self.matcher.consume_token(token_id)
        return self.matcher.is_stopped()


def grammar_tokenizer(encoder, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's view of the model's vocabulary, built once at start-up."""
    return llguidance.hf.from_tokenizer(encoder, n_vocab=vocab_size)


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


async def grammar_mask(
    thread: ThreadPoolExecutor, tokenizer: llguidance.LLTokenizer, response_format
) -> tuple[GrammarMask, ...]:
    """The request's logits processors: none for free text, else its grammar's mask, compiled in
    `thread` (a large schema takes milliseconds). A schema llguidance cannot compile is the
    client's error: 400, naming it."""
    grammar = grammar_for(response_format)
    if grammar is None:
        return ()

    def compile_grammar() -> GrammarMask:
        if error := llguidance.LLMatcher.validate_grammar(grammar, tokenizer):
            raise ApiError(
                400,
                f"Invalid 'response_format.json_schema.schema': {error}",
                param="response_format.json_schema.schema",
                code="invalid_schema",
            )
        return GrammarMask(llguidance.LLMatcher(tokenizer, grammar))

    return (await asyncio.get_running_loop().run_in_executor(thread, compile_grammar),)


# --8<-- [end:structured]
