"""An optional part of llm_server.py: Text Generation Inference's native route, POST /generate
(a raw prompt in, {"generated_text"} out; greedy unless `do_sample`), as a router the app
includes. It reaches the engine only through `app.state.llm`, the server's AsyncEngine.

To drop it: in llm_server.py, leave out `app.include_router(tgi_router)`.
"""

import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from openai_protocol import MAX_SEED
from pydantic import BaseModel, ConfigDict, Field
from server_kit import AnswerLog, ApiError, unless_disconnected


# --8<-- [start:tgi]
class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    max_new_tokens: int = Field(20, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)] = []


class GenerateRequest(BaseModel):
    """The body of TGI's POST /generate."""

    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: Annotated[str, Field(min_length=1)]
    parameters: GenerateParameters = GenerateParameters()
    stream: Literal[False] = False


router = APIRouter()


@router.post("/generate")
async def tgi_generate(body: GenerateRequest, request: Request):
    arrived, state = time.perf_counter(), request.app.state
    answer_log = AnswerLog(request.app, f"gen-{uuid.uuid4().hex}", "/generate", body.inputs, None)
    state.health.require_ready()
    llm = state.llm
    prompt_ids = await llm.encode(lambda tokenizer: tokenizer(body.inputs)["input_ids"])
    if not prompt_ids:  # e.g. only control characters, which the tokenizer drops
        raise ApiError(400, "'inputs' has no tokens once tokenized.", param="inputs")
    settings = body.parameters
    params = llm.sampling_params(
        len(prompt_ids),
        settings.max_new_tokens,
        "max_new_tokens",
        temperature=settings.temperature if settings.do_sample else 0,
        top_p=settings.top_p,
        top_k=settings.top_k,
        seed=settings.seed,
        stop=tuple(settings.stop),
    )
    generation = llm.generate(prompt_ids, params, answer_log, arrived=arrived)
    finished, text = await unless_disconnected(request, generation.text())
    if not finished:
        return Response(status_code=499)
    return JSONResponse({"generated_text": text}, headers={"X-Request-Id": answer_log.request_id})


# --8<-- [end:tgi]
