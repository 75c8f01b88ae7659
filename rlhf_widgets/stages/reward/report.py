"""How good is a reward model: held-out accuracy, margin, calibration, score distributions, accuracy against
response-length difference (does it simply prefer longer answers?), and agreement with a gold scorer's
preferences where one exists (the sandbox); for an ensemble, each member's and how often they disagree. Numbers
only; `views.reward_report_figures` draws them."""

from __future__ import annotations

import math

import datasets
import numpy as np

from rlhf_widgets.runtime.data import message_text, words
from rlhf_widgets.runtime.reward_protocol import RewardFunction, score_responses
from rlhf_widgets.stages.reward.ensemble import RewardEnsemble


def _other_prompts(prompts: list) -> list | None:
    """For each prompt, the next one in the list (cyclically) that differs from it; None with fewer than two
    distinct prompts."""
    keys = [p if isinstance(p, str) else repr(p) for p in prompts]
    if len(set(keys)) < 2:
        return None
    n = len(prompts)
    return [next(prompts[(i + k) % n] for k in range(1, n) if keys[(i + k) % n] != keys[i]) for i in range(n)]


def reward_report(
    reward_model,
    pairs: datasets.Dataset,
    gold: RewardFunction | None = None,
    bins: int = 10,
) -> dict:
    """Evaluate a reward model on held-out preference pairs (`prompt` / `chosen` / `rejected` columns).

    Each prompt is scored as given: a multi-turn prompt with all its turns, as the reward model trained on it and
    as PPO scores it. Returns a dict of plain numbers and lists: `accuracy`, `mean_margin`, `n_pairs`,
    `chosen_scores` / `rejected_scores`, `calibration` (bins of predicted P(chosen ≻ rejected) against
    the observed rate, both orderings counted so the curve is symmetric), `length` (accuracy per bin of
    word-count difference, and `prefers_longer`: how often the RM picks the longer response where the
    lengths differ), and — when `gold` is given — `gold_agreement` (share of pairs where the RM orders
    the two responses as the gold scorer does; gold ties excluded) and gold's own `prefers_longer`.

    `prompt_dependence` (with two or more distinct prompts) says whether the reward model reads the question: each
    chosen answer is scored again under the next pair's different prompt; `mean_gap` is its own prompt's score minus
    that one, on average (in the scores' units; `scale` is their std over the pairs' answers), and
    `own_prompt_higher` the share of answers that score higher under their own prompt. A gap near 0 means the model
    scores an answer the same whatever was asked — PPO can then find one answer for every question
    (`RewardStageConfig.mismatched_pairs` trains against it).

    A `RewardEnsemble`'s numbers above are those of its combined score (which is on the members' normalised
    scale: an ensemble has no raw one), and `ensemble` adds `objective`, `uncertainty_weight`,
    `member_accuracy` (one per member), `member_gold_agreement` (with `gold`) and `disagreement`: the share of
    pairs on which the members do not all prefer the same response.
    """
    prompts = list(pairs["prompt"])
    chosen = [message_text(c) for c in pairs["chosen"]]
    rejected = [message_text(r) for r in pairs["rejected"]]
    if isinstance(reward_model, RewardEnsemble):
        member_chosen, member_rejected = (reward_model.member_scores(prompts, chosen),
                                          reward_model.member_scores(prompts, rejected))  # (K, N) each
        rc = reward_model.combine(member_chosen).numpy().astype(float)
        rr = reward_model.combine(member_rejected).numpy().astype(float)
        member_margin = (member_chosen - member_rejected).numpy().astype(float)
    else:
        rc = reward_model.score(prompts, chosen, normalize=False).numpy().astype(float)
        rr = reward_model.score(prompts, rejected, normalize=False).numpy().astype(float)
    margin = rc - rr
    correct = margin > 0
    others = _other_prompts(prompts)
    if others is not None:  # each chosen answer again, under the next pair's (different) prompt
        if isinstance(reward_model, RewardEnsemble):
            ro = reward_model.combine(reward_model.member_scores(others, chosen)).numpy().astype(float)
        else:
            ro = reward_model.score(others, chosen, normalize=False).numpy().astype(float)
        prompt_gap = rc - ro

    # calibration: P(first ≻ second) = σ(r1 − r2) over both orderings of every pair
    p = 1 / (1 + np.exp(-np.concatenate([margin, -margin])))
    outcome = np.concatenate([np.ones_like(margin), np.zeros_like(margin)])
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    calibration = [
        {"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "predicted": float(p[which == b].mean()),
         "observed": float(outcome[which == b].mean()), "count": int((which == b).sum())}
        for b in range(bins) if (which == b).any()
    ]
    ece = sum(c["count"] * abs(c["predicted"] - c["observed"]) for c in calibration) / len(p)

    # length: word-count difference chosen − rejected
    dlen = np.array([words(c) - words(r) for c, r in zip(chosen, rejected, strict=True)])
    length_bins = []
    for low, high in ((-math.inf, -10), (-10, -3), (-3, 3), (3, 10), (10, math.inf)):
        sel = (dlen >= low) & (dlen < high)
        if sel.any():
            length_bins.append({"low": low, "high": high, "accuracy": float(correct[sel].mean()),
                                "count": int(sel.sum())})
    differ = dlen != 0
    rm_longer = np.where(dlen > 0, margin > 0, margin < 0)
    report = {
        "n_pairs": len(margin),
        "accuracy": float(correct.mean()),
        "mean_margin": float(margin.mean()),
        "chosen_scores": rc.tolist(),
        "rejected_scores": rr.tolist(),
        "calibration": calibration,
        "expected_calibration_error": float(ece),
        "length": {
            "bins": length_bins,
            "prefers_longer": float(rm_longer[differ].mean()) if differ.any() else float("nan"),
            "score_length_corr": float(np.corrcoef(np.concatenate([rc, rr]),
                                                   np.concatenate([[words(c) for c in chosen],
                                                                   [words(r) for r in rejected]]))[0, 1]),
        },
    }
    if others is not None:
        report["prompt_dependence"] = {"mean_gap": float(prompt_gap.mean()),
                                       "scale": float(np.concatenate([rc, rr]).std()),
                                       "own_prompt_higher": float((prompt_gap > 0).mean())}
    if gold is not None:
        gc = score_responses(gold, prompts, chosen).numpy()
        gr = score_responses(gold, prompts, rejected).numpy()
        decided = gc != gr
        report["gold_agreement"] = float(((margin > 0) == (gc > gr))[decided].mean())
        report["label_gold_agreement"] = float((gc > gr)[decided].mean())
        gold_longer = np.where(dlen > 0, gc > gr, gc < gr)
        both = differ & decided
        report["length"]["gold_prefers_longer"] = float(gold_longer[both].mean()) if both.any() else float("nan")
    if isinstance(reward_model, RewardEnsemble):
        prefers_chosen = member_margin > 0  # (K, N)
        report["ensemble"] = {
            "objective": reward_model.objective,
            "uncertainty_weight": reward_model.uncertainty_weight,
            "member_accuracy": prefers_chosen.mean(axis=1).tolist(),
            "disagreement": float(1 - (prefers_chosen.all(axis=0) | ~prefers_chosen.any(axis=0)).mean()),
        }
        if gold is not None:
            report["ensemble"]["member_gold_agreement"] = [
                float((member == (gc > gr))[decided].mean()) for member in prefers_chosen]
    return report
