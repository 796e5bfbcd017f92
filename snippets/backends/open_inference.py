"""The Open Inference Protocol v2 (KServe v2, Triton) for the embedding server: an optional part.

embedding_server.py includes these routes with one statement and answers them with its own
batcher, so NVIDIA's `tritonclient` and KServe's tooling work beside the `openai` client. The
server works without this file: delete it, its import and that statement, and the OpenAI API,
/health and /metrics stay as they are.

- GET /v2, /v2/health/live, /v2/health/ready: the server's metadata and probes;
- GET /v2/models/{name}, /v2/models/{name}/ready: the model's metadata and readiness;
- POST /v2/models/{name}/infer: a BYTES tensor 'text' of shape [N] in, an FP32 tensor
  'embedding' of shape [N, 384] out, in JSON or with the binary tensor extension (tritonclient's
  default: the JSON header, then raw tensor bytes; Inference-Header-Content-Length says where the
  JSON ends). The sizes in a binary tensor are checked: one that runs past the data is a 400.

Request ids: the response echoes the client's `id`, as the protocol asks. Clients reuse ids
(Triton's do), so the request log keys the row by the server's own id, sent as X-Request-Id,
with the client's id beside it.
"""

import json
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StrictInt, ValidationError
from server_kit import ApiError

# The server's way to embed: `await embed(request, texts, param, arrived, client_id=...)` checks
# readiness, tokenizes (naming `param` in errors), batches and logs; it returns an answer with
# `.id` (the server's id for the request) and `.vectors`, or None when the client hung up.
Embed = Callable[..., Awaitable]


# --8<-- [start:protocol]
class TensorParameters(BaseModel):
    binary_data_size: StrictInt | None = Field(None, ge=0)  # set when the tensor follows the JSON


class InputTensor(BaseModel):
    """One Open Inference Protocol input tensor; this model takes one: 'text', BYTES, shape [N]."""

    name: Literal["text"]
    datatype: Literal["BYTES"]
    shape: Annotated[list[StrictInt], Field(min_length=1, max_length=1)]
    data: list[str] | None = None
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


EXAMPLE = {
    "id": "42",
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Hello"]}],
}


def infer_body(text: dict) -> dict:
    """The infer route's request body for the OpenAPI schema. The route reads the raw body (JSON,
    or JSON then binary tensors), so it is declared by hand; `text` is the server's schema hint
    for each string, so that clients and fuzzers send text the model takes."""
    schema = InferRequest.model_json_schema()
    data = schema["$defs"]["InputTensor"]["properties"]["data"]  # a list of strings, or null
    data["anyOf"][0]["items"].update(text)
    content = {"schema": inlined(schema), "example": EXAMPLE}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


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


# --8<-- [end:protocol]


# --8<-- [start:routes]
probes = APIRouter()  # the routes that do not depend on the model


@probes.get("/v2")
def v2_server():
    return {
        "name": "servebook-embedding-server",
        "version": "1",
        "extensions": ["binary_tensor_data"],
    }


@probes.get("/v2/health/live")
def v2_live():
    return {}


@probes.get("/v2/health/ready")
def v2_ready(request: Request):
    request.app.state.health.require_ready()
    return {}


def open_inference_router(
    model: str, dimensions: int, max_inputs: int, text: dict, embed: Embed
) -> APIRouter:
    """The protocol's routes for one text-embedding model: `model` is its name, `dimensions` the
    length of its embeddings, `max_inputs` the most strings one request may send, `text` the
    schema hint for each string and `embed` the server's way to embed (see Embed)."""
    router = APIRouter()
    router.include_router(probes)
    ModelName = Annotated[str, PathParameter(json_schema_extra={"enum": [model]})]
    metadata = {
        "name": model,
        "versions": ["1"],
        "platform": "pytorch",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dimensions]}],
    }

    def check_model(name: str) -> None:
        if name != model:
            raise ApiError(
                404, f"Unknown model '{name}'; this server has '{model}'.", code="model_not_found"
            )

    @router.get("/v2/models/{name}")
    def v2_model(name: ModelName):
        check_model(name)
        return metadata

    @router.get("/v2/models/{name}/ready")
    def v2_model_ready(name: ModelName, request: Request):
        check_model(name)
        request.app.state.health.require_ready()
        return {}

    @router.post("/v2/models/{name}/infer", openapi_extra=infer_body(text))
    async def v2_infer(name: ModelName, request: Request):
        """Open Inference Protocol inference, in JSON or with the binary tensor extension (the JSON
        header, then raw tensor bytes; Inference-Header-Content-Length says where the JSON ends)."""
        check_model(name)
        arrived = time.time()
        header, binary = split_body(await request.body(), request)
        body = parse_infer_request(header)
        texts = decode_text_tensor(body.inputs[0], binary, max_inputs)
        answer = await embed(request, texts, "inputs[0].data", arrived, client_id=body.id)
        if answer is None:
            return Response(status_code=499)  # client closed the request; nobody reads this
        return infer_response(body, model, answer.vectors, answer.id)

    return router


