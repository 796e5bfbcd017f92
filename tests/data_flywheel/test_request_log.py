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
from helpers import load_snippet, run_snippet, serve, serve_app, wait_until
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
            (f"r{i}", created, "/v1/embeddings", "m", "v1", None, "[]", None, 1.0, 200, None),
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


# What the log promises under faults: a failed job fails alone, a full disk is an error for the
# callers it hits and no more, a dead writer is visible at once, and every request that reached
# the engine leaves exactly one row.


def record_row(request_log, request_id: str, user: str | None = None):
    return request_log.Row(request_id, time.time(), "/test", "m", "v", user, "[]", None, 1.0, 200)


def test_the_writer_survives_a_full_disk_and_a_failing_job(tmp_path):
    request_log = load_snippet("backends/request_log.py")
    log = request_log.RequestLog(tmp_path / "full.db")

    async def scenario():
        await log.record(record_row(request_log, "before"))
        pages = log.conn.execute("PRAGMA page_count").fetchone()[0]
        log.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
        big = record_row(request_log, "too-big")
        big.input = json.dumps(["x" * 200_000])
        with pytest.raises(sqlite3.Error, match="full"):
            await log.record(big)

        def broken(conn):
            raise ValueError("a job with a bug")

        with pytest.raises(ValueError, match="a job with a bug"):
            await log.run(broken)
        log.conn.execute("PRAGMA max_page_count = 1073741823")  # room again
        await log.record(record_row(request_log, "after"))

    asyncio.run(scenario())
    assert log.thread.is_alive() and log.failure is None
    log.close()
    assert rows(tmp_path / "full.db", "SELECT id FROM requests ORDER BY created_at") == [
        ("before",),
        ("after",),
    ]


