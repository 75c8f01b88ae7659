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

Teams (`set_team`): each pair is handed to `overlap` annotators, never twice to one annotator and never
to more than `overlap` at a time; a pair handed out and not labeled within the lease goes back to the
pool. `next_pair` does the handing out, so `LabelingPanel(store, annotator="alice")` needs nothing else.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from rlhf_widgets.labeling.backends import (
    SCHEMA_VERSION,
    Database,
    Row,
    SQLiteDatabase,
    StoreUnavailable,
    Transaction,
    as_datetime,
    is_postgres_url,
)
from rlhf_widgets.runtime.types import Prompt  # noqa: F401 - labelers and widgets name it from here

if TYPE_CHECKING:  # pandas, datasets and the statistics load where they are used: a process that only
    import datasets  # labels (an annotator's worker, the command line) starts in a fraction of a second
    import pandas as pd

    from rlhf_widgets.labeling.agreement import TeamAgreement

Choice = Literal["a", "b", "tie", "skip"]
CHOICES: tuple[str, ...] = ("a", "b", "tie", "skip")

__all__ = [
    "CHOICES", "SCHEMA_VERSION", "Choice", "ExportCounts", "Label", "Pair", "PreferenceStore", "Prompt",
    "StoreUnavailable", "TeamProgress", "TeamSettings", "copy_store",
]

_FIELDS = ("prompt", "response_a", "response_b", "metadata", "round")
# ids of the current label of every (pair, annotator): its latest label that is not undone
_CURRENT_IDS = "SELECT MAX(id) FROM labels WHERE NOT undone GROUP BY pair_id, annotator"
_PAIRS_LOCK = -1
"""writers' lock key for `add_pairs(if_empty=True)` (pair locks use the pair ids, which are > 0)"""
_CANDIDATES = 16
"""pairs looked at per round when handing one out"""
_RESCAN_S = 10.0
"""seconds between hand-outs that look at every pair from the first one (in between, each annotator's scan
starts where their last one found something: pairs before it were all settled, held or theirs)"""


@dataclass(frozen=True)
class Pair:
    """A prompt with two candidate responses; `metadata` says e.g. which model/settings made each side."""

    id: int
    prompt: Prompt
    response_a: str
    response_b: str
    metadata: dict[str, Any]
    round: int | None = None
    """the round of the iterative loop (`rlhf_widgets.workflows.loop`) the pair was made in; None outside a loop"""


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
    round: int | None = None
    """the loop round the label was given in (`PreferenceStore.round` when it was recorded); None outside a loop"""


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


@dataclass(frozen=True)
class TeamSettings:
    """How a store hands pairs out to a team (`PreferenceStore.set_team`)."""

    overlap: int
    """each pair goes to this many annotators (r; 2 or more gives agreement statistics)"""
    lease_s: float
    """seconds a handed-out pair stays reserved for its annotator without a label"""
    exempt: tuple[str, ...]
    """annotators outside the hand-out (e.g. "gold" or an AI labeler): they get every pair, and their
    labels take no one's place"""


@dataclass(frozen=True)
class TeamProgress:
    """Where a team stands (`PreferenceStore.team_progress`)."""

    pairs: int
    """pairs in the store"""
    complete: int
    """pairs labeled by `overlap` team annotators (skips count: the annotator saw the pair)"""
    started: int
    """pairs labeled by at least one team annotator"""
    annotators: pd.DataFrame
    """one row per annotator with a label or a live lease: `annotator`, `labeled` (pairs with a current
    label), `skipped`, `holding` (pairs leased and not labeled yet), `last_label_at`"""


