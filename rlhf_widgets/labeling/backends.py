"""Where a `PreferenceStore` keeps its data: an SQLite file, or a PostgreSQL database (`postgres.py`).

The store's SQL is written once, with `?` placeholders, and runs on both; a backend supplies the
connection, transactions, the schema and its migrations, and the few things the two databases do
differently:

- `now()` is the time a row is written (PostgreSQL's own function; a Python function in SQLite);
- `rlhfw_clock()` is the time in seconds since the epoch that assignment leases are measured in
  (the server's clock in PostgreSQL, so annotators on machines with skewed clocks agree);
- `Transaction.lock` / `try_lock` serialise writers on one key (advisory locks in PostgreSQL; in SQLite
  every write transaction already holds the database's write lock).

Schema versions (table `schema_migrations`, one row per applied version):
  1  pairs, labels (the original SQLite layout; files written before versioning are version 1)
  2  labels.request_id (idempotent retries), assignments (team hand-out), settings, the `labelers` view
  3  pairs.round, labels.round: the round of the iterative loop a pair was made in / a label was given in
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Row = Mapping[str, Any]

SCHEMA_VERSION = 3
"""the schema version this code reads and writes"""
URL_SCHEMES = ("postgresql://", "postgres://")

ROUND_COLUMNS = (
    "ALTER TABLE pairs ADD COLUMN round INTEGER",
    "ALTER TABLE labels ADD COLUMN round INTEGER",
    "CREATE INDEX pairs_by_round ON pairs (round)",
)
"""schema version 3, the same SQL on both databases"""

_MIGRATIONS_TABLE = """
CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""

