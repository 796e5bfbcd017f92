"""data_flywheel/feedback_store.py: a real SQLite file, feedback attached, rated rows exported."""

import json
import sqlite3

import pytest

from helpers import load_snippet, run_snippet


def test_cli_exports_only_rated_rows(tmp_path):
    out = run_snippet("data_flywheel/feedback_store.py", str(tmp_path / "f.sqlite"), str(tmp_path / "d.jsonl"))
    assert out.strip() == f"exported 2 rated rows to {tmp_path / 'd.jsonl'}"
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert rows[0] == {"prompt": "Capital of France?", "chosen": "Paris.", "model": "smollm2-135m"}
    assert rows[1]["rejected"] == "Paris."
    with sqlite3.connect(tmp_path / "f.sqlite") as db:  # nothing is lost: all three answers are logged
        assert db.execute("SELECT COUNT(*) FROM interactions").fetchone() == (3,)


def test_feedback_rules(tmp_path):
    store = load_snippet("data_flywheel/feedback_store.py")
    db = store.open_store(tmp_path / "f.sqlite")
    answer = store.log_interaction(db, "m", "q", "a")
    with pytest.raises(ValueError, match="rating must be 1 or -1"):
        store.record_feedback(db, answer, 5)
    with pytest.raises(KeyError, match="no interaction"):
        store.record_feedback(db, "missing-id", 1)
    store.record_feedback(db, answer, 1)
    store.record_feedback(db, answer, -1, "changed my mind")  # the later rating wins
    assert store.export_dataset(db, tmp_path / "d.jsonl") == 1
    assert json.loads((tmp_path / "d.jsonl").read_text()) == {"prompt": "q", "rejected": "a", "model": "m"}