class PreferenceStore:
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
        # (annotator, only_unlabeled_by_anyone) → (first pair id the next hand-out scan looks at, when a scan
        # last started from pair 1)
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
        return _pair(rows[0])

    def pairs(self, rounds: Collection[int] | None = None) -> list[Pair]:
        """All pairs in insertion order — or those made in `rounds` (loop rounds) only."""
        if rounds is None:
            return [_pair(row) for row in self._read("SELECT * FROM pairs ORDER BY id")]
        rounds = list(rounds)
        if not rounds:
            return []
        return [_pair(row) for row in self._read(
            f"SELECT * FROM pairs WHERE round IN ({', '.join('?' * len(rounds))}) ORDER BY id", rounds)]

    def __len__(self) -> int:
        return self._read("SELECT COUNT(*) AS n FROM pairs")[0]["n"]

    def next_pair(
        self, annotator: str, only_unlabeled_by_anyone: bool = False, exclude: Collection[int] = ()
    ) -> Pair | None:
        """The next pair for `annotator` to label, or None when there is none.

        Without a team (`set_team`), or for an annotator the team exempts: the first pair (insertion
        order) without a current label from `annotator`. In a team, the pair is *handed out*: the first
        pair `annotator` has not labeled whose current labels and live leases, from other team
        annotators, number fewer than `overlap`; it is leased to `annotator` for `lease_s`. A pair
        already leased to `annotator` comes first (e.g. after a kernel restart). "First" is as of the
        last full look at the pairs, at most 10 s ago: a pair that an expired lease or an undo frees
        behind the pairs handed out since may wait that long.

        Args:
            annotator: whose labels count.
            only_unlabeled_by_anyone: skip pairs any annotator has labeled (default False).
            exclude: pair ids to pass over (e.g. the pair on screen, when prefetching the one after it).
        """
        team = self.team()
        if team is None or annotator in team.exempt:
            anyone = only_unlabeled_by_anyone
            rows = self._read(
                f"SELECT p.* FROM pairs p WHERE p.id NOT IN (SELECT pair_id FROM labelers"
                f"{'' if anyone else ' WHERE annotator = ?'}){_not_in('p.id', exclude)} ORDER BY p.id LIMIT 1",
                [*([] if anyone else [annotator]), *exclude],
            )
            return _pair(rows[0]) if rows else None
        start, full_at = self._scan_from.get((annotator, only_unlabeled_by_anyone), (1, -math.inf))
        if time.monotonic() - full_at > _RESCAN_S:
            start, full_at = 1, time.monotonic()
        while True:
            pair, first = self._db.write(
                lambda tx, start=start: _hand_out(tx, team, annotator, only_unlabeled_by_anyone, exclude, start),
                idempotent=True,
            )
            if pair is not None or start == 1:
                break
            start, full_at = 1, time.monotonic()  # nothing after the hint: look from the first pair
        if first is not None:
            self._scan_from[annotator, only_unlabeled_by_anyone] = (first, full_at)
        return pair

    def release(self, annotator: str, pair_ids: Collection[int]) -> None:
        """Give back `annotator`'s leases on these pairs (e.g. pairs fetched but never labeled), so the rest
        of the team can have them now rather than when the lease runs out."""
        if pair_ids:
            self._db.write(lambda tx: tx.execute(
                f"DELETE FROM assignments WHERE annotator = ?{_in('pair_id', pair_ids)}", [annotator, *pair_ids]
            ), idempotent=True)

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
            return _label(stored)

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
                target.append(_label(rows[0]))
            label = target[0]
            tx.execute("UPDATE labels SET undone = TRUE WHERE id = ?", (label.id,))
            team = _team(tx)
            if team is not None and annotator not in team.exempt:
                tx.execute(_LEASE, (label.pair_id, annotator, team.lease_s))
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
            where.append(f"id IN ({_CURRENT_IDS})")
        sql = "SELECT * FROM labels" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [_label(row) for row in self._read(sql, [annotator] if annotator is not None else [])]

    def labels_dataframe(self, annotator: str | None = None, include_history: bool = False) -> pd.DataFrame:
        """`labels(...)` as a DataFrame, one column per `Label` field."""
        import pandas as pd

        rows = [asdict(label) for label in self.labels(annotator, include_history)]
        return pd.DataFrame(rows, columns=list(Label.__dataclass_fields__))

    def annotators(self) -> list[str]:
        """Everyone with at least one current label, in order of their first label."""
        rows = self._read("SELECT annotator FROM labels WHERE NOT undone GROUP BY annotator ORDER BY MIN(id)")
        return [row["annotator"] for row in rows]

    # ------------------------------------------------------------------ teams
    def set_team(self, overlap: int | None, lease_s: float = 1800.0, exempt: Collection[str] = ()) -> None:
        """Hand pairs out to a team from now on (every annotator's `next_pair`, so every panel), or stop.

        Args:
            overlap: how many annotators label each pair (r; 2 or more gives agreement statistics); None
                turns the hand-out off, so every annotator gets every pair again.
            lease_s: seconds a handed-out pair stays reserved for its annotator without a label (default
                1800 = 30 min); after that it goes back to the pool (a label given later is still kept).
            exempt: annotators outside the hand-out, e.g. "gold" or an AI labeler: they get every pair
                and take no one's place (default none).

        Settings live in the store, so every annotator's notebook follows them. On PostgreSQL only the
        store's owner may change them.
        """
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1):
            raise ValueError(f"set_team: overlap must be a whole number >= 1 (or None to stop), got {overlap!r}")
        if not (isinstance(lease_s, int | float) and math.isfinite(lease_s) and lease_s > 0):
            raise ValueError(f"set_team: lease_s must be a positive number of seconds, got {lease_s!r}")
        if isinstance(exempt, str) or not all(isinstance(name, str) and name.strip() for name in exempt):
            raise ValueError(f"set_team: exempt must be a collection of annotator names, got {exempt!r}")
        value = json.dumps({"overlap": overlap, "lease_s": float(lease_s), "exempt": sorted(exempt)})

        def work(tx: Transaction) -> None:
            tx.execute("DELETE FROM settings WHERE key = 'team'")
            if overlap is not None:
                tx.execute("INSERT INTO settings (key, value) VALUES ('team', ?)", (value,))

        self._db.write(work, idempotent=True)

    def team(self) -> TeamSettings | None:
        """The team hand-out settings (`set_team`), or None when every annotator gets every pair."""
        return _team(self._db)

    def team_progress(self) -> TeamProgress:
        """How far the team is: pairs labeled by `overlap` team annotators, and each annotator's counts.

        Without team settings a pair is complete with one label. Exempt annotators are listed but do
        not count towards `complete` / `started`. An annotator role on PostgreSQL sees only its own row
        in `annotators` (the pair counts are everyone's).
        """
        import pandas as pd

        team = self.team()
        overlap, exempt = (team.overlap, team.exempt) if team else (1, ())
        per_pair = self._read(
            f"SELECT COUNT(DISTINCT l.annotator) AS n FROM labelers l WHERE 1 = 1{_not_in('l.annotator', exempt)} "
            "GROUP BY l.pair_id", list(exempt),
        )
        labeled = self._read(
            "SELECT annotator, COUNT(*) AS labeled, SUM(CASE WHEN choice = 'skip' THEN 1 ELSE 0 END) AS skipped, "
            f"MAX(created_at) AS last_label_at FROM labels WHERE id IN ({_CURRENT_IDS}) GROUP BY annotator "
            "ORDER BY MIN(id)"
        )
        holding = {row["annotator"]: row["n"] for row in self._read(
            "SELECT annotator, COUNT(*) AS n FROM assignments WHERE expires_at > rlhfw_clock() GROUP BY annotator"
        )}
        rows = [{"annotator": row["annotator"], "labeled": row["labeled"], "skipped": row["skipped"],
                 "holding": holding.pop(row["annotator"], 0), "last_label_at": as_datetime(row["last_label_at"])}
                for row in labeled]
        rows += [{"annotator": name, "labeled": 0, "skipped": 0, "holding": n, "last_label_at": None}
                 for name, n in sorted(holding.items())]
        return TeamProgress(
            pairs=len(self), complete=sum(row["n"] >= overlap for row in per_pair), started=len(per_pair),
            annotators=pd.DataFrame(rows, columns=["annotator", "labeled", "skipped", "holding", "last_label_at"]),
        )

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
        self, annotator: str | None = ..., reference: str | None = ..., *, rounds: Collection[int] | None = ...,
        return_counts: Literal[False] = ...
    ) -> datasets.Dataset: ...

    @overload
    def to_dataset(
        self, annotator: str | None = ..., reference: str | None = ..., *, rounds: Collection[int] | None = ...,
        return_counts: Literal[True]
    ) -> tuple[datasets.Dataset, ExportCounts]: ...

    def to_dataset(
        self, annotator: str | None = None, reference: str | None = None, *, rounds: Collection[int] | None = None,
        return_counts: bool = False
    ) -> datasets.Dataset | tuple[datasets.Dataset, ExportCounts]:
        """The labeled pairs as a TRL conversational preference Dataset, in pair insertion order.

        Columns are exactly `prompt` (chat messages), `chosen` and `rejected` (each one assistant message)
        — the format of `rlhf_widgets.runtime.data.load_preferences`. Decisions come from `decisions(annotator,
        reference)`: ties, skips and conflicts are left out. `rounds` (default None: all) keeps the pairs
        made in those loop rounds. With `return_counts=True` (default False) returns `(dataset, ExportCounts)`;
        its counts are of the pairs considered.
        """
        import datasets

        from rlhf_widgets.runtime.data import PREFERENCE_FEATURES, as_messages

        pairs = self.pairs(rounds)
        considered = {pair.id for pair in pairs}
        decided = {k: v for k, v in self.decisions(annotator, reference).items() if k in considered}
        tally = Counter(decided.values())
        columns: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
        for pair in pairs:
            choice = decided.get(pair.id)
            if choice not in ("a", "b"):
                continue
            chosen, rejected = (
                (pair.response_a, pair.response_b) if choice == "a" else (pair.response_b, pair.response_a)
            )
            columns["prompt"].append(as_messages(pair.prompt))
            columns["chosen"].append([{"role": "assistant", "content": chosen}])
            columns["rejected"].append([{"role": "assistant", "content": rejected}])
        dataset = datasets.Dataset.from_dict(columns, features=PREFERENCE_FEATURES)
        if not return_counts:
            return dataset
        counts = ExportCounts(
            kept=len(dataset), ties=tally["tie"], skips=tally["skip"], conflicts=tally["conflict"],
            unlabeled=len(pairs) - len(decided),
        )
        return dataset, counts

    def agreement(self, reference: str | None = None) -> pd.DataFrame:
        """Pairwise agreement between annotators over the pairs both labeled "a" or "b".

        One row per annotator pair (every two annotators; with `reference`, each annotator against the
        reference only): `annotator`, `other`, `n` (shared a/b pairs), `agreement` (fraction equal) and
        `kappa` (Cohen's kappa; NaN when n is 0 or chance agreement is 1).
        """
        import pandas as pd

        from rlhf_widgets.labeling.agreement import cohens_kappa

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
            rows.append({"annotator": x, "other": y, "n": len(shared), **cohens_kappa(first, second)})
        return pd.DataFrame(rows, columns=["annotator", "other", "n", "agreement", "kappa"])

    def team_agreement(
        self, reference: str | None = None, *, margin: float = 0.15, min_pairs: int = 10
    ) -> TeamAgreement:
        """Krippendorff's α over the team, each annotator against the majority of the others and against
        `reference`, and who falls far below the team (see `agreement.team_agreement`).

        The team is every annotator with a current label except `reference` and the annotators the
        team settings exempt. Ties are votes (half-way between a and b for the ordinal α); skips are not.

        Args:
            reference: an annotator to compare everyone with, e.g. "gold" (default None).
            margin: flag annotators whose agreement with the majority is more than this below the team's
                median (default 0.15).
            min_pairs: judge only annotators with at least this many pairs compared (default 10).
        """
        from rlhf_widgets.labeling.agreement import team_agreement

        team = self.team()
        left_out = {reference, *(team.exempt if team else ())}
        votes: dict[str, dict[int, str]] = {}
        for label in self.labels():
            votes.setdefault(label.annotator, {})[label.pair_id] = label.choice
        gold = votes.get(reference, {}) if reference is not None else None
        members = {name: by_pair for name, by_pair in votes.items() if name not in left_out}
        return team_agreement(members, gold, margin=margin, min_pairs=min_pairs)


