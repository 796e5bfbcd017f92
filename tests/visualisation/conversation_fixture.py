"""A request log with two conversations, one regenerated answer and one edited question, written
through the servers' own schema (snippets/backends/request_log.py). Shared by the conversation
graph and dashboard tests."""

import json
import sys
import time

from helpers import SNIPPETS, load_snippet

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
Q1 = "What is dynamic batching?"
A1 = "Grouping requests that arrive close together into one forward pass."
A1_AGAIN = "It runs several waiting requests through the model at once."
Q2 = "And continuous batching?"
A2 = "Sequences join and leave the batch between decoding steps."
Q2_EDITED = "How big should a batch be?"
A2_EDITED = "As big as the latency target allows."
Q3 = "Hello!"
A3 = "Hello! How can I help?"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# (id, messages sent, answer, rating): each request repeats the conversation so far.
REQUESTS = [
    ("chatcmpl-1", [SYSTEM, user(Q1)], A1, -1),
    ("chatcmpl-2", [SYSTEM, user(Q1), assistant(A1), user(Q2)], A2, 1),
    ("chatcmpl-3", [SYSTEM, user(Q1)], A1_AGAIN, 1),  # regenerated: same question, new answer
    ("chatcmpl-4", [SYSTEM, user(Q1), assistant(A1), user(Q2_EDITED)], A2_EDITED, None),  # edited
    ("chatcmpl-5", [SYSTEM, user(Q3)], A3, None),  # a second conversation
]


def request_log():
    """The request_log module, imported the way the servers import it (from its own folder)."""
    sys.path.insert(0, str(SNIPPETS / "backends"))
    return load_snippet("backends/request_log.py")


def add_request(
    conn,
    request_id: str,
    created: float,
    messages: list,
    answer: str,
    model_version: str = "v1",
    rating: int | None = None,
) -> None:
    """One answered chat request, rated 30 s later when `rating` is given."""
    conn.execute(
        request_log().INSERT,
        (
            request_id,
            created,
            "/v1/chat/completions",
            MODEL,
            model_version,
            None,
            json.dumps(messages),
            json.dumps(answer),
            850.0,
            200,
            None,  # client_id: chat clients do not choose the id
        ),
    )
    if rating is not None:
        conn.execute(
            "INSERT INTO feedback VALUES (?, ?, NULL, NULL, ?)", (request_id, rating, created + 30)
        )


def write_log(path, start: float | None = None, model_version: str = "v1") -> None:
    """Write REQUESTS (one a minute from `start`) and their ratings into a request log."""
    start = time.time() - 3600 if start is None else start
    conn = request_log().connect(path)
    with conn:
        for i, (request_id, messages, answer, rating) in enumerate(REQUESTS):
            add_request(conn, request_id, start + 60 * i, messages, answer, model_version, rating)
    conn.close()


def export(path) -> None:
    """The same requests as a JSON export."""
    path.write_text(
        json.dumps([{"id": i, "messages": m, "answer": a, "rating": r} for i, m, a, r in REQUESTS])
    )
