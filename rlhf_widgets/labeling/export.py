"""What the labels add up to: one decision per pair, the TRL preference dataset made from the decisions
(`to_dataset`, `ExportCounts`), and agreement between annotators — the part of `PreferenceStore` that
`decisions`, `to_dataset`, `agreement` and `team_agreement` come from. The statistics themselves are in
`agreement.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, overload

if TYPE_CHECKING:  # datasets, pandas and the statistics load where they are used
    import datasets
    import pandas as pd

    from rlhf_widgets.labeling.agreement import TeamAgreement


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


class LabelExport:
    """`PreferenceStore`'s decision, export and agreement methods; they read the store through its `pairs`,
    `labels`, `annotators` and `team`."""

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