def test_a_group_rolled_back_by_a_full_disk_fails_every_job_in_it(tmp_path):
    """SQLITE_FULL rolls back the whole transaction: jobs that ran before it in the same group
    are lost too, so their callers must hear so instead of being told 'committed'."""
    request_log = load_snippet("backends/request_log.py")
    log = request_log.RequestLog(tmp_path / "group.db")
    small = [record_row(request_log, f"small-{i}") for i in range(20)]
    big = record_row(request_log, "big")
    big.input = json.dumps(["x" * 500_000])

    async def scenario():
        await log.record(record_row(request_log, "first"))
        pages = log.conn.execute("PRAGMA page_count").fetchone()[0]
        log.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        return await asyncio.gather(
            *(log.record(row) for row in [*small, big]), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    log.close()
    logged = {r[0] for r in rows(tmp_path / "group.db", "SELECT id FROM requests")}
    for row, outcome in zip([*small, big], outcomes):
        assert (outcome is None) == (row.id in logged), (row.id, outcome)
    assert "big" not in logged


@pytest.mark.parametrize("server", ["backends/llm_server.py", "backends/embedding_server.py"])
def test_a_dead_writer_turns_health_failed_and_logged_routes_503(server, smollm2_dir, tmp_path):
    module = load_snippet(server)
    if "llm" in server:
        settings = module.Settings(model=smollm2_dir, dtype="float32", log_db=tmp_path / "l.db")
        route, body = "/v1/chat/completions", {"model": LLM_MODEL, "messages": HI, "max_tokens": 2}
    else:
        settings = module.Settings(log_db=tmp_path / "l.db")
        route, body = "/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "x"}
    app = module.create_app(settings)
    with serve_app(app) as url:
        assert wait_until(lambda: requests.get(url + "/health").status_code == 200, timeout=60)
        assert requests.post(url + route, json=body, timeout=60).status_code == 200

        def writer_bug(group):
            raise SystemExit("writer thread killed")  # not an Exception: it ends the thread

        app.state.request_log.commit = writer_bug
        started = time.monotonic()
        lost = requests.post(url + route, json=body, timeout=30)  # its row could not be written
        assert lost.status_code == 503 and time.monotonic() - started < 5, lost.text
        assert wait_until(lambda: requests.get(url + "/health").status_code == 503, timeout=1)
        assert "request log" in requests.get(url + "/health").json()["reason"]
        for path, payload in ((route, body), ("/v1/feedback", {"id": "x", "rating": 1})):
            started = time.monotonic()
            refused = requests.post(url + path, json=payload, timeout=30)
            assert refused.status_code == 503, refused.text
            assert time.monotonic() - started < 2  # at once, not after a hang


HI = [{"role": "user", "content": "Say hi."}]
LONG = {
    "model": LLM_MODEL,
    "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
    "max_tokens": 1500,
    "temperature": 1.0,
    "seed": 9,
}


class FailsAfter:
    """The real model until `countdown` forward passes have run; then each one raises."""

    def __init__(self, model, countdown: int):
        self.model, self.config, self.countdown = model, model.config, countdown

    def __call__(self, **kwargs):
        self.countdown -= 1
        if self.countdown < 0:
            raise RuntimeError("injected model failure")
        return self.model(**kwargs)


def logged(db, request_id: str) -> list[tuple]:
    return rows(db, "SELECT status, output FROM requests WHERE id = ?", request_id)


def test_every_request_that_reached_the_engine_leaves_exactly_one_row(smollm2_dir, tmp_path):
    """A hang-up (499), a deadline (504) and a model error (500), streamed and not: one row each,
    with its status and the text generated so far."""
    llm = load_snippet("backends/llm_server.py")
    db = tmp_path / "rows.db"
    app = llm.create_app(
        llm.Settings(model=smollm2_dir, dtype="float32", log_db=db, request_timeout=3)
    )
    with serve_app(app) as url:
        assert wait_until(lambda: requests.get(url + "/health").status_code == 200, timeout=60)
        chat = url + "/v1/chat/completions"
        # a stream the client hangs up on
        with requests.post(chat, json={**LONG, "stream": True}, stream=True, timeout=60) as r:
            hung_up = r.headers["x-request-id"]
            lines = r.iter_lines()
            for _ in range(5):
                next(lines)
        assert wait_until(lambda: logged(db, hung_up), timeout=5)
        # a non-streamed request the client hangs up on
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            payload = json.dumps(LONG).encode()
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            time.sleep(0.5)
        assert wait_until(lambda: rows(db, "SELECT COUNT(*) FROM requests")[0][0] == 2, timeout=5)
        # past the deadline, streamed and not
        late = requests.post(chat, json=LONG, timeout=60)
        assert late.status_code == 504
        with requests.post(chat, json={**LONG, "stream": True}, stream=True, timeout=60) as r:
            late_stream = r.headers["x-request-id"]
            assert "timeout" in [line for line in r.iter_lines(decode_unicode=True) if line][-2]
        # the model fails mid-answer (with a deadline it cannot reach first)
        app.state.settings.request_timeout = 120
        app.state.engine.model = FailsAfter(app.state.engine.model, countdown=2)
        with requests.post(chat, json={**LONG, "stream": True}, stream=True, timeout=60) as r:
            failed = r.headers["x-request-id"]
            assert "model_error" in [line for line in r.iter_lines(decode_unicode=True) if line][-2]
    statuses = [r[0] for r in rows(db, "SELECT status FROM requests ORDER BY created_at")]
    assert statuses == [499, 499, 504, 504, 500]
    for request_id, status in ((hung_up, 499), (late_stream, 504), (failed, 500)):
        [(logged_status, output)] = logged(db, request_id)
        assert logged_status == status and json.loads(output), request_id  # partial text kept


def test_a_streamed_answer_is_committed_before_its_finish_reason(smollm2_dir, tmp_path):
    """The openai SDK stops reading at finish_reason; a SIGKILL right then must not lose the row."""
    db = tmp_path / "kill.db"
    with serve("backends/llm_server.py", "--model", str(smollm2_dir), "--log-db", str(db)) as srv:
        body = {"model": LLM_MODEL, "messages": HI, "max_tokens": 16, "stream": True}
        with requests.post(
            srv.url + "/v1/chat/completions", json=body, stream=True, timeout=60
        ) as response:
            request_id = response.headers["x-request-id"]
            for line in response.iter_lines(decode_unicode=True):
                if line and '"finish_reason": "' in line:
                    srv.proc.send_signal(signal.SIGKILL)
                    break
    srv.proc.wait(timeout=30)
    assert [status for status, _ in logged(db, request_id)] == [200]
