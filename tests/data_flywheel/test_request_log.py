"""backends/request_log.py inside both servers: every answer is logged under the id the client
got, feedback attaches to it, a SIGKILL mid-burst loses no answered request and leaves a sound
file, and a user's rows can be deleted on request.
"""

import asyncio
import json
import signal
import socket
import sqlite3
import time

import httpx
import pytest
import requests
from helpers import load_snippet, run_snippet, serve, wait_until
from openai import OpenAI

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
LLM_MODEL = "SmolLM2-135M-Instruct"


def rows(db, sql: str, *args) -> list[tuple]:
    """Read the log through a connection of our own, as the dashboard and the export do."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_embedding_answers_are_logged_under_the_id_the_client_got(embedding_server):
    url = embedding_server.url
    response = requests.post(
        url + "/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": ["a", "b"], "user": "alice"},
        timeout=30,
    )
    request_id = response.json()["id"]
    assert response.headers["x-request-id"] == request_id
    assert (
        OpenAI(base_url=url + "/v1", api_key="x")
        .embeddings.create(model=EMBEDDING_MODEL, input="c")
        .data
    )
    [(route, model, user, logged_input, output, status, latency)] = rows(
        embedding_server.log_db,
        "SELECT route, model, user, input, output, status, latency_ms FROM requests WHERE id = ?",
        request_id,
    )
    assert (route, model, user, json.loads(logged_input), output, status) == (
        "/v1/embeddings",
        EMBEDDING_MODEL,
        "alice",
        ["a", "b"],
        None,
        200,
    )
    assert latency > 0


def test_chat_answers_are_logged_with_the_whole_conversation(llm_server):
    url = llm_server.url
    client = OpenAI(base_url=url + "/v1", api_key="x")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    reply = client.chat.completions.create(
        model=LLM_MODEL, messages=messages, max_tokens=8, temperature=0, user="bob"
    )
    stream = client.chat.completions.create(
        model=LLM_MODEL, messages=messages[:2], max_tokens=8, temperature=0, stream=True
    )
    streamed_id, streamed = None, ""
    for chunk in stream:
        streamed_id = chunk.id
        streamed += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    for request_id, asked, answer, user in (
        (reply.id, messages, reply.choices[0].message.content, "bob"),
        (streamed_id, messages[:2], streamed, None),
    ):
        [(logged_messages, output, logged_user, status)] = rows(
            llm_server.log_db,
            "SELECT input, output, user, status FROM requests WHERE id = ?",
            request_id,
        )
        assert (json.loads(logged_messages), json.loads(output), logged_user, status) == (
            asked,
            answer,
            user,
            200,
        )


def test_feedback_attaches_replaces_and_names_its_errors(llm_server):
    url = llm_server.url
    answer = requests.post(
        url + "/v1/chat/completions",
        timeout=60,
        json={
            "model": LLM_MODEL,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
        },
    )
    request_id = answer.headers["x-request-id"]
    assert (
        requests.post(
            url + "/v1/feedback", json={"id": request_id, "rating": -1, "comment": "too short"}
        ).status_code
        == 200
    )
    again = requests.post(
        url + "/v1/feedback", json={"id": request_id, "rating": 1, "correction": "Hello!"}
    )
    assert again.json() == {"id": request_id, "rating": 1, "status": "recorded"}
    assert rows(
        llm_server.log_db,
        "SELECT rating, correction, comment FROM feedback WHERE request_id = ?",
        request_id,
    ) == [(1, "Hello!", None)]  # the repeat replaced the first rating
    unknown = requests.post(url + "/v1/feedback", json={"id": "chatcmpl-nope", "rating": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "id"
    for bad in (
        {"id": request_id, "rating": 5},
        {"id": request_id, "rating": "up"},
        {"rating": 1},
        {"id": request_id, "rating": 1, "stars": 3},
    ):
        response = requests.post(url + "/v1/feedback", json=bad)
        assert (
            response.status_code == 400
            and response.json()["error"]["type"] == "invalid_request_error"
        ), bad


def test_without_a_log_there_is_no_feedback_route():
    with serve("backends/embedding_server.py") as srv:
        response = requests.post(srv.url + "/v1/feedback", json={})
        assert response.status_code == 404  # what the chat apps' probe sees: no thumbs


def raw_embedding_request(port: int, text: str) -> socket.socket:
    payload = json.dumps({"model": EMBEDDING_MODEL, "input": text}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    return sock


def read_whole_response(sock: socket.socket) -> dict | None:
    """The JSON body if the response arrived in full, else None (cut by the kill)."""
    with sock, sock.makefile("rb") as stream:
        try:
            if b" 200 " not in stream.readline():
                return None
            headers = dict(line.rstrip().split(b": ", 1) for line in iter(stream.readline, b"\r\n"))
            body = stream.read(int(headers[b"content-length"]))
            return json.loads(body)
        except (OSError, ValueError, KeyError):
            return None


def test_sigkill_mid_burst_loses_no_answered_request(tmp_path):
    """Kill -9 while 120 requests are in flight: the file passes integrity_check and holds a row
    for every response a client received in full."""
    log_db = tmp_path / "requests.db"
    with serve(
        "backends/embedding_server.py", "--log-db", str(log_db), "--max-batch-size", "8"
    ) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        socks = [
            raw_embedding_request(port, f"burst request {i} " + "word " * 50) for i in range(120)
        ]
        assert wait_until(
            lambda: log_db.exists() and rows(log_db, "SELECT COUNT(*) FROM requests")[0][0] >= 10,
            timeout=60,
            interval=0.01,
        )  # some are answered and logged, many are still queued
        srv.proc.send_signal(signal.SIGKILL)
        answered = [body["id"] for body in map(read_whole_response, socks) if body]
    assert 0 < len(answered) < 120  # the kill really landed mid-burst
    with sqlite3.connect(log_db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = {row[0] for row in conn.execute("SELECT id FROM requests")}
    assert set(answered) <= logged


def test_deleting_a_user_removes_their_requests_and_feedback(tmp_path):
    request_log = load_snippet("backends/request_log.py")
    log_db = tmp_path / "requests.db"

    async def fill():
        log = request_log.RequestLog(log_db)
        for i, user in enumerate(["alice", "bob", "alice"]):
            await log.record(
                request_log.Row(
                    f"r{i}",
                    time.time(),
                    "/v1/chat/completions",
                    "m",
                    "v1",
                    user,
                    "[]",
                    '"hi"',
                    1.0,
                    200,
                )
            )
        assert await log.feedback("r0", 1, None, None)
        assert not await log.feedback("nope", 1, None, None)
        log.close()

    asyncio.run(fill())
    out = run_snippet("backends/request_log.py", "delete-user", str(log_db), "alice")
    assert out.strip() == "deleted 2 requests of 'alice'"
    assert rows(log_db, "SELECT id FROM requests") == [("r1",)]
    assert rows(log_db, "SELECT COUNT(*) FROM feedback") == [
        (0,)
    ]  # alice's feedback went with her rows
    assert json.loads(run_snippet("backends/request_log.py", "stats", str(log_db)))["requests"] == [
        ["/v1/chat/completions", "v1", 1]
    ]


def test_retention_purge_and_cli_errors(tmp_path):
    request_log = load_snippet("backends/request_log.py")
    log_db = tmp_path / "requests.db"
    conn = request_log.connect(log_db)
    old, new = time.time() - 100 * 86400, time.time()
    for i, created in enumerate((old, new)):
        conn.execute(
            request_log.INSERT,
            (f"r{i}", created, "/v1/embeddings", "m", "v1", None, "[]", None, 1.0, 200),
        )
    assert request_log.purge_older_than(conn, 90) == 1
    assert [r[0] for r in conn.execute("SELECT id FROM requests")] == ["r1"]
    import subprocess
    import sys

    from helpers import SNIPPETS

    script = str(SNIPPETS / "backends" / "request_log.py")
    missing = subprocess.run(
        [sys.executable, script, "stats", str(tmp_path / "none.db")], capture_output=True, text=True
    )
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == f"error: no request log at {tmp_path / 'none.db'}"
    )
    (tmp_path / "text.db").write_text("not a database")
    garbage = subprocess.run(
        [sys.executable, script, "stats", str(tmp_path / "text.db")], capture_output=True, text=True
    )
    assert garbage.returncode == 2 and "is not a usable request log" in garbage.stderr
    assert "Traceback" not in missing.stderr + garbage.stderr


def test_schema_migrates_forward_and_refuses_the_future(tmp_path):
    request_log = load_snippet("backends/request_log.py")
    fresh = request_log.connect(tmp_path / "fresh.db")
    assert fresh.execute("PRAGMA user_version").fetchone() == (request_log.SCHEMA_VERSION,)
    assert fresh.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    indexes = {r[0] for r in fresh.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {
        "requests_created",
        "requests_version_created",
        "requests_user",
        "feedback_created",
    } <= indexes
    future = sqlite3.connect(tmp_path / "future.db")
    future.execute("PRAGMA user_version = 99")
    future.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        request_log.connect(tmp_path / "future.db")


def test_the_log_does_not_stall_concurrent_answers(embedding_server):
    """Fifty clients at once: every answer is logged, each under its own id."""
    url = embedding_server.url

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/v1/embeddings",
                        json={"model": EMBEDDING_MODEL, "input": f"concurrent {i}"},
                    )
                    for i in range(50)
                )
            )
        return [r.json()["id"] for r in responses]

    ids = asyncio.run(burst())
    assert len(set(ids)) == 50
    placeholders = ",".join("?" * len(ids))
    assert rows(
        embedding_server.log_db, f"SELECT COUNT(*) FROM requests WHERE id IN ({placeholders})", *ids
    ) == [(50,)]
