"""Team hand-out: which annotator labels which pair (`TeamSettings`, `TeamProgress`, leases), as the part of
`PreferenceStore` that `next_pair`, `release`, `set_team`, `team` and `team_progress` come from.

Teams (`set_team`): each pair is handed to `overlap` annotators, never twice to one annotator and never
to more than `overlap` at a time; a pair handed out and not labeled within the lease goes back to the
pool. `next_pair` does the handing out, so `LabelingPanel(store, annotator="alice")` needs nothing else.
The settings live in the store's `settings` table and the leases in its `assignments` table.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_widgets.labeling.backends import Database, Transaction, as_datetime
from rlhf_widgets.labeling.records import CURRENT_IDS, Pair, pair_from_row

if TYPE_CHECKING:  # pandas loads where it is used
    import pandas as pd

_CANDIDATES = 16
"""pairs looked at per round when handing one out"""
_RESCAN_S = 10.0
"""seconds between hand-outs that look at every pair from the first one (in between, each annotator's scan
starts where their last one found something: pairs before it were all settled, held or theirs)"""
LEASE = ("INSERT INTO assignments (pair_id, annotator, expires_at) VALUES (?, ?, rlhfw_clock() + ?) "
         "ON CONFLICT (pair_id, annotator) DO UPDATE SET expires_at = excluded.expires_at")
"""SQL: lease pair ? to annotator ? for ? seconds from now (a lease held already is renewed)"""


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


def _in(column: str, values: Collection[Any]) -> str:
    return f" AND {column} IN ({', '.join('?' * len(values))})" if values else ""


def _not_in(column: str, values: Collection[Any]) -> str:
    return f" AND {column} NOT IN ({', '.join('?' * len(values))})" if values else ""


def read_team(db: Database | Transaction) -> TeamSettings | None:
    """The team settings stored in `db` (`PreferenceStore.set_team`), or None when there are none."""
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
        tx.execute(LEASE, (held[0]["id"], annotator, team.lease_s))
        return pair_from_row(held[0]), None
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
                tx.execute(LEASE, (pair_id, annotator, team.lease_s))
                return pair_from_row(tx.execute("SELECT * FROM pairs WHERE id = ?", (pair_id,))[0]), first


class TeamAssignment:
    """`PreferenceStore`'s team methods; the store they are mixed into supplies `_db`, `_read`, `len()` and
    `_scan_from`."""

    _db: Database
    _scan_from: dict[tuple[str, bool], tuple[int, float]]
    """(annotator, only_unlabeled_by_anyone) → (first pair id the next hand-out scan looks at, when a scan last
    started from pair 1)"""

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
            return pair_from_row(rows[0]) if rows else None
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
        return read_team(self._db)

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
            f"MAX(created_at) AS last_label_at FROM labels WHERE id IN ({CURRENT_IDS}) GROUP BY annotator "
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
