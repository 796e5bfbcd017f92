"""scale_out/ray_config.yaml: the Ray Serve app run the way a reader deploys it, `serve run
config.yaml`, on a free port; Ctrl-C stops it with nothing left running. (A module of its own, so
that the other Ray tests' instance is gone before this one starts.)"""

import signal

import requests
import yaml
from helpers import REPO, SNIPPETS, free_port, wait_until
from test_embeddings_on_ray import MODEL, ray_processes, start, stop

CONFIG = SNIPPETS / "scale_out" / "ray_config.yaml"


def test_serve_run_with_the_config_file(tmp_path):
    """`serve run config.yaml`, the command a reader runs, on a free port; Ctrl-C stops it all."""
    config = yaml.safe_load(CONFIG.read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    serve_cli = (
        str(REPO / ".venv" / "bin" / "serve")
        if (REPO / ".venv" / "bin" / "serve").exists()
        else "serve"
    )
    proc = start([serve_cli, "run", str(tmp_path / "config.yaml")], f"http://127.0.0.1:{port}")
    try:
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/embeddings", json={"model": MODEL, "input": "hi"}
        )
        assert len(answer.json()["data"][0]["embedding"]) == 384
    finally:
        stop(proc, signal.SIGINT)
    assert wait_until(lambda: not ray_processes(), timeout=60), ray_processes()
