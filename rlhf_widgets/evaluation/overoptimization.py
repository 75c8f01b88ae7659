"""Overoptimization (Gao et al. 2022): proxy and gold reward against √KL, for PPO over its updates and for
best-of-N over N (whose KL is known in closed form). Numbers only; `views.overoptimization_figure` draws them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rlhf_widgets.runtime.reward_protocol import RewardFunction, score_responses
from rlhf_widgets.stages.best_of import best_of_n_kl


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

    Reuses the N candidates per prompt of one `best_of_n` run: each point is the expected proxy and gold score of
    the proxy's pick among m candidates drawn from those N, averaged over every m-subset — the unbiased estimator,
    computed in closed form (the candidate ranked r-th lowest by the proxy is the pick of C(r−1, m−1) of the C(N, m)
    subsets). Every point uses all N samples, so the curve is far less noisy than "best of the first m", and its
    last point (m = N) is the run's own pick. Gold scores each candidate once. KL is the analytic
    log m − (m−1)/m.
    """
    ns = list(ns) if ns is not None else [m for m in (1, 2, 4, 8, 16, 32, 64, 128) if m <= result.n]
    n = result.n
    if any(not 1 <= m <= n for m in ns):
        raise ValueError(f"best_of_n_curve: every m in {ns} must be in [1, {n}]")
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat = [c for cs in result.candidates for c in cs]
    golds = score_responses(gold, flat_prompts, flat).view(len(prompts), n).double().numpy()
    proxy = np.asarray(result.candidate_scores, dtype=np.float64)
    order = np.argsort(proxy, axis=1, kind="stable")  # ascending: rank r-1 at column r-1
    proxy_sorted = np.take_along_axis(proxy, order, axis=1)
    gold_sorted = np.take_along_axis(golds, order, axis=1)
    points = []
    for m in ns:
        weights = np.array([math.comb(r - 1, m - 1) for r in range(1, n + 1)], dtype=np.float64) / math.comb(n, m)
        points.append({"n": m, "sqrt_kl": math.sqrt(best_of_n_kl(m)), "proxy": float((proxy_sorted @ weights).mean()),
                       "gold": float((gold_sorted @ weights).mean())})
    return points
