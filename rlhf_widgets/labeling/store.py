"""PreferenceStore: preference pairs and their labels in one SQLite file (no widget code).

Durability and sharing:
- WAL journal with ``synchronous=FULL``: a label is on disk when `record` returns, so a killed kernel
  loses nothing that was acknowledged;
- a busy timeout: two kernels (or a labeling notebook and a script) writing at once wait for each other
  instead of failing; every write is one short transaction;
- one connection per store, serialised by a lock, so a store may be shared between threads (the
  labeling session prefetches on a worker thread).

Labels are append-only. The *current* label of a (pair, annotator) is its latest label that is not
undone; `undo` marks a label undone rather than deleting it, so the full history stays inspectable.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, overload

import datasets
import pandas as pd

from rlhf_widgets.data import as_messages

Choice = Literal["a", "b", "tie", "skip"]
CHOICES: tuple[str, ...] = ("a", "b", "tie", "skip")
Prompt = str | list[dict[str, str]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt TEXT NOT NULL,          -- JSON: a string or a list of chat messages
    response_a TEXT NOT NULL,
    response_b TEXT NOT NULL,
    metadata TEXT NOT NULL,        -- JSON object
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    annotator TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
    note TEXT,
    shown_swapped INTEGER NOT NULL,
    latency_s REAL,
    created_at TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS labels_by_pair ON labels (pair_id, annotator, undone);
CREATE INDEX IF NOT EXISTS labels_by_annotator ON labels (annotator, undone, id);
"""
_FIELDS = ("prompt", "response_a", "response_b", "metadata")
# ids of the current label of every (pair, annotator): its latest label that is not undone
_CURRENT_IDS = "SELECT MAX(id) FROM labels WHERE undone = 0 GROUP BY pair_id, annotator"
_MESSAGE_FEATURES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
_DATASET_FEATURES = datasets.Features(
    {"prompt": _MESSAGE_FEATURES, "chosen": _MESSAGE_FEATURES, "rejected": _MESSAGE_FEATURES}
)


@dataclass(frozen=True)
class Pair:
    """A prompt with two candidate responses; `metadata` says e.g. which model/settings made each side."""

    id: int
    prompt: Prompt
    response_a: str
    response_b: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Label:
    """One labeling act. `choice` is un-randomised ("a" is always `Pair.response_a`, whatever side it was
    shown on); `shown_swapped` records that response_a was displayed on the right."""

    id: int
    pair_id: int
    annotator: str
    choice: Choice
    note: str | None
    shown_swapped: bool
    latency_s: float | None
    created_at: datetime
    undone: bool


@dataclass(frozen=True)
class ExportCounts:
    """What `PreferenceStore.to_dataset` kept and left out, in pairs."""

    kept: int
    """pairs exported as (chosen, rejected)"""
    ties: int
    """pairs whose decision was a tie"""
    skips: int
    """pairs only skipped (no a / b / tie vote)"""
    conflicts: int
    """pairs where the annotators' votes had no strict majority (only when pooling annotators)"""
    unlabeled: int
    """pairs without any current label from the annotator(s) considered"""