def copy_store(source: str | Path | PreferenceStore, target: str | Path | PreferenceStore) -> dict[str, int]:
    """Copy every pair, label (undone ones and ids included) and setting of `source` into the empty `target`.

    The usual move: `copy_store("runs/labels.sqlite", "postgresql://owner@db/labels")` (also
    `python -m rlhf_widgets.labeling.postgres copy SOURCE URL`). One transaction: all or nothing. Pair
    and label ids, timestamps and texts are kept as they are. Returns {"pairs": n, "labels": n,
    "settings": n}. ValueError if `target` already holds pairs or labels.
    """
    src = source if isinstance(source, PreferenceStore) else PreferenceStore(source)
    try:
        dst = target if isinstance(target, PreferenceStore) else PreferenceStore(target)
        try:
            pairs = src._read("SELECT * FROM pairs ORDER BY id")
            labels = src._read("SELECT * FROM labels ORDER BY id")
            settings = src._read("SELECT key, value FROM settings ORDER BY key")
            dst._db.write(lambda tx: _copy_into(dst, tx, pairs, labels, settings), idempotent=False)
        finally:
            if dst is not target:
                dst.close()
    finally:
        if src is not source:
            src.close()
    return {"pairs": len(pairs), "labels": len(labels), "settings": len(settings)}


