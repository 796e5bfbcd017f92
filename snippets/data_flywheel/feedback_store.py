"""Log every answer, attach user feedback to it, and export the rated pairs as a training set.

The data flywheel in one SQLite file: the server logs each request and answer under an id, the
front end sends a thumbs up or down for that id, and an export turns rated answers into JSONL
rows (chosen and rejected) for the next fine-tune or evaluation set.

    python snippets/data_flywheel/feedback_store.py flywheel.sqlite dataset.jsonl
"""

import json
import sqlite3
import sys
import uuid
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL DEFAULT (datetime('now')),
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    interaction_id TEXT PRIMARY KEY REFERENCES interactions(id),
    rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    comment TEXT
);
"""


def open_store(path: Path) -> sqlite3.Connection:
    """Open (or create) the store; WAL lets the exporter read while the server writes."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(SCHEMA)
    return db


def log_interaction(db: sqlite3.Connection, model: str, prompt: str, answer: str) -> str:
    """Store one request and its answer; the returned id goes back to the client."""
    interaction_id = uuid.uuid4().hex
    with db:
        db.execute(
            "INSERT INTO interactions (id, model, prompt, answer) VALUES (?, ?, ?, ?)",
            (interaction_id, model, prompt, answer),
        )
    return interaction_id


def record_feedback(db: sqlite3.Connection, interaction_id: str, rating: int, comment: str = "") -> None:
    """Attach a rating (+1 or -1) to a logged answer; a second rating replaces the first."""
    if rating not in (-1, 1):
        raise ValueError(f"rating must be 1 or -1, got {rating!r}")
    known = db.execute("SELECT 1 FROM interactions WHERE id = ?", (interaction_id,)).fetchone()
    if known is None:
        raise KeyError(f"no interaction with id {interaction_id!r}")
    with db:
        db.execute(
            "INSERT INTO feedback (interaction_id, rating, comment) VALUES (?, ?, ?) "
            "ON CONFLICT(interaction_id) DO UPDATE SET rating = excluded.rating, comment = excluded.comment",
            (interaction_id, rating, comment),
        )


def export_dataset(db: sqlite3.Connection, out_path: Path) -> int:
    """Write one JSONL row per rated answer; unrated answers stay out. Returns the row count."""
    rows = db.execute(
        "SELECT i.prompt, i.answer, f.rating, i.model FROM interactions i "
        "JOIN feedback f ON f.interaction_id = i.id ORDER BY i.rowid"  # insertion order
    ).fetchall()
    with out_path.open("w", encoding="utf-8") as out:
        for prompt, answer, rating, model in rows:
            label = "chosen" if rating > 0 else "rejected"
            out.write(json.dumps({"prompt": prompt, label: answer, "model": model}) + "\n")
    return len(rows)


if __name__ == "__main__":
    store_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("flywheel.sqlite")
    dataset_path = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("dataset.jsonl")
    store = open_store(store_path)
    good = log_interaction(store, "smollm2-135m", "Capital of France?", "Paris.")
    bad = log_interaction(store, "smollm2-135m", "Capital of Peru?", "Paris.")
    log_interaction(store, "smollm2-135m", "Say hi.", "Hi!")  # never rated: not exported
    record_feedback(store, good, +1)
    record_feedback(store, bad, -1, "wrong city")
    print(f"exported {export_dataset(store, dataset_path)} rated rows to {dataset_path}")
