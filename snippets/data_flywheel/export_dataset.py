"""Export the reviewed requests of a request log as a redacted, de-duplicated JSONL data set.

A request is reviewed when a user rated it. Its label (or, for chat, the assistant's answer) is
the user's correction when there is one, otherwise the model's own output if the rating was
+1; a -1 without a correction says what is wrong but not what is right, so it is dropped.
Every text is redacted (redact.py) before anything else, and a chat message's `name` is replaced
by [NAME]; then duplicates (same text after lowercasing and collapsing whitespace) are dropped
keeping the newest, and each example goes to train or eval by a hash of that same normalised
text: copies of one text always land on the same side, so the eval score is never inflated by
an example the model trained on.

    python snippets/data_flywheel/export_dataset.py requests.sqlite --task classification --out ds/

writes ds/train.jsonl, ds/eval.jsonl and a data card (ds/data_card.json and ds/data_card.md):
counts per split and label, date range, model versions, redactions, rows dropped and why.
"""

import argparse
import hashlib
import json
import re
import sqlite3
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from redact import redact

# PRAGMA user_version of the request logs this exporter reads: the columns it reads are in each
# (version 2 only added the Open Inference Protocol client's id).
SCHEMA_VERSIONS = (1, 2)
TASKS = ("classification", "chat")
SPLIT_METHOD = "sha256 of the normalised, redacted text"
REVIEWED = """
    SELECT r.created_at, r.model_version, r.input, r.output, f.rating, f.correction
    FROM requests r JOIN feedback f ON f.request_id = r.id
    WHERE r.created_at >= ? AND r.created_at < ?
    ORDER BY r.created_at DESC, r.id DESC
"""


class ExportError(Exception):
    """A problem with the input that the user must fix; the CLI prints it as one line."""


@dataclass
class Example:
    """One exported row and what the data card needs to know about it."""

    row: dict  # the JSONL line: {"text", "label"} or {"messages"}
    key: str  # normalised redacted text: the de-duplication and split key
    created_at: float
    model_version: str
    redactions: Counter = field(default_factory=Counter)


def open_log(path: Path) -> sqlite3.Connection:
    """Open a request log read-only, after checking it is one, with the schema version read here."""
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as e:
        db.close()
        raise ExportError(f"{path}: not an SQLite database ({e})") from None
    problem = None
    if version not in SCHEMA_VERSIONS:
        problem = f"request log schema version {version}, expected one of {SCHEMA_VERSIONS}"
    elif not {"requests", "feedback"} <= tables:
        problem = "not a request log (no requests and feedback tables)"
    if problem:
        db.close()
        raise ExportError(f"{path}: {problem}")
    db.row_factory = sqlite3.Row
    return db


def normalise(text: str) -> str:
    """The form two texts must share to count as duplicates: lowercase, single spaces."""
    return re.sub(r"\s+", " ", text).strip().lower()


def split_of(key: str, eval_fraction: float) -> str:
    """train or eval, decided by a hash of the key: the same text always lands on the same side."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "eval" if h / 2**64 < eval_fraction else "train"


def _loads(value: str | None):
    """A JSON column's value, or None when it is empty or not JSON."""
    try:
        return json.loads(value) if value is not None else None
    except json.JSONDecodeError:
        return None


def reviewed_answer(rating: int, correction: str | None, output) -> str | None:
    """What the user says is right: their correction, else the output they rated +1."""
    if correction and correction.strip():
        return correction
    if rating == 1 and isinstance(output, str):
        return output
    return None


def _redacted(text: str, counts: Counter) -> str:
    text, found = redact(text)
    counts.update(found)
    return text


def redacted_message(message: dict, counts: Counter) -> dict:
    """A chat message with its content redacted and its `name` replaced whole by [NAME]: the field
    exists to say who wrote the message, and rules cannot recognise a name (see redact.py)."""
    message = {**message, "content": _redacted(message["content"], counts)}
    if message.get("name"):
        message["name"] = "[NAME]"
        counts["name"] += 1
    return message


def classification_example(record: sqlite3.Row) -> Example | str:
    """{"text", "label"} from a classify request (a string) or a one-text embeddings request."""
    text = _loads(record["input"])
    if isinstance(text, list) and len(text) == 1:
        text = text[0]
    if not isinstance(text, str):
        return "not a classification request (input is not one text)"
    label = reviewed_answer(record["rating"], record["correction"], _loads(record["output"]))
    if label is None:
        return "no label (rated -1 without a correction, or no output)"
    counts = Counter()
    text, label = _redacted(text, counts), _redacted(label.strip(), counts)
    return Example(
        {"text": text, "label": label},
        normalise(text),
        record["created_at"],
        record["model_version"],
        counts,
    )


def chat_example(record: sqlite3.Row) -> Example | str:
    """{"messages": [...the request's messages, the reviewed assistant answer]}."""
    messages = _loads(record["input"])
    if not (
        isinstance(messages, list)
        and messages
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
    ):
        return "not a chat request (input is not a list of text messages)"
    answer = reviewed_answer(record["rating"], record["correction"], _loads(record["output"]))
    if answer is None:
        return "no answer (rated -1 without a correction, or no output)"
    counts = Counter()
    messages = [redacted_message(m, counts) for m in messages]
    messages.append({"role": "assistant", "content": _redacted(answer, counts)})
    prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:-1])
    return Example(
        {"messages": messages},
        normalise(prompt),
        record["created_at"],
        record["model_version"],
        counts,
    )


