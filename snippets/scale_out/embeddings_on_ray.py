"""The embedding service on Ray Serve: the same model, route and error bodies as this guide's
embedding server, with Ray doing the batching, the replicas and the autoscaling.

    python snippets/scale_out/embeddings_on_ray.py --port 8000              # local, one command
    serve run snippets/scale_out/ray_config.yaml                           # the same app from a config
    serve deploy snippets/scale_out/ray_config.yaml --address http://HEAD:8265   # onto a Ray cluster

Locally the script starts Ray itself on 127.0.0.1 with a bounded number of CPUs, no dashboard, no
usage stats and a temporary folder of its own, and stops everything on SIGTERM or Ctrl-C. On a
cluster, `serve deploy` imports `app` from this file unchanged.

API keys and the rate limit come from the environment of the replicas, the same way for all
three commands: SERVEBOOK_API_KEYS (keys or 'sha256:<hex>' entries, separated by commas; none
means no key is asked for) and SERVEBOOK_RATE_LIMIT (requests a minute per key, in each replica).
"""

import argparse
import asyncio
import base64
import math
import os
import re
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

IMPORTED_FROM = [Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "backends"]
sys.path[:0] = [
    str(folder) for folder in IMPORTED_FROM
]  # this file, and the embedding server's pieces
from embedding_server import (
    EMBEDDING_DIM,
    MAX_BODY_BYTES,
    MODEL_DIR,
    MODEL_NAME,
    EmbeddingRequest,
    embedding_list,
    load_model,
    make_embed,
)
from embedding_server import tokenize as tokenize_in_thread
from server_kit import ApiError, Guard, install_error_handlers

KEYS_VARIABLE, RATE_LIMIT_VARIABLE = "SERVEBOOK_API_KEYS", "SERVEBOOK_RATE_LIMIT"


# --8<-- [start:guard]
def keys_from_environment() -> list[str]:
    """SERVEBOOK_API_KEYS split at commas or spaces; empty or unset: no key is asked for."""
    return [key for key in re.split(r"[\s,]+", os.environ.get(KEYS_VARIABLE, "")) if key]


def rate_limit_from_environment() -> float | None:
    """SERVEBOOK_RATE_LIMIT as requests a minute per key (in each replica); unset: no limit."""
    value = os.environ.get(RATE_LIMIT_VARIABLE, "").strip()
    if not value:
        return None
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not 0 < rate < math.inf:
        raise ValueError(f"{RATE_LIMIT_VARIABLE} must be requests a minute above 0, not {value!r}")
    return rate


def guard_from_environment(app) -> Guard:
    """The single-process server's Guard (keys, body cap, rate limit), set from the environment.

    Starlette calls this when it builds the middleware stack, in each replica as it starts, so the
    keys are read where the replica runs and never travel inside the pickled app."""
    return Guard(
        app,
        api_keys=keys_from_environment(),
        rate_limit_per_minute=rate_limit_from_environment(),
        max_body_bytes=MAX_BODY_BYTES,
    )


api = FastAPI(title="Embeddings on Ray Serve")
install_error_handlers(api)  # the same OpenAI-style error bodies as the single-process server
api.add_middleware(guard_from_environment)  # before @serve.ingress, which takes a copy of `api`
# --8<-- [end:guard]


