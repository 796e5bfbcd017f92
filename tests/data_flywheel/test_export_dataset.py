"""data_flywheel/export_dataset.py on real request-log files: labels, redaction, de-duplication,
a split that never leaks, the data card, and the CLI's one-line errors."""

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from helpers import SNIPPETS, load_snippet, run_snippet

export = load_snippet("data_flywheel/export_dataset.py")

SCHEMA = """
CREATE TABLE requests (
  id TEXT PRIMARY KEY, created_at REAL NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL,
  model_version TEXT NOT NULL, user TEXT, input TEXT NOT NULL, output TEXT, latency_ms REAL,
  status INTEGER NOT NULL);
CREATE TABLE feedback (
  request_id TEXT PRIMARY KEY REFERENCES requests(id) ON DELETE CASCADE,
  rating INTEGER NOT NULL CHECK (rating IN (1, -1)), correction TEXT, comment TEXT,
  created_at REAL NOT NULL);
CREATE INDEX requests_created ON requests(created_at);
CREATE INDEX requests_version_created ON requests(model_version, created_at);
CREATE INDEX requests_user ON requests(user);
CREATE INDEX feedback_created ON feedback(created_at);
PRAGMA user_version = 1;
"""
DAY = 86400.0
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


def make_log(path, rows):
    """A request log with the servers' schema; each row is a dict, `rating` adds feedback."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    for i, r in enumerate(rows):
        rid = r.get("id", f"req-{i:04d}")
        created = r.get("created_at", NOV_1 + i)
        db.execute(
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rid,
                created,
                r.get("route", "/v1/classify"),
                "minilm-intent",
                r.get("version", "v1"),
                None,
                json.dumps(r["input"]),
                json.dumps(r.get("output")),
                12.5,
                200,
            ),
        )
        if "rating" in r:
            db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
                (rid, r["rating"], r.get("correction"), None, created + 60),
            )
    db.commit()
    db.close()
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def exported(out):
    return read_jsonl(out / "train.jsonl") + read_jsonl(out / "eval.jsonl")


def test_classification_labels_follow_the_feedback(tmp_path):
    log = make_log(
        tmp_path / "log.sqlite",
        [
            {"input": "Where is my parcel?", "output": "delivery_status", "rating": 1},
            {
                "input": "I want my money back",
                "output": "return_item",
                "rating": -1,
                "correction": "billing_refund",
            },
            {
                "input": "cancel it all",
                "output": "change_plan",
                "rating": -1,
            },  # wrong, no fix: dropped
            {
                "input": "never rated",
                "output": "product_question",
            },  # not reviewed: not even counted
            {
                "input": ["my card expired"],
                "output": None,
                "rating": -1,
                "route": "/v1/embeddings",
                "correction": "update_payment_method",
            },  # an embeddings request labelled by feedback
            {"input": ["two", "texts"], "output": None, "rating": -1, "correction": "x"},
            {"input": ["rated but unlabelled"], "output": None, "rating": 1},
        ],
    )
    card = export.export(log, "classification", tmp_path / "ds", eval_fraction=0.5)
    assert sorted(exported(tmp_path / "ds"), key=lambda r: r["text"]) == [
        {"text": "I want my money back", "label": "billing_refund"},
        {"text": "Where is my parcel?", "label": "delivery_status"},
        {"text": "my card expired", "label": "update_payment_method"},
    ]
    assert card["dropped"] == {
        "no label (rated -1 without a correction, or no output)": 2,
        "not a classification request (input is not one text)": 1,
    }
    assert sum(card["examples"].values()) == 3


def spaced(text):
    return f"  {text.replace(' ', '   ')} "


def test_duplicates_keep_the_newest_and_never_straddle_the_split(tmp_path):
    texts = [f"Order {n} has not arrived yet, can you check" for n in range(40)]
    copies = [(str.upper, "oldest"), (spaced, "older"), (str, "newest")]
    rows = [
        {"input": copy(text), "output": label, "rating": 1, "created_at": NOV_1 + day * DAY + n}
        for day, (copy, label) in enumerate(copies)
        for n, text in enumerate(texts)
    ]
    rows.reverse()  # inserted newest first: created_at decides what is newest, not insertion order
    log = make_log(tmp_path / "log.sqlite", rows)
    card = export.export(log, "classification", tmp_path / "ds", eval_fraction=0.3)
    train, evals = read_jsonl(tmp_path / "ds/train.jsonl"), read_jsonl(tmp_path / "ds/eval.jsonl")
    assert sorted(r["text"] for r in train + evals) == sorted(texts)  # one copy, the newest
    assert {r["label"] for r in train + evals} == {"newest"}
    assert card["dropped"] == {"duplicate of a newer example": 80}
    assert train and evals

    # Exports of different weeks put every copy of a text on the same side as before.
    first = export.export(log, "classification", tmp_path / "w1", until="2026-11-02")
    later = export.export(log, "classification", tmp_path / "w2", since="2026-11-02")
    assert sum(first["examples"].values()) == sum(later["examples"].values()) == 40
    side = {}
    for out in ("w1", "w2"):
        for name in ("train", "eval"):
            for row in read_jsonl(tmp_path / out / f"{name}.jsonl"):
                assert side.setdefault(export.normalise(row["text"]), name) == name


def test_every_text_field_is_redacted_before_deduplication(tmp_path):
    log = make_log(
        tmp_path / "log.sqlite",
        [
            {
                "input": "refund to GB82 WEST 1234 5698 7654 32 please, mail a@example.com",
                "output": "billing_refund",
                "rating": 1,
            },
            {
                "input": "refund to GB82WEST12345698765432 please, mail b@example.org",  # redacted: same
                "output": "billing_refund",
                "rating": 1,
            },
            {"input": "charged on 4111 1111 1111 1111", "output": "billing_refund", "rating": 1},
        ],
    )
    card = export.export(log, "classification", tmp_path / "ds")
    texts = sorted(r["text"] for r in exported(tmp_path / "ds"))
    assert texts == ["charged on [CARD]", "refund to [IBAN] please, mail [EMAIL]"]
    assert card["redactions"] == {"card": 1, "email": 1, "iban": 1}  # of what was exported
    assert card["dropped"] == {"duplicate of a newer example": 1}


def test_chat_export_appends_the_reviewed_answer(tmp_path):
    system = {"role": "system", "content": "You are the support assistant."}
    log = make_log(
        tmp_path / "log.sqlite",
        [
            {
                "route": "/v1/chat/completions",
                "rating": 1,
                "output": "It ships in 2 days.",
                "input": [system, {"role": "user", "content": "When does order 88213 ship?"}],
            },
            {
                "route": "/v1/chat/completions",
                "rating": -1,
                "output": "I cannot help.",
                "correction": "Call us on 020 7946 0958.",
                "input": [{"role": "user", "content": "Phone number? I am jo@example.com"}],
            },
            {
                "route": "/v1/chat/completions",
                "rating": -1,
                "output": "Wrong.",
                "input": [{"role": "user", "content": "thumbs down, no fix"}],
            },
            {"input": "a classify request", "output": "x", "rating": 1},
        ],
    )
    card = export.export(log, "chat", tmp_path / "ds", eval_fraction=0.5)
    rows = sorted(exported(tmp_path / "ds"), key=lambda r: len(r["messages"]))
    assert rows == [
        {
            "messages": [
                {"role": "user", "content": "Phone number? I am [EMAIL]"},
                {"role": "assistant", "content": "Call us on [PHONE]."},
            ]
        },
        {
            "messages": [
                system,
                {"role": "user", "content": "When does order 88213 ship?"},
                {"role": "assistant", "content": "It ships in 2 days."},
            ]
        },
    ]
    assert card["labels"] is None and card["redactions"] == {"email": 1, "phone": 1}
    assert card["dropped"] == {
        "no answer (rated -1 without a correction, or no output)": 1,
        "not a chat request (input is not a list of text messages)": 1,
    }


def test_chat_message_names_are_redacted(tmp_path):
    """A message's `name` says who wrote it: rules cannot recognise a name, so it is replaced whole
    (an email or phone used as a name goes too), and the data card counts it."""
    asked = [
        {"role": "user", "name": "Maria Gonzalez", "content": "Where is my box?"},
        {"role": "assistant", "name": "support-bot", "content": "It left on Monday."},
        {"role": "user", "name": "jo@example.com", "content": "And the second one?"},
        {"role": "user", "content": "Hello?"},
    ]
    log = make_log(
        tmp_path / "log.sqlite",
        [{"route": "/v1/chat/completions", "rating": 1, "output": "Tomorrow.", "input": asked}],
    )
    card = export.export(log, "chat", tmp_path / "ds")
    [row] = exported(tmp_path / "ds")
    assert [m.get("name") for m in row["messages"]] == ["[NAME]", "[NAME]", "[NAME]", None, None]
    assert [m["content"] for m in row["messages"]] == [m["content"] for m in asked] + ["Tomorrow."]
    assert "Maria" not in json.dumps(row) and "jo@" not in json.dumps(row)
    assert card["redactions"] == {"name": 3}


def test_data_card_counts_dates_and_versions(tmp_path):
    rows = [
        {
            "input": f"text number {i}",
            "output": ["a", "b"][i % 2],
            "rating": 1,
            "version": ["v1", "v2"][i // 10],
            "created_at": NOV_1 + i * DAY,
        }
        for i in range(20)
    ]
    log = make_log(tmp_path / "log.sqlite", rows)
    card = export.export(
        log,
        "classification",
        tmp_path / "ds",
        since="2026-11-03",
        until="2026-11-18T00:00:00+00:00",
    )
    assert card["date_range"] == {"first": "2026-11-03T00:00:00Z", "last": "2026-11-17T00:00:00Z"}
    assert card["model_versions"] == {"v1": 8, "v2": 7}
    assert sum(card["examples"].values()) == 15
    assert {
        label: sum(card["labels"][s].get(label, 0) for s in ("train", "eval"))
        for label in ("a", "b")
    } == {"a": 8, "b": 7}
    assert json.loads((tmp_path / "ds/data_card.json").read_text()) == card
    markdown = (tmp_path / "ds/data_card.md").read_text()
    assert "| label | train | eval |" in markdown
    assert "- Model versions: v1 (8), v2 (7)" in markdown
    assert "- Filter: from 2026-11-03, before 2026-11-18T00:00:00+00:00" in markdown
    assert "| - | 0 |" in markdown  # nothing dropped


def test_cli_exports(tmp_path):
    log = make_log(
        tmp_path / "log.sqlite",
        [{"input": f"request {i}", "output": "delivery_status", "rating": 1} for i in range(10)],
    )
    out = run_snippet(
        "data_flywheel/export_dataset.py",
        str(log),
        "--task",
        "classification",
        "--out",
        str(tmp_path / "ds"),
    )
    card = json.loads((tmp_path / "ds/data_card.json").read_text())
    n = card["examples"]
    assert n["train"] + n["eval"] == 10
    assert out.startswith(f"exported {n['train']} train and {n['eval']} eval examples to ")


def cli_error(*args):
    script = SNIPPETS / "data_flywheel/export_dataset.py"
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("this is not a database, just some text\n" * 20)
    old = sqlite3.connect(tmp_path / "old.sqlite")
    old.execute("CREATE TABLE interactions (id TEXT)")
    old.close()
    newer = make_log(tmp_path / "newer.sqlite", [])
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 3")
    task = ["--task", "classification", "--out", str(tmp_path / "ds")]
    assert cli_error(str(tmp_path / "missing.sqlite"), *task) == (
        f"error: {tmp_path / 'missing.sqlite'}: no such file"
    )
    assert cli_error(str(tmp_path / "notes.txt"), *task).startswith(
        f"error: {tmp_path / 'notes.txt'}: not an SQLite database"
    )
    assert cli_error(str(tmp_path / "old.sqlite"), *task) == (
        f"error: {tmp_path / 'old.sqlite'}: request log schema version 0, expected one of (1, 2)"
    )
    assert cli_error(str(newer), *task).endswith(
        "request log schema version 3, expected one of (1, 2)"
    )
    fine = make_log(tmp_path / "fine.sqlite", [])
    assert cli_error(str(fine), *task, "--since", "last tuesday") == (
        "error: not an ISO date or time: 'last tuesday'"
    )
    (tmp_path / "taken").write_text("a file where the output folder should go")
    assert cli_error(str(fine), "--task", "chat", "--out", str(tmp_path / "taken")).startswith(
        "error: [Errno 17] File exists"
    )
    assert not (tmp_path / "ds").exists()  # nothing written on bad input
    assert not (tmp_path / "missing.sqlite").exists()  # and no empty database created


@pytest.mark.parametrize("key", ["order 1", "where is my refund", "x" * 500])
def test_split_is_deterministic(key):
    assert export.split_of(key, 0.2) == export.split_of(key, 0.2)
    assert export.split_of(key, 0.0) == "train" and export.split_of(key, 1.0) == "eval"
