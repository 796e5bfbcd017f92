"""backends/open_inference.py, the embedding server's optional Open Inference Protocol part,
against a real server on a loopback port (tritonclient's own calls are in
test_embedding_server.py, beside the other clients).

What the page claims: bad protocol input gets a 400 that names the problem; the sizes in a binary
tensor are checked; and the part is optional: the server without it still serves.
"""

import ast
import importlib.util
import json
import struct
import sys

import pytest
import requests
from helpers import SNIPPETS, serve_app, wait_until

SERVER = "backends/embedding_server.py"
PART = "backends/open_inference.py"
MODEL = "all-MiniLM-L6-v2"


def binary_tensor(texts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def v2_request(url: str, header: dict, binary: bytes = b"") -> requests.Response:
    payload = json.dumps(header).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(payload)),
    }
    return requests.post(
        f"{url}/v2/models/{MODEL}/infer", data=payload + binary, headers=headers, timeout=30
    )


def text_input(shape: int, size) -> dict:
    return {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [shape],
                "parameters": {"binary_data_size": size},
            }
        ]
    }


V2_BAD = [
    ("no inputs", {}, 400, "Missing required parameter: 'inputs'"),
    (
        "wrong tensor name",
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
        400,
        "Invalid 'inputs[0].name'",
    ),
    (
        "shape mismatch",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]},
        400,
        "says 2 elements but 1",
    ),
    (
        "empty text",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [""]}]},
        400,
        "empty string",
    ),
]


@pytest.mark.parametrize("case, body, status, message", V2_BAD, ids=[c[0] for c in V2_BAD])
def test_open_inference_protocol_bad_input(embedding_server, case, body, status, message):
    response = requests.post(
        f"{embedding_server.url}/v2/models/{MODEL}/infer", json=body, timeout=30
    )
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_binary_tensor_sizes_are_checked(embedding_server):
    url = embedding_server.url
    good = binary_tensor([b"hello", b"world"])
    assert v2_request(url, text_input(2, len(good)), good).status_code == 200
    as_string = v2_request(url, text_input(2, str(len(good))), good)  # used to be a 500
    assert as_string.status_code == 400 and "binary_data_size" in as_string.json()["error"]["param"]
    truncated = good[:-2]  # the second element says 5 bytes, 3 follow
    cut = v2_request(url, text_input(2, len(truncated)), truncated)  # used to be accepted as "wor"
    assert (
        cut.status_code == 400
        and "says 5 bytes but only 3 remain" in cut.json()["error"]["message"]
    )
    short = v2_request(url, text_input(2, len(good) + 10), good)
    assert short.status_code == 400 and "bytes follow the JSON" in short.json()["error"]["message"]


def without_the_part(source: str) -> str:
    """The server's source as a reader leaves it after dropping the part: the statements that
    name open_inference (its import and the statement that includes its routes) deleted."""
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        statement = isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
        )
        if statement and "open_inference" in ast.get_source_segment(source, node):
            lines[node.lineno - 1 : node.end_lineno] = [""] * (node.end_lineno - node.lineno + 1)
    return "".join(lines)


def test_the_server_works_without_the_part(tmp_path, monkeypatch):
    """Delete the part, its import and the one statement that includes its routes: the rest is a
    working server (the OpenAI API, /health, /metrics), and no /v2 route is left."""
    for path in (SNIPPETS / "backends").glob("*.py"):
        relpath = f"backends/{path.name}"
        if relpath == PART:
            continue  # the file a reader deletes
        text = path.read_text()
        (tmp_path / path.name).write_text(without_the_part(text) if relpath == SERVER else text)
    assert "open_inference_router" not in (tmp_path / "embedding_server.py").read_text()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "open_inference", raising=False)
    spec = importlib.util.spec_from_file_location(
        "embedding_server_without_the_part", tmp_path / "embedding_server.py"
    )
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    assert "open_inference" not in sys.modules  # nothing imported it
    app = server.create_app(server.Settings())
    with serve_app(app) as url:
        assert wait_until(lambda: requests.get(url + "/health").status_code == 200, timeout=60)
        body = {"model": MODEL, "input": ["without the part"]}
        answer = requests.post(url + "/v1/embeddings", json=body, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 384
        assert "embedding_requests_total" in requests.get(url + "/metrics", timeout=10).text
        for path in ("/v2", "/v2/health/ready", f"/v2/models/{MODEL}"):
            assert requests.get(url + path, timeout=10).status_code == 404, path
