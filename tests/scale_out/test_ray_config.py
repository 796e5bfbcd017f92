"""scale_out/ray_config.yaml: the Ray Serve app run the way a reader deploys it, `serve run
config.yaml`, on a free port, once for the module; Ctrl-C stops it with nothing left running.
A burst within the configured queue is served in full. (A module of its own, so that the other
Ray tests' instance is gone before this one starts.)"""

import signal
from collections import Counter

import numpy as np
import pytest
import requests
import yaml
from helpers import REPO, SNIPPETS, free_port, wait_until
from test_embeddings_on_ray import MODEL, many_at_once, ray_processes, start, stop

CONFIG = SNIPPETS / "scale_out" / "ray_config.yaml"
BURST = [f"Sentence number {i} asks the Ray app for its embedding." for i in range(200)]


def deployment_config() -> dict:
    """The Embedder deployment's settings as the config file gives them."""
    return yaml.safe_load(CONFIG.read_text())["applications"][0]["deployments"][0]


@pytest.fixture(scope="module")
def config_app(tmp_path_factory):
    """`serve run config.yaml`, the command a reader runs, on a free port; Ctrl-C stops it all."""
    config = yaml.safe_load(CONFIG.read_text())
    port = free_port()
    config["http_options"]["port"] = port
    path = tmp_path_factory.mktemp("ray-config") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = (
        str(REPO / ".venv" / "bin" / "serve")
        if (REPO / ".venv" / "bin" / "serve").exists()
        else "serve"
    )
    url = f"http://127.0.0.1:{port}"
    proc = start([serve_cli, "run", str(path)], url)
    try:
        yield url
    finally:
        stop(proc, signal.SIGINT)
    assert wait_until(lambda: not ray_processes(), timeout=60), ray_processes()


def test_serve_run_with_the_config_file(config_app):
    answer = requests.post(
        config_app + "/v1/embeddings", json={"model": MODEL, "input": "hi"}, timeout=30
    )
    assert len(answer.json()["data"][0]["embedding"]) == 384


def test_a_burst_within_the_queue_is_served(config_app, embed_one):
    """200 one-sentence requests at once fit in max_ongoing_requests plus max_queued_requests of
    one replica, so every one is answered, each with its own sentence's embedding."""
    deployment = deployment_config()
    assert len(BURST) <= deployment["max_ongoing_requests"] + deployment["max_queued_requests"]
    responses = many_at_once(config_app, BURST)
    assert Counter(r.status_code for r in responses) == {200: len(BURST)}
    for text, response in zip(BURST, responses):
        embedding = response.json()["data"][0]["embedding"]
        assert float(np.dot(embedding, embed_one(text))) >= 0.9999, text
