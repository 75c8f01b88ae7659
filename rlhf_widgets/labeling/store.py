"""PreferenceStore: preference pairs and their labels in an SQLite file or a PostgreSQL database (no widget code).

    PreferenceStore("labels.sqlite")                     # a file: one machine, any number of kernels
    PreferenceStore("postgresql://alice@db.example/rl")  # a server: a team on many machines

Both backends (`backends.py`, `postgres.py`) run the same SQL and give the same guarantees:
- a label is durable when `record` returns (SQLite: WAL with `synchronous=FULL`; PostgreSQL: a committed
  transaction with `synchronous_commit` on), so a killed kernel loses nothing that was acknowledged;
- several writers at once wait for each other instead of failing; every write is one short transaction;
- a store may be shared between threads (the labeling session prefetches on a worker thread);
- with PostgreSQL, a dropped connection is reopened and the call re-run once; a server that cannot be
  reached raises `StoreUnavailable`, and `record` can be retried with the same `request_id` without
  ever storing the label twice.

Labels are append-only. The *current* label of a (pair, annotator) is its latest label that is not
undone; `undo` marks a label undone rather than deleting it, so the full history stays inspectable.

`PreferenceStore` is made of parts, one concern each: the connection, pairs and labels here; the team hand-out
(`set_team`, `next_pair`, leases) in `team.py`; decisions, `to_dataset` and agreement in `export.py`. The
records it returns (`Pair`, `Label`) are defined in `records.py`, and `copy_store` in `transfer.py`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_widgets.labeling.backends import Database, Row, SQLiteDatabase, Transaction, is_postgres_url
from rlhf_widgets.labeling.export import LabelExport
from rlhf_widgets.labeling.records import CHOICES, CURRENT_IDS, Choice, Label, Pair, label_from_row, pair_from_row
from rlhf_widgets.labeling.team import LEASE, TeamAssignment, read_team

if TYPE_CHECKING:  # pandas loads where it is used: a process that only labels (an annotator's worker, the
    import pandas as pd  # command line) starts in a fraction of a second

__all__ = ["PreferenceStore"]

_FIELDS = ("prompt", "response_a", "response_b", "metadata", "round")
_PAIRS_LOCK = -1
"""writers' lock key for `add_pairs(if_empty=True)` (pair locks use the pair ids, which are > 0)"""


