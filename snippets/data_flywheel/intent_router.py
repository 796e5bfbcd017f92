"""An intent router: it classifies support requests with a registered classifier head over the
embedding server, sends a share of traffic to a candidate version (a canary), logs which version
answered, and promotes or rolls back the candidate on request.

    python snippets/data_flywheel/intent_router.py --port 8300 --registry registry --stable v0 \\
        --embedding-url http://127.0.0.1:8000 --log-db router.db

Routes: POST /v1/classify {"text", "user"?} -> {"id", "intent", "confidence", "model_version"};
POST /v1/feedback (as on the model servers); GET /v1/versions; POST /v1/canary {"candidate",
"share"}; POST /v1/promote; POST /v1/rollback; GET /health. The canary and deployment routes
change what users get: give the router --api-key in production.
"""

import argparse
import base64
import contextlib
import json
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))  # the servers' shared kit
import registry
from request_log import Row
from server_kit import (
    ApiError,
    Guard,
    add_server_arguments,
    check_server_arguments,
    close_request_log,
    install_error_handlers,
    log_answer,
    open_request_log,
)

HEAD_NAME = "support-intent-head"


def not_blank(text: str) -> str:
    """Refuse text that is only whitespace: the embedding server has nothing in it to embed."""
    if not text.strip():
        raise ValueError("is only whitespace")
    return text


