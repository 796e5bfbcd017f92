"""The request log: every answered request and its feedback in one SQLite file, for the data flywheel.

Both servers take `--log-db PATH`. One writer thread owns the only write connection and commits
in small groups; a handler awaits its own row's commit before the last byte of its response
leaves, so a client that received an answer can rely on it being logged, and the event loop
never waits on the disk. Readers (the dashboard, the export) open their own connections: in WAL
mode they never block the writer, nor the writer them.

    python snippets/backends/request_log.py stats flywheel.db
    python snippets/backends/request_log.py delete-user flywheel.db alice
    python snippets/backends/request_log.py purge flywheel.db --older-than-days 90
"""

import argparse
import asyncio
import contextlib
import json
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

# --8<-- [start:schema]
SCHEMA_VERSION = 2
# Each migration takes the database from version N-1 to N (PRAGMA user_version). Add, never edit.
MIGRATIONS = {
    1: """
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,           -- the response's id, also sent as X-Request-Id
        created_at REAL NOT NULL,      -- Unix seconds
        route TEXT NOT NULL,           -- /v1/embeddings, /v1/chat/completions, /generate, /v1/classify
        model TEXT NOT NULL,
        model_version TEXT NOT NULL,
        user TEXT,                     -- the caller's `user` field, when given
        input TEXT NOT NULL,           -- JSON: chat -> the messages array; embeddings -> list of texts
        output TEXT,                   -- JSON: chat -> the answer text; classify -> the label
        latency_ms REAL,
        status INTEGER NOT NULL
    );
    CREATE TABLE feedback (
        request_id TEXT PRIMARY KEY REFERENCES requests(id) ON DELETE CASCADE,
        rating INTEGER NOT NULL CHECK (rating IN (1, -1)),
        correction TEXT,
        comment TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX requests_created ON requests(created_at);                       -- time windows
    CREATE INDEX requests_version_created ON requests(model_version, created_at); -- per version
    CREATE INDEX requests_user ON requests(user);                                -- deletion on request
    CREATE INDEX feedback_created ON feedback(created_at);
    """,
    # The Open Inference Protocol's request id is the client's, and clients reuse it (Triton's
    # do): the key stays the server's own id, and the client's id gets a column of its own.
    2: """
    ALTER TABLE requests ADD COLUMN client_id TEXT;
    """,
}
# --8<-- [end:schema]


def connect(path: Path | str, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open (creating or migrating) a request log. WAL lets readers run beside the one writer;
    synchronous=NORMAL keeps every commit through a process crash (SIGKILL) and can lose the last
    ones only on a power cut; FULL survives that too at the cost of an fsync per commit."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this file has and the database lacks, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"request log has schema version {version}; this code knows up to {SCHEMA_VERSION}"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN; {MIGRATIONS[target]}; PRAGMA user_version = {target}; COMMIT;")


@dataclass
class Row:
    """One logged request. `input` and `output` are JSON texts."""

    id: str
    created_at: float
    route: str
    model: str
    model_version: str
    user: str | None
    input: str
    output: str | None
    latency_ms: float | None
    status: int
    client_id: str | None = None  # the id the client sent, where the protocol lets it choose


COLUMNS = [column.name for column in fields(Row)]
INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class WriterStopped(RuntimeError):
    """The writer thread has ended: nothing more can be logged until the server restarts."""