class PreferenceStore(TeamAssignment, LabelExport):
    """Preference pairs and append-only labels, in an SQLite file or a PostgreSQL database.

    Args:
        target: an SQLite file (created if missing; its parent directory must exist), or a URL
            `postgresql://user@host[:port]/dbname` (the tables are created on first use, in the
            connection's current schema; a password comes from the URL, $PGPASSWORD or ~/.pgpass).
        busy_timeout_s: SQLite: how long a write waits for another process's write lock (default 30 s).
        connect_timeout_s: PostgreSQL: how long connecting may take before the server counts as
            unreachable and `StoreUnavailable` is raised (default 5 s).
    """

    def __init__(self, target: str | Path, busy_timeout_s: float = 30.0, *, connect_timeout_s: float = 5.0) -> None:
        self._db: Database
        if is_postgres_url(target):
            from rlhf_widgets.labeling.postgres import PostgresDatabase  # psycopg only when it is needed

            self.path: Path | None = None
            self._db = PostgresDatabase(str(target), connect_timeout_s)
        elif isinstance(target, str) and "://" in target:
            raise ValueError(f"PreferenceStore: {target!r} is neither a file path nor a postgresql:// URL")
        else:
            self.path = Path(target)
            self._db = SQLiteDatabase(self.path, busy_timeout_s)
        self.target: str = self._db.target
        """where the data is: the SQLite file, or the PostgreSQL URL without its password"""
        self.backend: str = self._db.dialect
        """which database holds the data: "sqlite" or "postgresql"."""
        self.round: int | None = None
        """the loop round labels recorded through this object belong to (`rlhf_widgets.workflows.loop` sets it); None"""
        # where each annotator's next hand-out scan starts (see `TeamAssignment._scan_from`)
        self._scan_from: dict[tuple[str, bool], tuple[int, float]] = {}

    def close(self) -> None:
        """Close the connection; the data stays."""
        self._db.close()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PreferenceStore({self.target!r})"

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._db.query(sql, params)

    # ------------------------------------------------------------------ pairs
    def add_pairs(self, rows: Iterable[Mapping[str, Any]], *, if_empty: bool = False) -> list[int]:
        """Insert pairs and return their ids, in order; all rows or none (one transaction).

        Each row has `prompt` (str or a list of {"role", "content"} messages), `response_a`,
        `response_b` (non-empty str), an optional JSON-serialisable `metadata` dict (provenance: which model
        and settings made each side) and an optional `round` (an int >= 0, the loop round). A missing,
        empty or mistyped field (or an unknown key) raises ValueError naming the row index and field.

        Args:
            rows: the pairs.
            if_empty: insert only if the store has no pairs yet, else insert nothing and return []
                (default False). Atomic, so when several annotators' notebooks prepare the same store at
                once, exactly one set of pairs goes in.
        """
        records = [_validated_row(i, row) for i, row in enumerate(rows)]

        def work(tx: Transaction) -> list[int]:
            if if_empty:
                tx.lock(_PAIRS_LOCK)
                if tx.execute("SELECT COUNT(*) AS n FROM pairs")[0]["n"]:
                    return []
            return [
                tx.execute("INSERT INTO pairs (prompt, response_a, response_b, metadata, round, created_at) "
                           "VALUES (?, ?, ?, ?, ?, now()) RETURNING id", record)[0]["id"]
                for record in records
            ]

        return self._db.write(work, idempotent=if_empty)

    def get_pair(self, pair_id: int) -> Pair:
        """The pair with this id; KeyError if there is none."""
        rows = self._read("SELECT * FROM pairs WHERE id = ?", (pair_id,))
        if not rows:
            raise KeyError(f"no pair with id {pair_id!r} in {self.target}")
        return pair_from_row(rows[0])

    def pairs(self, rounds: Collection[int] | None = None) -> list[Pair]:
        """All pairs in insertion order — or those made in `rounds` (loop rounds) only."""
        if rounds is None:
            return [pair_from_row(row) for row in self._read("SELECT * FROM pairs ORDER BY id")]
        rounds = list(rounds)
        if not rounds:
            return []
        return [pair_from_row(row) for row in self._read(
            f"SELECT * FROM pairs WHERE round IN ({', '.join('?' * len(rounds))}) ORDER BY id", rounds)]

    def __len__(self) -> int:
        return self._read("SELECT COUNT(*) AS n FROM pairs")[0]["n"]

    # ------------------------------------------------------------------ labels
    def record(
        self,
        pair_id: int,
        choice: Choice,
        annotator: str = "human",
        note: str | None = None,
        shown_swapped: bool = False,
        latency_s: float | None = None,
        *,
        request_id: str | None = None,
    ) -> Label:
        """Append a label and return it; it is durable on disk when this returns.

        Args:
            pair_id: an existing pair (KeyError otherwise).
            choice: "a", "b", "tie" or "skip" (ValueError otherwise), un-randomised.
            annotator: who labeled (default "human"); a non-empty string.
            note: free-text remark (default None).
            shown_swapped: whether response_a was displayed on the right (default False).
            latency_s: seconds from the pair being shown to this label (default None: unknown).
            request_id: a unique id for this labeling act (default None: a new random one). Recording
                again with the same id returns the label stored the first time instead of adding one, so
                a caller that lost the connection can retry without knowing whether the label arrived.

        The label's `round` is the store's `round` at the time (set by the iterative loop; None outside one).
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        if not isinstance(annotator, str) or not annotator.strip():
            raise ValueError(f"annotator must be a non-empty string, got {annotator!r}")
        request = request_id or uuid.uuid4().hex
        values = (pair_id, annotator, choice, note, bool(shown_swapped), latency_s, request, self.round)

        def work(tx: Transaction) -> Label:
            if not tx.execute("SELECT id FROM pairs WHERE id = ?", (pair_id,)):
                raise KeyError(f"no pair with id {pair_id!r} in {self.target}")
            rows = tx.execute(
                "INSERT INTO labels (pair_id, annotator, choice, note, shown_swapped, latency_s, request_id, round, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, now()) ON CONFLICT (request_id) DO NOTHING RETURNING *",
                values,
            ) or tx.execute("SELECT * FROM labels WHERE request_id = ?", (request,))
            stored = rows[0]
            if (stored["pair_id"], stored["annotator"], stored["choice"]) != (pair_id, annotator, choice):
                raise ValueError(f"request_id {request!r} already names label {stored['id']} (pair "
                                 f"{stored['pair_id']}, {stored['annotator']!r}, {stored['choice']!r}); "
                                 "give each labeling act its own request_id")
            tx.execute("DELETE FROM assignments WHERE pair_id = ? AND annotator = ?", (pair_id, annotator))
            return label_from_row(stored)

        return self._db.write(work, idempotent=True)

    def undo(self, annotator: str) -> Label | None:
        """Undo `annotator`'s most recent label that is not undone yet and return it (None if there is none).

        Undo works like a stack: the pair returns to the state before that label — unlabeled, or, if the
        label had replaced an earlier one, with the earlier label current again. In a team the pair is
        leased to `annotator` again, so the place it held on that pair stays theirs.
        """
        target: list[Label] = []  # chosen on the first attempt, so a retry never undoes a second label

        def work(tx: Transaction) -> Label | None:
            if not target:
                rows = tx.execute("SELECT * FROM labels WHERE annotator = ? AND NOT undone ORDER BY id DESC LIMIT 1",
                                  (annotator,))
                if not rows:
                    return None
                target.append(label_from_row(rows[0]))
            label = target[0]
            tx.execute("UPDATE labels SET undone = TRUE WHERE id = ?", (label.id,))
            team = read_team(tx)
            if team is not None and annotator not in team.exempt:
                tx.execute(LEASE, (label.pair_id, annotator, team.lease_s))
            return label

        return self._db.write(work, idempotent=True)

    def progress(self, annotator: str) -> tuple[int, int]:
        """(pairs with a current label from `annotator` — skips included, number of pairs)."""
        done = self._read(
            "SELECT COUNT(DISTINCT pair_id) AS n FROM labels WHERE annotator = ? AND NOT undone", (annotator,)
        )[0]["n"]
        return done, len(self)

    def labels(self, annotator: str | None = None, include_history: bool = False) -> list[Label]:
        """Labels in the order they were made.

        Args:
            annotator: only this annotator's (default None: everyone's).
            include_history: every labeling act, undone and replaced ones included (default False:
                only the current label of each (pair, annotator)).

        An annotator role on PostgreSQL sees only its own labels.
        """
        where = ["annotator = ?"] if annotator is not None else []
        if not include_history:
            where.append(f"id IN ({CURRENT_IDS})")
        sql = "SELECT * FROM labels" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [label_from_row(row) for row in self._read(sql, [annotator] if annotator is not None else [])]

    def labels_dataframe(self, annotator: str | None = None, include_history: bool = False) -> pd.DataFrame:
        """`labels(...)` as a DataFrame, one column per `Label` field."""
        import pandas as pd

        rows = [asdict(label) for label in self.labels(annotator, include_history)]
        return pd.DataFrame(rows, columns=list(Label.__dataclass_fields__))

    def annotators(self) -> list[str]:
        """Everyone with at least one current label, in order of their first label."""
        rows = self._read("SELECT annotator FROM labels WHERE NOT undone GROUP BY annotator ORDER BY MIN(id)")
        return [row["annotator"] for row in rows]


def _validated_row(index: int, row: Mapping[str, Any]) -> tuple[str, str, str, str, int | None]:
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
    round_ = row.get("round")
    if round_ is not None and (isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0):
        raise bad("round", f"must be an int >= 0 (the loop round), got {round_!r}")
    return json.dumps(prompt), row["response_a"], row["response_b"], metadata_json, round_