class ClassifyRequest(BaseModel):
    """The text must hold something to embed (the `\\S` pattern says so in the schema); its
    length in tokens is the embedding server's to check, and its refusal is passed on as a 400."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: Annotated[
        str,
        AfterValidator(not_blank),
        Field(min_length=1, max_length=4000, json_schema_extra={"pattern": r"\S"}),
    ]
    user: str | None = None


class CanaryRequest(BaseModel):
    """The candidate is a registry folder name: the pattern puts the rule in the OpenAPI schema,
    the validator answers a name that breaks it with a sentence rather than the regex."""

    model_config = ConfigDict(extra="forbid", strict=True)
    candidate: Annotated[
        str,
        Field(pattern=registry.VERSION_PATTERN, max_length=registry.VERSION_MAX_LENGTH),
    ]
    share: Annotated[float, Field(gt=0, le=1)] = 0.5

    @field_validator("candidate", mode="before")
    @classmethod
    def is_a_version_name(cls, value):
        return registry.check_version(value) if isinstance(value, str) else value


# --8<-- [start:deployment]
@dataclass(frozen=True)
class Head:
    """One registered version, loaded: its name and the classifier that answers for it."""

    version: str
    model: LogisticRegression


@dataclass(frozen=True)
class Serving:
    """Who serves: the stable head, and optionally a candidate taking `share` of traffic. Never
    changed in place: a promote or rollback builds a new one, so a reader sees one whole state."""

    stable: Head
    candidate: Head | None = None
    share: float = 0.0


class Deployment:
    """The current Serving, replaced whole by canary, promote and rollback (one at a time)."""

    def __init__(self, registry_dir: Path, stable: str):
        self.registry_dir = registry_dir
        self.serving = Serving(self.load(stable))
        self.changing = threading.Lock()  # the routes run in worker threads: one change at a time

    def load(self, version: str) -> Head:
        return Head(version, registry.load(self.registry_dir, version)[0])

    def pick(self, key: str) -> Head:
        """The head that answers a caller: a hash of `key` (the user, else the text) puts the same
        caller on the same side of the canary every time, as a user expects. The request keeps
        this head to the end, even if a promote or rollback stops it serving meanwhile."""
        serving = self.serving  # read once: the state this request started with
        if serving.candidate and zlib.crc32(key.encode()) % 10_000 < serving.share * 10_000:
            return serving.candidate
        return serving.stable

    def start_canary(self, candidate: str, share: float) -> None:
        """Serve `candidate` to `share` of callers beside the stable version (replacing any
        earlier candidate). The stable version itself is refused: promote would then retire it."""
        try:
            head = self.load(candidate)
        except FileNotFoundError as error:
            raise ApiError(404, str(error), param="candidate", code="not_found") from None
        except ValueError as error:  # not a version name (the request body checks it first)
            raise ApiError(400, str(error), param="candidate") from None
        with self.changing:  # checked under the lock: a promote may change the stable version
            if candidate == self.serving.stable.version:
                raise ApiError(
                    409,
                    f"'{candidate}' is already the stable version; a canary needs another version.",
                    param="candidate",
                    code="candidate_is_stable",
                )
            self.serving = Serving(self.serving.stable, head, share)

    def promote(self) -> None:
        """The candidate becomes stable; the old stable version stops serving."""
        with self.changing:
            self.serving = Serving(self.require_candidate())

    def rollback(self) -> None:
        """The candidate stops serving; the stable version takes all traffic again."""
        with self.changing:
            self.require_candidate()
            self.serving = Serving(self.serving.stable)

    def require_candidate(self) -> Head:
        if self.serving.candidate is None:
            raise ApiError(409, "No candidate is deployed.", code="no_candidate")
        return self.serving.candidate

    def describe(self) -> dict:
        serving = self.serving
        return {
            "stable": serving.stable.version,
            "candidate": serving.candidate.version if serving.candidate else None,
            "share": serving.share,
            "registered": registry.versions(self.registry_dir),
        }


# --8<-- [end:deployment]


async def embed(client: httpx.AsyncClient, texts: list[str]) -> np.ndarray:
    """Sentence embeddings from the embedding server (base64 float32, its fastest encoding).
    A 400 from it is about the client's text (too many tokens, say): the client gets that 400
    with the embedding server's reason. Anything else it answers is the router's 502."""
    response = await client.post(
        "/v1/embeddings",
        json={"model": "all-MiniLM-L6-v2", "input": texts, "encoding_format": "base64"},
    )
    if response.status_code == 400:
        error = response.json()["error"]
        reason = f"The embedding server refused the text: {error['message']}"
        raise ApiError(400, reason, param="text", code=error["code"])
    if response.status_code != 200:
        raise ApiError(
            502,
            f"The embedding server answered {response.status_code}: {response.text[:200]}",
            code="upstream_error",
        )
    return np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in response.json()["data"]]
    )


router = APIRouter()


@router.get("/health")
def health():
    return {"status": "ready"}


# --8<-- [start:classify]
@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request):
    arrived, state = time.time(), request.app.state
    head = state.deployment.pick(body.user or body.text)  # kept to the end: see Deployment.pick
    vector = await embed(state.embedder, [body.text])
    probabilities = head.model.predict_proba(vector)[0]
    best = int(np.argmax(probabilities))
    intent = str(head.model.classes_[best])
    request_id = f"cls-{uuid.uuid4().hex}"
    await log_answer(
        request.app,
        Row(
            request_id,
            arrived,
            "/v1/classify",
            HEAD_NAME,
            head.version,
            body.user,
            json.dumps(body.text),
            json.dumps(intent),
            (time.time() - arrived) * 1000,
            200,
        ),
    )
    return {
        "id": request_id,
        "intent": intent,
        "confidence": round(float(probabilities[best]), 4),
        "model_version": head.version,
    }


# --8<-- [end:classify]


@router.get("/v1/versions")
def versions(request: Request):
    return request.app.state.deployment.describe()


@router.post("/v1/canary")
def canary(body: CanaryRequest, request: Request):
    request.app.state.deployment.start_canary(body.candidate, body.share)
    return request.app.state.deployment.describe()


@router.post("/v1/promote")
def promote(request: Request):
    request.app.state.deployment.promote()
    return request.app.state.deployment.describe()


@router.post("/v1/rollback")
def rollback(request: Request):
    request.app.state.deployment.rollback()
    return request.app.state.deployment.describe()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    async with httpx.AsyncClient(base_url=app.state.embedding_url, timeout=60) as client:
        app.state.embedder = client
        yield
    close_request_log(app)


def create_app(
    deployment: Deployment, embedding_url: str, log_db: Path | None, api_keys: list[str]
) -> FastAPI:
    app = FastAPI(title="Intent router with canary deployments", lifespan=lifespan)
    app.state.deployment, app.state.embedding_url = deployment, embedding_url
    install_error_handlers(app)
    app.include_router(router)
    open_request_log(app, log_db, "NORMAL")
    app.add_middleware(Guard, api_keys=api_keys, rate_limit_per_minute=None, max_body_bytes=100_000)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Intent router with canary deployments")
    add_server_arguments(parser)
    parser.add_argument("--registry", type=Path, required=True, help="the registry folder")
    parser.add_argument("--stable", required=True, help="the version that serves at start")
    parser.add_argument(
        "--embedding-url", default="http://127.0.0.1:8000", help="the embedding server"
    )
    args = parser.parse_args()
    api_keys = check_server_arguments(parser, args)
    try:
        deployment = Deployment(args.registry, args.stable)
    except (FileNotFoundError, ValueError) as error:  # no such version, or not a version name
        parser.error(str(error))
    app = create_app(deployment, args.embedding_url, args.log_db, api_keys)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