def _copy_into(dst: PreferenceStore, tx: Transaction, pairs: list[Row], labels: list[Row], settings: list[Row]) -> None:
    """`copy_store`'s one transaction on the target."""
    held = tx.execute("SELECT (SELECT COUNT(*) FROM pairs) AS pairs, (SELECT COUNT(*) FROM labels) AS labels")[0]
    if held["pairs"] or held["labels"]:
        raise ValueError(f"copy_store: {dst.target} already holds {held['pairs']} pairs and "
                         f"{held['labels']} labels; copy into an empty store")
    stamp = dst._db.timestamp
    tx.executemany(
        "INSERT INTO pairs (id, prompt, response_a, response_b, metadata, round, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(r["id"], r["prompt"], r["response_a"], r["response_b"], r["metadata"], r["round"],
          stamp(as_datetime(r["created_at"]))) for r in pairs],
    )
    tx.executemany(
        "INSERT INTO labels (id, pair_id, annotator, choice, note, shown_swapped, latency_s, created_at, undone, "
        "request_id, round) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r["id"], r["pair_id"], r["annotator"], r["choice"], r["note"], bool(r["shown_swapped"]), r["latency_s"],
          stamp(as_datetime(r["created_at"])), bool(r["undone"]), r["request_id"], r["round"]) for r in labels],
    )
    tx.execute("DELETE FROM settings")
    tx.executemany("INSERT INTO settings (key, value) VALUES (?, ?)", [(r["key"], r["value"]) for r in settings])
    dst._db.reset_ids(tx)


