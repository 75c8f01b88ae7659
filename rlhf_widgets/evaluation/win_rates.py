"""Win rates under a pairwise judge: how often a candidate's answers beat a baseline's, with a Wilson interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING

from rlhf_widgets.evaluation.judges import checked_pairs, verdicts
from rlhf_widgets.labeling.labelers import Labeler

if TYPE_CHECKING:
    from rlhf_widgets.runtime.types import Prompt


def judge_win_rate(judge: Labeler, prompts: Sequence[Prompt], candidate: Sequence[str],
                   baseline: Sequence[str], confidence: float = 0.95) -> dict[str, float]:
    """How often `candidate` beats `baseline` under `judge`, ties ½, with a Wilson score interval.

    The candidate is shown as answer a on even-numbered prompts and as b on odd ones, so a judge that
    favours a position (a human, or a `PairwiseJudge` with `both_orders=False`) favours neither side.
    Skips (unparseable replies) are left out of `n` and reported. The Wilson interval treats the score
    (wins + ties/2)/n as a binomial proportion: the usual interval for a judge that never ties, and
    conservative (wider than needed) with ties, since a ½ outcome varies less than a coin flip.

    Returns `win_rate`, `lower`, `upper` (the interval at `confidence`, default 0.95), `wins`, `ties`,
    `losses`, `skips`, `n` (decided pairs). With n = 0 the rate and bounds are NaN.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"judge_win_rate: confidence={confidence} must be in (0, 1)")
    prompts, candidate, baseline = checked_pairs(prompts, candidate, baseline)
    shown_a = [c if i % 2 == 0 else b for i, (c, b) in enumerate(zip(candidate, baseline, strict=True))]
    shown_b = [b if i % 2 == 0 else c for i, (c, b) in enumerate(zip(candidate, baseline, strict=True))]
    decided = verdicts(judge, prompts, shown_a, shown_b)
    unknown = sorted(set(decided) - {"a", "b", "tie", "skip"})
    if unknown:
        raise ValueError(f"judge_win_rate: the judge returned {unknown}; a judge returns 'a', 'b', 'tie' or 'skip'")
    swap = {"a": "b", "b": "a", "tie": "tie", "skip": "skip"}
    decided = [v if i % 2 == 0 else swap[v] for i, v in enumerate(decided)]  # now "a" = the candidate won
    wins, losses, ties = decided.count("a"), decided.count("b"), decided.count("tie")
    n = wins + losses + ties
    rate = (wins + ties / 2) / n if n else math.nan
    lower, upper = wilson_interval(rate, n, confidence)
    return {"win_rate": rate, "lower": lower, "upper": upper, "wins": wins, "ties": ties, "losses": losses,
            "skips": decided.count("skip"), "n": n}


def wilson_interval(rate: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion `rate` observed over `n` trials (Wilson 1927); NaNs for n = 0."""
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
