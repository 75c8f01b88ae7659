"""Agreement between annotators: Cohen's κ for two, Krippendorff's α for a team, and each annotator
against the majority of the others and against a reference (e.g. the sandbox's gold labels).

Choices are "a", "b", "tie" and "skip". A skip is no vote (missing data for α). For α the votes are
ordinal by default — "a better" < "tie" < "b better" — so a tie against a decided vote counts as half a
disagreement of "a" against "b" (Krippendorff's ordinal metric); `level="nominal"` counts every
difference alike.

Krippendorff's α comes from the `krippendorff` package; the known answers in the tests are the worked
examples of Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import krippendorff
import numpy as np
import pandas as pd

Level = Literal["nominal", "ordinal", "interval", "ratio"]
ORDINAL_VALUES: dict[str, int] = {"a": 0, "tie": 1, "b": 2}
"""where each vote lies on the preference scale ("skip" is no vote)"""
Votes = Mapping[str, Mapping[int, str]]
"""{annotator: {pair id: current choice}}"""


def cohens_kappa(first: Sequence[str], second: Sequence[str]) -> dict[str, float]:
    """Observed agreement and Cohen's κ of two equally long lists of "a" / "b" labels.

    Returns {"agreement": fraction equal, "kappa": (observed - chance) / (1 - chance)}; both NaN for
    empty lists, κ NaN when chance agreement is 1 (both annotators always chose the same side).
    """
    n = len(first)
    if n == 0:
        return {"agreement": math.nan, "kappa": math.nan}
    observed = sum(x == y for x, y in zip(first, second, strict=True)) / n
    p_first, p_second = first.count("a") / n, second.count("a") / n
    chance = p_first * p_second + (1 - p_first) * (1 - p_second)
    kappa = (observed - chance) / (1 - chance) if chance < 1 else math.nan
    return {"agreement": observed, "kappa": kappa}


def krippendorff_alpha(
    data: Sequence[Sequence[float | None]], level: Level = "nominal", value_domain: Sequence[float] | None = None
) -> float:
    """Krippendorff's α of reliability data: one row per coder, one column per unit, None or NaN where a
    coder gave no value.

    Args:
        data: the coders × units table of numeric values.
        level: the difference metric, "nominal" (default), "ordinal", "interval" or "ratio".
        value_domain: every possible value, in order (default None: the values seen); for ordinal data
            it places values nobody used.

    Returns NaN when no unit has values from two coders, or when the values leave no disagreement to
    expect (every pairable value equal): α is undefined then, not 1.
    """
    table = np.array([[math.nan if v is None else v for v in row] for row in data], dtype=float)
    if table.ndim != 2 or not ((~np.isnan(table)).sum(axis=0) >= 2).any():
        return math.nan  # no unit has two values to compare
    if len(np.unique(table[~np.isnan(table)])) < 2:
        return math.nan  # one value throughout: no disagreement to expect
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        alpha = krippendorff.alpha(reliability_data=table, level_of_measurement=level, value_domain=value_domain)
    return float(alpha)


def preference_alpha(votes: Votes, level: Level = "ordinal") -> float:
    """Krippendorff's α over the a / tie / b votes of every annotator in `votes` (skips are missing).

    `level`: "ordinal" (default: a < tie < b) or "nominal" (a tie is just another category).
    """
    if level not in ("nominal", "ordinal"):
        raise ValueError(f"level must be 'nominal' or 'ordinal' for preference votes, got {level!r}")
    pair_ids = sorted({p for by_pair in votes.values() for p, c in by_pair.items() if c in ORDINAL_VALUES})
    rows = [[ORDINAL_VALUES.get(by_pair.get(p, "skip")) for p in pair_ids] for by_pair in votes.values()]
    return krippendorff_alpha(rows, level, value_domain=sorted(ORDINAL_VALUES.values()))


def majority(choices: Sequence[str]) -> str | None:
    """The strict-majority vote among a / b / tie choices (skips abstain); None if there is none."""
    counts = Counter(c for c in choices if c != "skip").most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


@dataclass(frozen=True)
class TeamAgreement:
    """How well a team of annotators agrees; see `team_agreement`."""

    alpha: float
    """Krippendorff's α, ordinal (a < tie < b); NaN when undefined"""
    alpha_nominal: float
    """Krippendorff's α with every choice its own category"""
    annotators: pd.DataFrame
    """one row per team annotator: `annotator`, `votes` (a / b / tie labels), `n_majority` (pairs where the
    others had a strict majority), `with_majority` (fraction of those where this annotator's vote was it),
    `n_reference`, `with_reference` (fraction equal to the reference's vote, both voting), `flagged`"""
    median_with_majority: float
    """the team's median `with_majority` (over annotators with at least `min_pairs` such pairs)"""


def team_agreement(
    votes: Votes, reference: Mapping[int, str] | None = None, *, margin: float = 0.15, min_pairs: int = 10
) -> TeamAgreement:
    """Agreement of a team: α over everyone, and each annotator against the others' majority and a reference.

    An annotator is compared, pair by pair, with the strict majority of the *other* annotators' votes
    (so their own vote never props up their score; with two annotators on a pair the majority is the
    other one's vote). Skips and pairs without such a majority are left out.

    Args:
        votes: {annotator: {pair id: choice}} of the team (the reference not among them).
        reference: {pair id: choice} of a reference annotator, e.g. the sandbox's gold labels (default
            None: no `with_reference`).
        margin: flag an annotator whose `with_majority` is more than this below the team's median
            (default 0.15, i.e. 15 percentage points).
        min_pairs: judge (and count in the median) only annotators with at least this many pairs with
            a majority (default 10).
    """
    rows = []
    for name, own in votes.items():
        others = [by_pair for other, by_pair in votes.items() if other != name]
        compared = agreed = 0
        for pair_id, choice in own.items():
            if choice == "skip":
                continue
            verdict = majority([by_pair[pair_id] for by_pair in others if pair_id in by_pair])
            if verdict is not None:
                compared += 1
                agreed += verdict == choice
        shared = [p for p, c in own.items() if c != "skip" and reference and reference.get(p, "skip") != "skip"]
        rows.append({
            "annotator": name,
            "votes": sum(c != "skip" for c in own.values()),
            "n_majority": compared,
            "with_majority": agreed / compared if compared else math.nan,
            "n_reference": len(shared),
            "with_reference": (sum(own[p] == reference[p] for p in shared) / len(shared)) if shared else math.nan,
        })
    frame = pd.DataFrame(rows, columns=["annotator", "votes", "n_majority", "with_majority", "n_reference",
                                        "with_reference"])
    judged = frame[frame.n_majority >= min_pairs]
    median = statistics.median(judged.with_majority) if len(judged) else math.nan
    frame["flagged"] = (frame.n_majority >= min_pairs) & (frame.with_majority < median - margin)
    return TeamAgreement(alpha=preference_alpha(votes, "ordinal"), alpha_nominal=preference_alpha(votes, "nominal"),
                         annotators=frame, median_with_majority=median)