# --8<-- [start:deployment]
@serve.deployment(
    # Ray Serve scales replicas between these bounds to keep about 16 requests in flight on each.
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 16,
        "upscale_delay_s": 5,
        "downscale_delay_s": 60,
    },
    max_ongoing_requests=64,  # requests one replica takes at once; the rest wait at the proxy
    max_queued_requests=256,  # beyond this Ray's proxy itself answers 503 (a plain-text body)
    backpressure_config={"retry_after_s": 1},  # ... with Retry-After, as the server's own 503
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=5,
)
@serve.ingress(api)
class Embedder:
    """One replica: the tokenizer in a thread of its own, and the model with Ray's batcher in
    front of the forward pass."""

    def __init__(self, threads: int = 1):
        self.tokenizer, model = load_model(Path(MODEL_DIR), threads)
        self.tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        self.embed = make_embed(model)

    async def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, computed in the one tokenizer thread as the embedding server does:
        a 1 MB body must not stall the event loop, and a fast tokenizer must not run in two
        threads at once. A text over the model's 256 tokens is a 400."""
        return await tokenize_in_thread(self, texts, "input")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def embed_batch(self, token_ids: list[list[int]]) -> list[np.ndarray]:
        """Ray calls this with the inputs that arrived together, one per call of `embed_one`."""
        return list(await asyncio.to_thread(self.embed, token_ids))

    async def embed_one(self, token_ids: list[int]) -> np.ndarray:
        return await self.embed_batch(token_ids)

    @api.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingRequest, request: Request):
        if body.model != MODEL_NAME:
            raise ApiError(
                404,
                f"Model '{body.model}' does not exist; this server has '{MODEL_NAME}'.",
                param="model",
                code="model_not_found",
            )
        token_ids = await self.tokenize(body.input)
        vectors = await asyncio.gather(*(self.embed_one(ids) for ids in token_ids))
        if body.encoding_format == "base64":  # the openai client's default: little-endian float32
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = [v.tolist() for v in vectors]
        replica = serve.get_replica_context().replica_id.unique_id
        n_tokens = sum(len(ids) for ids in token_ids)
        return JSONResponse(embedding_list(data, n_tokens), headers={"X-Replica": replica})

    @api.get("/health")
    def health(self):
        return {"status": "ready", "model": MODEL_NAME, "dimensions": EMBEDDING_DIM}

    def check_health(self):
        """Ray calls this every health_check_period_s; raising marks the replica unhealthy."""
        self.embed([[101, 102]])  # [CLS] [SEP]: the model still answers


app = Embedder.bind()  # what `serve run` and `serve deploy` import
# --8<-- [end:deployment]


def start_ray(cpus: int) -> None:
    """Ray on loopback only, with a bounded CPU count, no dashboard and no usage statistics."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        str(folder) for folder in IMPORTED_FROM
    )  # replicas import these
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=tempfile.mkdtemp(prefix="ray-"),
        log_to_driver=False,
    )


def deployment_options(args: argparse.Namespace) -> dict:
    """The command line's changes to the deployment's settings: a fixed replica count, limits."""
    options = {"num_replicas": args.replicas, "autoscaling_config": None} if args.replicas else {}
    if args.max_ongoing_requests is not None:
        options["max_ongoing_requests"] = args.max_ongoing_requests
    if args.max_queued_requests is not None:
        options["max_queued_requests"] = args.max_queued_requests
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address of Ray's HTTP proxy")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs Ray may use on this machine")
    parser.add_argument(
        "--replicas", type=int, help="a fixed number of replicas instead of autoscaling"
    )
    parser.add_argument(
        "--max-ongoing-requests", type=int, help="requests one replica runs at once (default 64)"
    )
    parser.add_argument(
        "--max-queued-requests",
        type=int,
        help="requests waiting at Ray's proxy before it answers 503 (default 256)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    args = parser.parse_args()
    optional = (args.replicas, args.max_ongoing_requests, args.max_queued_requests)
    if min(args.port, args.cpus, args.threads, *(n for n in optional if n is not None)) < 1:
        parser.error("--port, --cpus, --threads, --replicas and the request limits must be >= 1")
    import ray

    start_ray(args.cpus)
    stop = asyncio.Event()
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(
            Embedder.options(**deployment_options(args)).bind(args.threads),
            name="embeddings",
            route_prefix="/",
        )
        print(f"ready on http://127.0.0.1:{args.port}", flush=True)
        loop = asyncio.new_event_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.run_until_complete(stop.wait())
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
