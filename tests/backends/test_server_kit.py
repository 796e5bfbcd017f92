"""backends/server_kit.py on its own: how validation errors read, the rate limiter's bucket, and
how keys are kept (hashed) and loaded."""

import hashlib

import pytest
from helpers import load_snippet

KIT = "backends/server_kit.py"


@pytest.fixture(scope="module")
def kit():
    return load_snippet(KIT)


@pytest.mark.parametrize(
    "error, message, param",
    [
        (
            {"type": "missing", "loc": ("body", "input"), "msg": "Field required"},
            "Missing required parameter: 'input'.",
            "input",
        ),
        (
            {
                "type": "extra_forbidden",
                "loc": ("body", "temprature"),
                "msg": "Extra inputs are not permitted",
            },
            "Unrecognized request argument supplied: temprature.",
            "temprature",
        ),
        (
            {
                "type": "string_type",
                "loc": ("body", "messages", 0, "content"),
                "msg": "Input should be a valid string",
            },
            "Invalid 'messages[0].content': Input should be a valid string.",
            "messages[0].content",
        ),
        (
            {
                "type": "value_error",
                "loc": ("body", "input", 1),
                "msg": "Value error, is blank",
                "ctx": {"error": ValueError("is an empty string")},
            },
            "Invalid 'input[1]': is an empty string.",
            "input[1]",
        ),
        (
            {"type": "missing", "loc": ("body",), "msg": "Field required"},
            "Request body is empty; send a JSON object.",
            None,
        ),
    ],
)
def test_validation_errors_name_the_field_as_the_client_wrote_it(kit, error, message, param):
    assert kit.describe_validation_error(error) == (message, param)


def test_the_rate_limiter_allows_a_burst_then_refills(kit, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(kit.time, "monotonic", lambda: now[0])
    limiter = kit.RateLimiter(per_minute=6)  # one token every 10 s, bursts of 6
    assert [limiter.retry_after("a") for _ in range(6)] == [0] * 6
    assert limiter.retry_after("a") == 10  # empty: the next token in 10 s
    assert limiter.retry_after("b") == 0  # another key has its own bucket
    now[0] += 10
    assert limiter.retry_after("a") == 0
    assert limiter.retry_after("a") > 0


def test_keys_are_kept_hashed_and_files_may_hold_hashes(kit, tmp_path):
    digest = hashlib.sha256(b"secret").digest()
    assert kit.key_hash("secret") == digest == kit.key_hash("sha256:" + digest.hex())
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\n\nplain-key\nsha256:" + digest.hex() + "\n")
    assert kit.load_api_keys(["flag-key"], keys) == [
        "flag-key",
        "plain-key",
        "sha256:" + digest.hex(),
    ]
    guard = kit.Guard(app=None, api_keys=["secret"], rate_limit_per_minute=None, max_body_bytes=10)
    assert guard.authenticate(b"Bearer secret") == digest.hex()[:12]  # an id to log, never the key
    assert guard.authenticate(b"Bearer wrong") is None and guard.authenticate(b"secret") is None
    assert (
        kit.Guard(
            app=None, api_keys=[], rate_limit_per_minute=None, max_body_bytes=10
        ).authenticate(b"")
        == ""
    )