def collect(db: sqlite3.Connection, task: str, since: float, until: float):
    """Reviewed requests in [since, until) as examples, newest first, one per normalised text.

    Returns (examples, dropped), dropped counting the rows left out per reason.
    """
    to_example = classification_example if task == "classification" else chat_example
    examples, seen, dropped = [], set(), Counter()
    for record in db.execute(REVIEWED, (since, until)):
        example = to_example(record)
        if isinstance(example, str):
            dropped[example] += 1
        elif example.key in seen:
            dropped["duplicate of a newer example"] += 1
        else:
            seen.add(example.key)
            examples.append(example)
    return examples, dropped


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def data_card(task, splits, dropped, source, since, until, eval_fraction) -> dict:
    """What is in the data set and where it came from, as plain JSON."""
    everything = [e for rows in splits.values() for e in rows]
    times = [e.created_at for e in everything]
    return {
        "task": task,
        "source": str(source),
        "filter": {"since": since, "until": until},
        "date_range": {"first": _iso(min(times)), "last": _iso(max(times))} if times else None,
        "examples": {name: len(rows) for name, rows in splits.items()},
        "labels": {
            name: dict(sorted(Counter(e.row["label"] for e in rows).items()))
            for name, rows in splits.items()
        }
        if task == "classification"
        else None,
        "model_versions": dict(sorted(Counter(e.model_version for e in everything).items())),
        "redactions": dict(sorted(sum((e.redactions for e in everything), Counter()).items())),
        "dropped": dict(dropped.most_common()),
        "split": {"method": SPLIT_METHOD, "eval_fraction": eval_fraction},
    }


def _listing(counts: dict, template: str = "{} {}") -> str:
    return ", ".join(template.format(k, v) for k, v in counts.items()) or "none"


def card_markdown(card: dict) -> str:
    """The data card as a Markdown page, for people."""
    dates, window = card["date_range"] or {"first": "-", "last": "-"}, card["filter"]
    limits = [
        f"{word} {window[key]}"
        for key, word in (("since", "from"), ("until", "before"))
        if window[key]
    ]
    lines = [
        f"# Data card: {card['task']} export",
        "",
        f"- Source: `{card['source']}`, requests from {dates['first']} to {dates['last']}",
        f"- Filter: {', '.join(limits) or 'none'}",
        f"- Examples: {_listing(card['examples'])}",
        f"- Model versions: {_listing(card['model_versions'], '{} ({})')}",
        f"- Redactions: {_listing(card['redactions'])}",
        f"- Split: {card['split']['method']}, eval fraction {card['split']['eval_fraction']}",
    ]
    if card["labels"] is not None:
        train, evals = card["labels"]["train"], card["labels"]["eval"]
        lines += ["", "| label | train | eval |", "|---|---:|---:|"]
        names = sorted({*train, *evals})
        lines += [f"| {n} | {train.get(n, 0)} | {evals.get(n, 0)} |" for n in names]
    lines += ["", "| rows dropped because | rows |", "|---|---:|"]
    lines += [f"| {reason} | {n} |" for reason, n in card["dropped"].items()] or ["| - | 0 |"]
    return "\n".join(lines) + "\n"


def parse_time(value: str | None, default: float) -> float:
    """An ISO date or date-time (UTC unless it says otherwise) as Unix seconds."""
    if value is None:
        return default
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ExportError(f"not an ISO date or time: {value!r}") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def export(
    log: Path,
    task: str,
    out: Path,
    since: str | None = None,
    until: str | None = None,
    eval_fraction: float = 0.2,
) -> dict:
    """Write train.jsonl, eval.jsonl, data_card.json and data_card.md to `out`; return the card."""
    start, end = parse_time(since, 0.0), parse_time(until, float("inf"))
    db = open_log(log)
    try:
        examples, dropped = collect(db, task, start, end)
    finally:
        db.close()
    splits = {"train": [], "eval": []}
    for example in examples:
        splits[split_of(example.key, eval_fraction)].append(example)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(e.row, ensure_ascii=False) + "\n" for e in reversed(rows))
    card = data_card(task, splits, dropped, log, since, until, eval_fraction)
    (out / "data_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / "data_card.md").write_text(card_markdown(card), encoding="utf-8")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the request log (SQLite)")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--out", type=Path, default=Path("dataset"), help="output folder")
    parser.add_argument("--since", help="only requests at or after this ISO date/time (UTC)")
    parser.add_argument("--until", help="only requests before this ISO date/time (UTC)")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="share for eval (0.2)")
    args = parser.parse_args()
    if not 0 < args.eval_fraction < 1:
        parser.error("--eval-fraction must be between 0 and 1")
    try:
        card = export(args.log, args.task, args.out, args.since, args.until, args.eval_fraction)
    except (ExportError, OSError) as e:  # bad input or an unwritable --out: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    n = card["examples"]
    print(
        f"exported {n['train']} train and {n['eval']} eval examples to {args.out}, "
        f"dropped {sum(card['dropped'].values())} rows (see {args.out / 'data_card.md'})"
    )


if __name__ == "__main__":
    main()
