"""scale_out/ray_config.yaml: the Ray Serve app run the way a reader deploys it, `serve run
config.yaml`, on a free port, once for the module; Ctrl-C stops it with nothing left running.
A burst within the configured queue is served in full; the API keys come from the environment
variable the config names. (A module of its own, so that the other Ray tests' instance is gone
before this one starts.)"""

import signal
from collections import Counter

import numpy as np
import pytest
import yaml
from helpers import REPO, SNIPPETS, free_port, wait_until
from test_embeddings_on_ray import MODEL, auth, many_at_once, post, ray_processes, start, stop

CONFIG = SNIPPETS / "scale_out" / "ray_config.yaml"
KEYS_VARIABLE, KEY = "SERVEBOOK_API_KEYS", "sk-config-test"
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
    proc = start([serve_cli, "run", str(path)], url, {KEYS_VARIABLE: KEY}, KEY)
    try:
        yield url
    finally:
        stop(proc, signal.SIGINT)
    assert wait_until(lambda: not ray_processes(), timeout=60), ray_processes()


def test_serve_run_with_the_config_file(config_app):
    answer = post(config_app, {"model": MODEL, "input": "hi"}, auth(KEY))
    assert len(answer.json()["data"][0]["embedding"]) == 384


def test_keys_come_from_the_variable_the_config_names(config_app):
    """The config names the variable and takes its value from where Ray runs (`${...}`), so the
    keys are never in the file, and `serve run` and `serve deploy` read them the same way."""
    env_vars = yaml.safe_load(CONFIG.read_text())["applications"][0]["runtime_env"]["env_vars"]
    assert env_vars[KEYS_VARIABLE] == "${" + KEYS_VARIABLE + "}"
    body = {"model": MODEL, "input": "hi"}
    assert post(config_app, body).status_code == 401
    assert post(config_app, body, auth("sk-wrong")).status_code == 401
    assert post(config_app, body, auth(KEY)).status_code == 200


def test_a_burst_within_the_queue_is_served(config_app, embed_one):
    """200 one-sentence requests at once fit in max_ongoing_requests plus max_queued_requests of
    one replica, so every one is answered, each with its own sentence's embedding."""
    deployment = deployment_config()
    assert len(BURST) <= deployment["max_ongoing_requests"] + deployment["max_queued_requests"]
    responses = many_at_once(config_app, BURST, auth(KEY))
    assert Counter(r.status_code for r in responses) == {200: len(BURST)}
    for text, response in zip(BURST, responses):
        embedding = response.json()["data"][0]["embedding"]
        assert float(np.dot(embedding, embed_one(text))) >= 0.9999, text
