"""Overoptimization (Gao et al. 2022): proxy and gold reward against √KL, for PPO over its updates and for
best-of-N over N (whose KL is known in closed form). Numbers only; `views.overoptimization_figure` draws them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rlhf_widgets.rewards import RewardFunction, score_responses


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-N ‖ base) = log N − (N−1)/N (Stiennon et al. 2020; Hilton & Gao 2022)."""
    if n < 1:
        raise ValueError(f"best_of_n_kl: n={n} must be >= 1")
    return math.log(n) - (n - 1) / n


def ppo_overoptimization_curve(metrics, window: int = 5) -> list[dict]:
    """Points `{"step", "sqrt_kl", "proxy", "gold"}` of a PPO run's MetricsLog (needs `gold/score`).

    `proxy` is `objective/scores` (the reward model's score of the policy's samples), `gold` is
    `gold/score`, the x axis is √ of `objective/kl` (mean sequence KL to the reference, clipped at 0).
    Each point averages `window` consecutive updates (default 5) to tame rollout noise.
    """
    steps, kl = metrics.series("objective/kl")
    _, proxy = metrics.series("objective/scores")
    _, gold = metrics.series("gold/score")
    if not steps or not gold:
        raise ValueError("ppo_overoptimization_curve: the log has no objective/kl or gold/score "
                         "(run PPO with gold=... on the sandbox)")
    if window < 1:
        raise ValueError(f"ppo_overoptimization_curve: window={window} must be >= 1")
    n = min(len(kl), len(proxy), len(gold))
    points = []
    for start in range(0, n - window + 1, window):
        sl = slice(start, start + window)
        points.append({"step": steps[start + window - 1],
                       "sqrt_kl": math.sqrt(max(0.0, float(np.mean(kl[sl])))),
                       "proxy": float(np.mean(proxy[sl])), "gold": float(np.mean(gold[sl]))})
    return points


def best_of_n_curve(result, prompts: Sequence, gold: RewardFunction,
                    ns: Sequence[int] | None = None) -> list[dict]:
    """Points `{"n", "sqrt_kl", "proxy", "gold"}` of best-of-m for m in `ns` (default 1, 2, 4, … ≤ N).

    Reuses the candidates of one `best_of_n` run (best of the first m); KL is the analytic
    log m − (m−1)/m.
    """
    ns = list(ns) if ns is not None else [m for m in (1, 2, 4, 8, 16, 32, 64, 128) if m <= result.n]
    points = []
    for m in ns:
        responses, scores = result.best_of(m)
        golds = score_responses(gold, prompts, responses).tolist()
        points.append({"n": m, "sqrt_kl": math.sqrt(best_of_n_kl(m)), "proxy": float(np.mean(scores)),
                       "gold": float(np.mean(golds))})
    return points