# ---------------------------------------------------------------------------------------------- internals
_LEASE = ("INSERT INTO assignments (pair_id, annotator, expires_at) VALUES (?, ?, rlhfw_clock() + ?) "
          "ON CONFLICT (pair_id, annotator) DO UPDATE SET expires_at = excluded.expires_at")


def _in(column: str, values: Collection[Any]) -> str:
    return f" AND {column} IN ({', '.join('?' * len(values))})" if values else ""


def _not_in(column: str, values: Collection[Any]) -> str:
    return f" AND {column} NOT IN ({', '.join('?' * len(values))})" if values else ""


def _team(db: Database | Transaction) -> TeamSettings | None:
    rows = (db.query if isinstance(db, Database) else db.execute)("SELECT value FROM settings WHERE key = 'team'")
    if not rows:
        return None
    value = json.loads(rows[0]["value"])
    return TeamSettings(overlap=value["overlap"], lease_s=value["lease_s"], exempt=tuple(value["exempt"]))


def _holders(pair: str, exempt: Collection[str]) -> str:
    """SQL counting the annotators other than `?` — not exempt — with a current label or a live lease on `pair`.

    Parameters, in order: [pair?], annotator, *exempt, [pair?], annotator.
    """
    return ("(SELECT COUNT(*) FROM ("
            f"SELECT l.annotator FROM labelers l WHERE l.pair_id = {pair} AND l.annotator <> ?"
            f"{_not_in('l.annotator', exempt)} UNION "
            f"SELECT a.annotator FROM assignments a WHERE a.pair_id = {pair} AND a.annotator <> ? "
            "AND a.expires_at > rlhfw_clock()) AS holders)")