# --8<-- [start:writer]
class RequestLog:
    """The single writer. Jobs (functions of the connection) queue up; the writer thread runs
    the waiting ones in one transaction, commits, then resolves each job's future.

    A job that fails (a full disk, a bug) fails alone and its caller hears why; the writer goes
    on. If the thread itself ever ends, `on_stop` is told at once (the servers turn /health to
    failed) and every waiting and later caller gets WriterStopped instead of waiting forever.
    """

    def __init__(
        self,
        path: Path | str,
        synchronous: str = "NORMAL",
        max_group: int = 256,
        on_stop: Callable[[BaseException], None] | None = None,
    ):
        self.conn = connect(path, synchronous)
        self.jobs: queue.Queue = queue.Queue()
        self.max_group, self.on_stop = max_group, on_stop
        self.failure: BaseException | None = None
        self.lock = threading.Lock()  # a job is queued only while the writer is alive
        self.thread = threading.Thread(target=self.write_forever, name="request-log", daemon=True)
        self.thread.start()

    async def run(self, job: Callable[[sqlite3.Connection], object]):
        """Run `job` in the writer thread; return its result once its transaction has committed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.put((job, loop, future))
        return await future

    def send(self, job: Callable[[sqlite3.Connection], object]) -> None:
        """Queue `job` without waiting for its commit: for a caller that may already be gone."""
        self.put((job, None, None))

    def put(self, entry: tuple) -> None:
        with self.lock:
            if self.failure is not None:
                raise WriterStopped(f"the request log's writer has stopped: {self.failure}")
            self.jobs.put(entry)

    async def record(self, row: Row) -> None:
        await self.run(lambda conn: conn.execute(INSERT, astuple(row)))

    def record_later(self, row: Row) -> None:
        self.send(lambda conn: conn.execute(INSERT, astuple(row)))

    async def feedback(
        self, request_id: str, rating: int, correction: str | None, comment: str | None
    ) -> bool:
        """Attach feedback to a logged request (a repeat replaces the earlier one). False if the
        id is unknown."""

        def upsert(conn: sqlite3.Connection) -> bool:
            if (
                conn.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone()
                is None
            ):
                return False
            conn.execute(
                "INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?, ?)",
                (request_id, rating, correction, comment, time.time()),
            )
            return True

        return await self.run(upsert)

    def write_forever(self) -> None:
        """Commit group after group until close(). Should the thread die, say so and fail every
        waiting caller: a silent dead writer would leave each logged answer waiting forever."""
        group: list = []
        try:
            while (group := self.next_group()) is not None:
                try:
                    self.commit(group)
                except Exception as error:  # noqa: BLE001 -- the group fails; the writer goes on
                    self.rollback()
                    resolve(group, [(False, error)] * len(group))
        except BaseException as error:  # noqa: BLE001 -- reported, then the thread ends
            with self.lock:
                self.failure = error
            stopped = WriterStopped(f"the request log's writer has stopped: {error}")
            resolve(group + self.drain(), None, stopped)
            if self.on_stop:
                self.on_stop(error)

    def next_group(self) -> list | None:
        """The next job and whatever queued meanwhile (they share one commit); None: stop."""
        if (first := self.jobs.get()) is None:
            return None
        group = [first]
        while len(group) < self.max_group:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # finish this group, then stop
                break
            group.append(job)
        return group

    def commit(self, group: list) -> None:
        """Run the group's jobs in one transaction. A job that fails, fails alone, unless SQLite
        rolled the whole transaction back (a full disk does): then the jobs before it are lost
        too, and their callers are told so rather than that they were committed."""
        outcomes: list[tuple[bool, object]] = []
        self.conn.execute("BEGIN")
        for job, _, _ in group:
            try:
                outcomes.append((True, job(self.conn)))
            except Exception as error:  # noqa: BLE001 -- this caller gets the error
                outcomes.append((False, error))
                if not self.conn.in_transaction:
                    outcomes = [(False, error) if ok else (ok, value) for ok, value in outcomes]
                    self.conn.execute("BEGIN")
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as error:
            self.rollback()
            outcomes = [(False, error)] * len(group)
        resolve(group, outcomes)

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def drain(self) -> list:
        """Take every job still queued (the writer has died: they will never run)."""
        drained = []
        while True:
            try:
                entry = self.jobs.get_nowait()
            except queue.Empty:
                return drained
            if entry is not None:
                drained.append(entry)

    def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        with self.lock:
            if self.failure is None:
                self.jobs.put(None)
        self.thread.join()
        self.conn.close()


def resolve(group: list, outcomes: list | None, error: BaseException | None = None) -> None:
    """Hand each waiting caller its outcome (or `error`), on the caller's own event loop."""
    for index, (_, loop, future) in enumerate(group):
        if loop is None:  # queued with send(): nobody waits
            continue
        ok, value = (False, error) if outcomes is None else outcomes[index]
        with contextlib.suppress(RuntimeError):  # that event loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, future, ok, value)


# --8<-- [end:writer]


def settle(future: asyncio.Future, ok: bool, value) -> None:
    if not future.done():  # the handler may have been cancelled meanwhile
        future.set_result(value) if ok else future.set_exception(value)


# --8<-- [start:retention]
def delete_user(conn: sqlite3.Connection, user: str) -> int:
    """Erase everything logged for one caller (a deletion request); feedback goes with it."""
    with conn:
        return conn.execute("DELETE FROM requests WHERE user = ?", (user,)).rowcount


def purge_older_than(conn: sqlite3.Connection, days: float) -> int:
    """Retention: drop requests (and their feedback) older than `days`."""
    with conn:
        return conn.execute(
            "DELETE FROM requests WHERE created_at < ?", (time.time() - days * 86400,)
        ).rowcount


# --8<-- [end:retention]


def stats(conn: sqlite3.Connection) -> dict:
    rows = conn.execute(
        "SELECT route, model_version, COUNT(*) FROM requests GROUP BY 1, 2 ORDER BY 1, 2"
    )
    rated = conn.execute("SELECT COUNT(*), COALESCE(SUM(rating = 1), 0) FROM feedback").fetchone()
    return {"requests": [list(r) for r in rows], "feedback": rated[0], "thumbs_up": rated[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Inspect and prune a request log")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("stats", "counts per route and model version"),
        ("delete-user", "erase one caller's requests and feedback"),
        ("purge", "drop requests older than a number of days"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("db", type=Path)
    commands.choices["delete-user"].add_argument("user")
    commands.choices["purge"].add_argument("--older-than-days", type=float, required=True)
    args = parser.parse_args()
    if not args.db.is_file():
        parser.exit(2, f"error: no request log at {args.db}\n")
    try:
        conn = connect(args.db)
    except (sqlite3.Error, RuntimeError) as error:
        parser.exit(2, f"error: {args.db} is not a usable request log: {error}\n")
    if args.command == "stats":
        print(json.dumps(stats(conn)))
    elif args.command == "delete-user":
        print(f"deleted {delete_user(conn, args.user)} requests of {args.user!r}")
    else:
        print(f"deleted {purge_older_than(conn, args.older_than_days)} requests")


if __name__ == "__main__":
    sys.exit(main())