class PreferenceStore:
    """Preference pairs and append-only labels in an SQLite file (created if missing).

    Args:
        path: the SQLite file; its parent directory must exist.
        busy_timeout_s: how long a write waits for another process's write lock (default 30 s).
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        # isolation_level=None: autocommit, transactions are explicit (BEGIN IMMEDIATE takes the write
        # lock up front, so a read-then-write transaction can never deadlock against another writer)
        # timeout: SQLite's busy timeout, how long a statement waits for another connection's lock
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise OSError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode}); use a local file")
        self._conn.execute("PRAGMA synchronous = FULL")
        with self._write() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)

    # ------------------------------------------------------------------ connection plumbing
    def _write(self) -> _Transaction:
        return _Transaction(self._conn, self._lock)

    def _query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection; the file stays."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PreferenceStore({str(self.path)!r})"

    # ------------------------------------------------------------------ pairs
    def add_pairs(self, rows: Iterable[Mapping[str, Any]]) -> list[int]:
        """Insert pairs and return their ids, in order; all rows or none (one transaction).

        Each row has `prompt` (str or a list of {"role", "content"} messages), `response_a`,
        `response_b` (non-empty str) and an optional JSON-serialisable `metadata` dict. A missing,
        empty or mistyped field (or an unknown key) raises ValueError naming the row index and field.
        """
        records = [_validated_row(i, row) for i, row in enumerate(rows)]
        now = _now()
        with self._write() as conn:
            return [
                conn.execute(
                    "INSERT INTO pairs (prompt, response_a, response_b, metadata, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (*record, now),
                ).lastrowid
                for record in records
            ]

    def get_pair(self, pair_id: int) -> Pair:
        """The pair with this id; KeyError if there is none."""
        rows = self._query("SELECT * FROM pairs WHERE id = ?", (pair_id,))
        if not rows:
            raise KeyError(f"no pair with id {pair_id!r} in {self.path}")
        return _pair(rows[0])

    def pairs(self) -> list[Pair]:
        """All pairs in insertion order."""
        return [_pair(row) for row in self._query("SELECT * FROM pairs ORDER BY id")]

    def __len__(self) -> int:
        return self._query("SELECT COUNT(*) FROM pairs")[0][0]

    def next_pair(
        self, annotator: str, only_unlabeled_by_anyone: bool = False, exclude: Collection[int] = ()
    ) -> Pair | None:
        """The first pair (insertion order) without a current label from `annotator`, or None when done.

        Args:
            annotator: whose labels count.
            only_unlabeled_by_anyone: skip pairs any annotator has labeled (default False).
            exclude: pair ids to pass over (e.g. the pair on screen, when prefetching the one after it).
        """
        who = "" if only_unlabeled_by_anyone else "AND l.annotator = ?"
        params: list[Any] = [] if only_unlabeled_by_anyone else [annotator]
        params += list(exclude)
        rows = self._query(
            f"SELECT p.* FROM pairs p WHERE NOT EXISTS "
            f"(SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.undone = 0 {who}) "
            f"AND p.id NOT IN ({', '.join('?' * len(exclude))}) ORDER BY p.id LIMIT 1",
            params,
        )
        return _pair(rows[0]) if rows else None

    # ------------------------------------------------------------------ labels
    def record(
        self,
        pair_id: int,
        choice: Choice,
        annotator: str = "human",
        note: str | None = None,
        shown_swapped: bool = False,
        latency_s: float | None = None,
    ) -> Label:
        """Append a label and return it; it is durable on disk when this returns.

        Args:
            pair_id: an existing pair (KeyError otherwise).
            choice: "a", "b", "tie" or "skip" (ValueError otherwise), un-randomised.
            annotator: who labeled (default "human"); a non-empty string.
            note: free-text remark (default None).
            shown_swapped: whether response_a was displayed on the right (default False).
            latency_s: seconds from the pair being shown to this label (default None: unknown).
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        if not isinstance(annotator, str) or not annotator.strip():
            raise ValueError(f"annotator must be a non-empty string, got {annotator!r}")
        if not self._query("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)):
            raise KeyError(f"no pair with id {pair_id!r} in {self.path}")
        with self._write() as conn:  # pairs are never deleted, so the check above cannot go stale
            label_id = conn.execute(
                "INSERT INTO labels (pair_id, annotator, choice, note, shown_swapped, latency_s, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pair_id, annotator, choice, note, int(shown_swapped), latency_s, _now()),
            ).lastrowid
            return _label(conn.execute("SELECT * FROM labels WHERE id = ?", (label_id,)).fetchone())

    def undo(self, annotator: str) -> Label | None:
        """Undo `annotator`'s most recent label that is not undone yet and return it (None if there is none).

        Undo works like a stack: the pair returns to the state before that label — unlabeled, or, if the
        label had replaced an earlier one, with the earlier label current again.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT * FROM labels WHERE annotator = ? AND undone = 0 ORDER BY id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE labels SET undone = 1 WHERE id = ?", (row["id"],))
        return _label(row)

    def progress(self, annotator: str) -> tuple[int, int]:
        """(pairs with a current label from `annotator` — skips included, number of pairs)."""
        done = self._query(
            "SELECT COUNT(DISTINCT pair_id) FROM labels WHERE annotator = ? AND undone = 0", (annotator,)
        )[0][0]
        return done, len(self)

    def labels(self, annotator: str | None = None, include_history: bool = False) -> list[Label]:
        """Labels in the order they were made.

        Args:
            annotator: only this annotator's (default None: everyone's).
            include_history: every labeling act, undone and replaced ones included (default False:
                only the current label of each (pair, annotator)).
        """
        sql = "SELECT * FROM labels WHERE (? IS NULL OR annotator = ?)"
        if not include_history:
            sql += f" AND id IN ({_CURRENT_IDS})"
        return [_label(row) for row in self._query(sql + " ORDER BY id", (annotator, annotator))]

    def labels_dataframe(self, annotator: str | None = None, include_history: bool = False) -> pd.DataFrame:
        """`labels(...)` as a DataFrame, one column per `Label` field."""
        rows = [asdict(label) for label in self.labels(annotator, include_history)]
        return pd.DataFrame(rows, columns=list(Label.__dataclass_fields__))

    def annotators(self) -> list[str]:
        """Everyone with at least one current label, in order of their first label."""
        rows = self._query(
            "SELECT annotator FROM labels WHERE undone = 0 GROUP BY annotator ORDER BY MIN(id)"
        )
        return [row[0] for row in rows]

    # ------------------------------------------------------------------ export and statistics
    def decisions(self, annotator: str | None = None, reference: str | None = None) -> dict[int, str]:
        """One decision per labeled pair: "a", "b", "tie", "skip" or "conflict".

        With `annotator`, that annotator's current label. Without, the annotators are pooled: the
        `reference` annotator (e.g. "gold"), where it labeled the pair, decides; elsewhere the strict
        majority of the a / b / tie votes (skips abstain) — "skip" if nobody voted, "conflict" if no
        choice has more votes than every other.
        """
        if annotator is not None and reference is not None:
            raise ValueError("give either annotator or reference, not both")
        votes: dict[int, dict[str, str]] = {}
        for label in self.labels(annotator):
            votes.setdefault(label.pair_id, {})[label.annotator] = label.choice
        return {pair_id: _decide(by, reference) for pair_id, by in votes.items()}

    @overload
    def to_dataset(
        self, annotator: str | None = ..., reference: str | None = ..., *, return_counts: Literal[False] = ...
    ) -> datasets.Dataset: ...

    @overload
    def to_dataset(
        self, annotator: str | None = ..., reference: str | None = ..., *, return_counts: Literal[True]
    ) -> tuple[datasets.Dataset, ExportCounts]: ...

    def to_dataset(
        self, annotator: str | None = None, reference: str | None = None, *, return_counts: bool = False
    ) -> datasets.Dataset | tuple[datasets.Dataset, ExportCounts]:
        """The labeled pairs as a TRL conversational preference Dataset, in pair insertion order.

        Columns are exactly `prompt` (chat messages), `chosen` and `rejected` (each one assistant message)
        — the format of `rlhf_widgets.data.load_preferences`. Decisions come from `decisions(annotator,
        reference)`: ties, skips and conflicts are left out. With `return_counts=True` (default False)
        returns `(dataset, ExportCounts)`.
        """
        decided = self.decisions(annotator, reference)
        tally = Counter(decided.values())
        columns: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
        for pair in self.pairs():
            choice = decided.get(pair.id)
            if choice not in ("a", "b"):
                continue
            chosen, rejected = (
                (pair.response_a, pair.response_b) if choice == "a" else (pair.response_b, pair.response_a)
            )
            columns["prompt"].append(as_messages(pair.prompt))
            columns["chosen"].append([{"role": "assistant", "content": chosen}])
            columns["rejected"].append([{"role": "assistant", "content": rejected}])
        dataset = datasets.Dataset.from_dict(columns, features=_DATASET_FEATURES)
        if not return_counts:
            return dataset
        counts = ExportCounts(
            kept=len(dataset), ties=tally["tie"], skips=tally["skip"], conflicts=tally["conflict"],
            unlabeled=len(self) - len(decided),
        )
        return dataset, counts

    def agreement(self, reference: str | None = None) -> pd.DataFrame:
        """Pairwise agreement between annotators over the pairs both labeled "a" or "b".

        One row per annotator pair (every two annotators; with `reference`, each annotator against the
        reference only): `annotator`, `other`, `n` (shared a/b pairs), `agreement` (fraction equal) and
        `kappa` (Cohen's kappa; NaN when n is 0 or chance agreement is 1).
        """
        ab: dict[str, dict[int, str]] = {}
        for label in self.labels():
            if label.choice in ("a", "b"):
                ab.setdefault(label.annotator, {})[label.pair_id] = label.choice
        names = self.annotators()
        if reference is None:
            couples = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]
        else:
            couples = [(x, reference) for x in names if x != reference]
        rows = []
        for x, y in couples:
            shared = sorted(ab.get(x, {}).keys() & ab.get(y, {}).keys())
            first = [ab[x][p] for p in shared]
            second = [ab[y][p] for p in shared]
            rows.append({"annotator": x, "other": y, "n": len(shared), **_agreement(first, second)})
        return pd.DataFrame(rows, columns=["annotator", "other", "n", "agreement", "kappa"])


class _Transaction:
    """`with`: hold the store lock and run an IMMEDIATE transaction; commit on success, roll back on error."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self._conn, self._lock = conn, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            self._conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def _agreement(first: Sequence[str], second: Sequence[str]) -> dict[str, float]:
    """Observed agreement and Cohen's kappa of two equally long a/b label lists."""
    n = len(first)
    if n == 0:
        return {"agreement": math.nan, "kappa": math.nan}
    observed = sum(x == y for x, y in zip(first, second, strict=True)) / n
    p_first, p_second = first.count("a") / n, second.count("a") / n
    chance = p_first * p_second + (1 - p_first) * (1 - p_second)
    kappa = (observed - chance) / (1 - chance) if chance < 1 else math.nan
    return {"agreement": observed, "kappa": kappa}


def _decide(votes: Mapping[str, str], reference: str | None) -> str:
    """Decision for one pair from {annotator: current choice}; see `PreferenceStore.decisions`."""
    if reference is not None and reference in votes:
        return votes[reference]
    counts = Counter(choice for choice in votes.values() if choice != "skip").most_common()
    if not counts:
        return "skip"
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "conflict"
    return counts[0][0]


def _validated_row(index: int, row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """One `add_pairs` row as column values; ValueError naming the row and field if it is malformed."""

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"row {index}: field {field!r} {why}")

    if not isinstance(row, Mapping):
        raise ValueError(f"row {index}: expected a mapping with fields {_FIELDS}, got {type(row).__name__}")
    unknown = set(row) - set(_FIELDS)
    if unknown:
        raise bad(sorted(unknown)[0], f"is not one of {_FIELDS}")
    for field in ("prompt", "response_a", "response_b"):
        if field not in row or row[field] is None:
            raise bad(field, "is missing")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise bad("prompt", "is empty")
    elif isinstance(prompt, list):
        if not prompt:
            raise bad("prompt", "is an empty message list")
        for message in prompt:
            if not (isinstance(message, Mapping) and set(message) == {"role", "content"}
                    and isinstance(message["role"], str) and isinstance(message["content"], str)):
                raise bad("prompt", f"has a message that is not {{'role': str, 'content': str}}: {message!r}")
    else:
        raise bad("prompt", f"must be a string or a list of chat messages, got {type(prompt).__name__}")
    for field in ("response_a", "response_b"):
        if not isinstance(row[field], str):
            raise bad(field, f"must be a string, got {type(row[field]).__name__}")
        if not row[field].strip():
            raise bad(field, "is empty")
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise bad("metadata", f"must be a dict, got {type(metadata).__name__}")
    try:
        metadata_json = json.dumps(dict(metadata))
    except (TypeError, ValueError) as error:
        raise bad("metadata", f"is not JSON-serialisable: {error}") from error
    return json.dumps(prompt), row["response_a"], row["response_b"], metadata_json


def _pair(row: sqlite3.Row) -> Pair:
    return Pair(id=row["id"], prompt=json.loads(row["prompt"]), response_a=row["response_a"],
                response_b=row["response_b"], metadata=json.loads(row["metadata"]))


def _label(row: sqlite3.Row) -> Label:
    return Label(id=row["id"], pair_id=row["pair_id"], annotator=row["annotator"], choice=row["choice"],
                 note=row["note"], shown_swapped=bool(row["shown_swapped"]), latency_s=row["latency_s"],
                 created_at=datetime.fromisoformat(row["created_at"]), undone=bool(row["undone"]))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