# --8<-- [end:routes]


# --8<-- [start:codec]
def split_body(raw: bytes, request: Request) -> tuple[bytes, bytes]:
    """(the JSON header, the binary tensor data after it); without the header that says where
    the JSON ends, the whole body is JSON."""
    header_length = request.headers.get("inference-header-content-length")
    json_end = int(header_length) if header_length and header_length.isdigit() else len(raw)
    return raw[:json_end], raw[json_end:]


def parse_infer_request(raw: bytes) -> InferRequest:
    """Validate the JSON header with the same 400 messages as FastAPI's own body parsing."""
    try:
        return InferRequest.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        ) from None


def decode_text_tensor(tensor: InputTensor, binary: bytes, max_inputs: int) -> list[str]:
    """The 'text' tensor's strings, from its JSON `data` or from the binary data, checked: as
    many as its shape says, none blank, 1 to `max_inputs` of them."""
    size = tensor.parameters.binary_data_size if tensor.parameters else None
    if size is not None:
        texts = binary_strings(binary, size)
    elif tensor.data is not None:
        texts = tensor.data
    else:
        raise ApiError(
            400, "'inputs[0]' has neither 'data' nor binary data.", param="inputs[0].data"
        )
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
    if not texts or len(texts) > max_inputs:
        raise ApiError(400, f"'inputs[0]' must hold 1 to {max_inputs} strings.", param="inputs[0]")
    return texts


def binary_strings(binary: bytes, size: int) -> list[str]:
    """Length-prefixed strings, tritonclient's default: each element is a little-endian uint32
    length, then that many UTF-8 bytes."""
    if size != len(binary):
        raise ApiError(
            400,
            f"'binary_data_size' is {size} but {len(binary)} bytes follow the JSON.",
            param="inputs[0].parameters.binary_data_size",
        )
    texts, offset = [], 0
    while offset < size:
        element = binary_element(binary, offset, len(texts))
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(
                400, f"Binary element {len(texts)} is not valid UTF-8.", param="inputs[0]"
            ) from None
        offset += 4 + len(element)
    return texts


def binary_element(binary: bytes, offset: int, index: int) -> bytes:
    """The bytes of element `index`, whose length starts at `offset`; a length that runs past the
    data is a 400, never a short read."""
    if offset + 4 > len(binary):
        raise ApiError(
            400,
            f"Binary element {index} is truncated: no room for its length.",
            param="inputs[0]",
        )
    (length,) = struct.unpack_from("<I", binary, offset)
    if offset + 4 + length > len(binary):
        raise ApiError(
            400,
            f"Binary element {index} says {length} bytes but only "
            f"{len(binary) - offset - 4} remain.",
            param="inputs[0]",
        )
    return binary[offset + 4 : offset + 4 + length]


def infer_response(body: InferRequest, model: str, vectors: np.ndarray, request_id: str):
    """The 'embedding' tensor, in JSON or, when the client asks for binary output, as raw
    little-endian float32 after the JSON header. The client's id is echoed; the server's own
    (the request log's key) goes in X-Request-Id."""
    output = {"name": "embedding", "datatype": "FP32", "shape": list(vectors.shape)}
    result = {"model_name": model, "model_version": "1", "outputs": [output]}
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


def wants_binary_output(body: InferRequest) -> bool:
    if (body.parameters or {}).get("binary_data_output"):
        return True
    return any((output.parameters or {}).get("binary_data") for output in body.outputs or [])


# --8<-- [end:codec]