SQLITE_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "pairs and labels", (
        """CREATE TABLE IF NOT EXISTS pairs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            prompt TEXT NOT NULL,          -- JSON: a string or a list of chat messages
            response_a TEXT NOT NULL,
            response_b TEXT NOT NULL,
            metadata TEXT NOT NULL,        -- JSON object
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS labels (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            pair_id INTEGER NOT NULL REFERENCES pairs(id),
            annotator TEXT NOT NULL,
            choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
            note TEXT,
            shown_swapped INTEGER NOT NULL,
            latency_s REAL,
            created_at TEXT NOT NULL,
            undone INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS labels_by_pair ON labels (pair_id, annotator, undone)",
        "CREATE INDEX IF NOT EXISTS labels_by_annotator ON labels (annotator, undone, id)",
    )),
    (2, "team labeling: request ids, assignments, settings", (
        "ALTER TABLE labels ADD COLUMN request_id TEXT",
        "CREATE UNIQUE INDEX labels_by_request ON labels (request_id)",
        """CREATE TABLE assignments (
            pair_id INTEGER NOT NULL REFERENCES pairs(id),
            annotator TEXT NOT NULL,
            expires_at REAL NOT NULL,      -- seconds since the epoch
            PRIMARY KEY (pair_id, annotator)
        )""",
        "CREATE INDEX assignments_by_annotator ON assignments (annotator, expires_at)",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # who has a current label on which pair, without their choices (annotator roles read this)
        "CREATE VIEW labelers AS SELECT pair_id, annotator FROM labels WHERE NOT undone",
    )),
    (3, "rounds: the loop round of each pair and label", ROUND_COLUMNS),
)


class StoreUnavailable(ConnectionError):
    """The database cannot be reached: the server is down or restarting, or the network dropped.

    Reads and label writes (`record` with its `request_id`, `undo`, hand-outs) are safe to retry: a
    retry finds what an unacknowledged attempt wrote instead of writing it twice. Other writes
    (`add_pairs`, `copy_store`) say in the message when they may have been committed. Retry later.
    """


class Transaction(ABC):
    """One write transaction. `attempt` is 0, or 1 when the backend re-runs the work after the connection
    was lost mid-transaction (its first run may or may not have committed)."""

    attempt: int = 0

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; its rows (empty for statements that return none)."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    @abstractmethod
    def lock(self, key: int) -> None:
        """Wait for, and hold until the end of this transaction, the writers' lock on `key`."""

    @abstractmethod
    def try_lock(self, key: int) -> bool:
        """Take the lock on `key` for this transaction if nobody holds it; whether it was taken."""

    @abstractmethod
    def lazy_commit(self) -> None:
        """Let this transaction's commit return before it is on disk: for writes that promise nothing to
        anyone (leases), which a crash may lose. Labels never go through such a transaction."""


class Database(ABC):
    """A connection to one store's database, shared by threads (calls are serialised)."""

    dialect: str
    target: str
    """where the data is, for messages: a file path, or a URL without its password"""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one read statement and return its rows."""

    @abstractmethod
    def write(self, work: Callable[[Transaction], T], *, idempotent: bool) -> T:
        """Run `work(tx)` in one write transaction: committed when it returns, rolled back if it raises.

        `idempotent`: the work may run a second time if the connection is lost during the first run
        (a network database only); otherwise a lost connection raises `StoreUnavailable` at once.
        """

    @abstractmethod
    def timestamp(self, value: datetime) -> Any:
        """`value` as this database stores a timestamp column."""

    @abstractmethod
    def reset_ids(self, tx: Transaction) -> None:
        """After rows were inserted with explicit ids: make new rows' ids continue after the largest."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; the data stays."""


def is_postgres_url(target: object) -> bool:
    """Whether `target` names a PostgreSQL database (a `postgresql://` or `postgres://` URL)."""
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def utc_now_text() -> str:
    """The current UTC time as ISO 8601 text with microseconds (how SQLite stores timestamps)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def as_datetime(value: datetime | str) -> datetime:
    """A timestamp column's value as an aware datetime (SQLite returns text, PostgreSQL a datetime)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


class SQLiteDatabase(Database):
    """An SQLite file in WAL mode with `synchronous=FULL`: a committed write is on disk.

    One connection per store, serialised by a lock, in autocommit mode; write transactions are
    `BEGIN IMMEDIATE`, which takes the write lock up front, so a read-then-write transaction can never
    deadlock against another writer, and wait up to `busy_timeout_s` for another process's write.

    Args:
        path: the file (created if missing); its parent directory must exist.
        busy_timeout_s: how long a statement waits for another connection's lock (default 30 s).
    """

    dialect = "sqlite"

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.target = str(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.create_function("now", 0, utc_now_text)
        self._conn.create_function("rlhfw_clock", 0, time.time)
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise OSError(f"{path}: SQLite refused WAL mode (journal_mode={mode}); use a local file")
        self._conn.execute("PRAGMA synchronous = FULL")
        self.write(self._migrate, idempotent=False)

    def _migrate(self, tx: Transaction) -> None:
        """Bring the file to `SCHEMA_VERSION`: a new file gets every version, a version-1 file the rest."""
        exists = tx.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
        if not exists:
            tx.execute(_MIGRATIONS_TABLE)
        version = tx.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")[0]["v"]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.target} has schema version {version}, newer than this rlhf-widgets "
                               f"understands ({SCHEMA_VERSION}); upgrade rlhf-widgets")
        for number, description, statements in SQLITE_MIGRATIONS:
            if number > version:
                for statement in statements:
                    tx.execute(statement)
                tx.execute("INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                           (number, description, utc_now_text()))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def write(self, work: Callable[[Transaction], T], *, idempotent: bool) -> T:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(_SQLiteTransaction(self._conn))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def timestamp(self, value: datetime) -> str:
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")

    def reset_ids(self, tx: Transaction) -> None:
        """Nothing to do: AUTOINCREMENT continues after the largest id ever inserted."""

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _SQLiteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def lock(self, key: int) -> None:
        """Nothing to take: `BEGIN IMMEDIATE` holds the database's only write lock."""

    def try_lock(self, key: int) -> bool:
        return True

    def lazy_commit(self) -> None:
        """Nothing: SQLite's durability is set per connection (synchronous=FULL), and writes are cheap here."""