def _hand_out(
    tx: Transaction, team: TeamSettings, annotator: str, anyone: bool, exclude: Collection[int], start: int
) -> tuple[Pair | None, int | None]:
    """Lease `annotator` the next pair from id `start` on under `team`'s rules (see `PreferenceStore.next_pair`),
    in one transaction; returns (the pair or None, the first candidate seen — every pair before it was
    unavailable to `annotator` — or None).

    Concurrency: candidates are read without locks; a candidate is taken only under its pair lock
    (`try_lock`, skipping pairs another annotator is being handed right now) after a fresh count, which
    then sees every lease committed before — so no pair ever has more than `overlap` holders.
    """
    tx.lazy_commit()  # a lease lost in a server crash is only handed out again
    held = tx.execute(
        "SELECT p.* FROM assignments a JOIN pairs p ON p.id = a.pair_id WHERE a.annotator = ? "
        "AND a.expires_at > rlhfw_clock() AND NOT EXISTS "
        f"(SELECT 1 FROM labelers l WHERE l.pair_id = a.pair_id AND l.annotator = ?){_not_in('p.id', exclude)} "
        "ORDER BY p.id LIMIT 1",
        [annotator, annotator, *exclude],
    )
    if held:
        tx.execute(_LEASE, (held[0]["id"], annotator, team.lease_s))
        return _pair(held[0]), None
    exempt = team.exempt
    candidates = (
        # NOT IN (...): one hashed list of the annotator's pairs, whatever the planner's statistics say
        "SELECT p.id FROM pairs p WHERE p.id >= ? "
        "AND p.id NOT IN (SELECT pair_id FROM labelers WHERE annotator = ?)"
        + (" AND p.id NOT IN (SELECT pair_id FROM labelers)" if anyone else "")
        + _not_in("p.id", exclude)
        + f" AND {_holders('p.id', exempt)} < ? ORDER BY p.id LIMIT {_CANDIDATES}"
    )
    params = [start, annotator, *exclude, annotator, *exempt, annotator, team.overlap]
    recount = f"SELECT {_holders('?', exempt)} AS n"
    first = None
    while True:
        ids = [row["id"] for row in tx.execute(candidates, params)]
        if not ids:
            return None, first
        first = ids[0] if first is None else first
        for pair_id in ids:
            if not tx.try_lock(pair_id):
                continue  # another annotator is being handed this pair right now
            if tx.execute(recount, [pair_id, annotator, *exempt, pair_id, annotator])[0]["n"] < team.overlap:
                tx.execute(_LEASE, (pair_id, annotator, team.lease_s))
                return _pair(tx.execute("SELECT * FROM pairs WHERE id = ?", (pair_id,))[0]), first


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


def _pair(row: Row) -> Pair:
    return Pair(id=row["id"], prompt=json.loads(row["prompt"]), response_a=row["response_a"],
                response_b=row["response_b"], metadata=json.loads(row["metadata"]), round=row["round"])


def _label(row: Row) -> Label:
    return Label(id=row["id"], pair_id=row["pair_id"], annotator=row["annotator"], choice=row["choice"],
                 note=row["note"], shown_swapped=bool(row["shown_swapped"]), latency_s=row["latency_s"],
                 created_at=as_datetime(row["created_at"]), undone=bool(row["undone"]), round=row["round"])
