"""Evaluation numbers (no plotting here; `rlhf_widgets.figures` draws them).

- `reward_report`: held-out accuracy, margin, calibration, chosen/rejected score distributions,
  accuracy against response-length difference (does the RM simply prefer longer?), and agreement
  with a gold scorer's preferences where one exists (the sandbox).
- `win_rate`: how often a policy's responses beat a baseline's under a judge (gold, RM, or a human
  through the labeling store).
- `sequence_kl`: KL(policy ‖ reference) per response, estimated on the policy's own samples.
- `best_of_n_kl`: the analytic KL of best-of-N sampling, log N − (N−1)/N.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import datasets
import numpy as np
import torch

from rlhf_widgets.data import last_user_content, message_text
from rlhf_widgets.models import ModelLike
from rlhf_widgets.ppo.core import logprobs_from_logits
from rlhf_widgets.rewards import RewardFunction, score_responses


def _words(text: str) -> int:
    return len(text.split())


def reward_report(
    reward_model,
    pairs: datasets.Dataset,
    gold: RewardFunction | None = None,
    bins: int = 10,
) -> dict:
    """Evaluate a reward model on held-out preference pairs (`prompt` / `chosen` / `rejected` columns).

    Returns a dict of plain numbers and lists: `accuracy`, `mean_margin`, `n_pairs`,
    `chosen_scores` / `rejected_scores`, `calibration` (bins of predicted P(chosen ≻ rejected) against
    the observed rate, both orderings counted so the curve is symmetric), `length` (accuracy per bin of
    word-count difference, and `prefers_longer`: how often the RM picks the longer response where the
    lengths differ), and — when `gold` is given — `gold_agreement` (share of pairs where the RM orders
    the two responses as the gold scorer does; gold ties excluded) and gold's own `prefers_longer`.
    """
    prompts = [last_user_content(p) for p in pairs["prompt"]]
    chosen = [message_text(c) for c in pairs["chosen"]]
    rejected = [message_text(r) for r in pairs["rejected"]]
    rc = reward_model.score(prompts, chosen, normalize=False).numpy().astype(float)
    rr = reward_model.score(prompts, rejected, normalize=False).numpy().astype(float)
    margin = rc - rr
    correct = margin > 0

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
    dlen = np.array([_words(c) - _words(r) for c, r in zip(chosen, rejected, strict=True)])
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
                                                   np.concatenate([[_words(c) for c in chosen],
                                                                   [_words(r) for r in rejected]]))[0, 1]),
        },
    }
    if gold is not None:
        gc = score_responses(gold, prompts, chosen).numpy()
        gr = score_responses(gold, prompts, rejected).numpy()
        decided = gc != gr
        report["gold_agreement"] = float(((margin > 0) == (gc > gr))[decided].mean())
        report["label_gold_agreement"] = float((gc > gr)[decided].mean())
        gold_longer = np.where(dlen > 0, gc > gr, gc < gr)
        both = differ & decided
        report["length"]["gold_prefers_longer"] = float(gold_longer[both].mean()) if both.any() else float("nan")
    return report


def win_rate(
    prompts: Sequence[str],
    responses: Sequence[str],
    baseline: Sequence[str],
    judge: RewardFunction,
) -> dict:
    """Share of prompts where `responses` beat `baseline` under `judge` (ties count ½).

    `judge` is a reward function `(prompts, responses) -> scores` (`sandbox.gold_reward`, a `RewardModel`, …).
    Returns win_rate, wins, ties, losses, n, and the mean judge score of each side.
    """
    if not len(prompts) == len(responses) == len(baseline):
        raise ValueError(f"win_rate: {len(prompts)} prompts, {len(responses)} responses, {len(baseline)} baseline")
    a = score_responses(judge, prompts, responses).tolist()
    b = score_responses(judge, prompts, baseline).tolist()
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    ties = sum(x == y for x, y in zip(a, b, strict=True))
    n = len(a)
    return {"win_rate": (wins + ties / 2) / n if n else float("nan"), "wins": wins, "ties": ties,
            "losses": n - wins - ties, "n": n, "mean_score": float(np.mean(a)),
            "baseline_mean_score": float(np.mean(b))}


@torch.no_grad()
def sequence_kl(policy, reference, tokenizer, prompts: Sequence, responses: Sequence[str],
                batch_size: int = 32) -> torch.Tensor:
    """KL(policy ‖ reference) of each response (sum over its tokens of log π − log π_ref), shape (N,).

    Unbiased for the sequence KL when `responses` are samples of `policy` at temperature 1.
    """
    from rlhf_widgets.data import as_messages

    out = []
    device = next(policy.parameters()).device
    for start in range(0, len(prompts), batch_size):
        rows = []
        for prompt, response in zip(prompts[start:start + batch_size], responses[start:start + batch_size],
                                    strict=True):
            msgs = as_messages(prompt)
            query = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)
            full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}],
                                                 tokenize=True, return_dict=True)
            rows.append((full["input_ids"], len(query["input_ids"])))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        resp = torch.zeros_like(ids, dtype=torch.float)
        for i, (row, q) in enumerate(rows):  # right padding; position ids are then the defaults
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            resp[i, q : len(row)] = 1
        ids, mask, resp = ids.to(device), mask.to(device), resp.to(device)
        lp = logprobs_from_logits(policy(input_ids=ids, attention_mask=mask).logits[:, :-1], ids[:, 1:])
        lr = logprobs_from_logits(reference(input_ids=ids, attention_mask=mask).logits[:, :-1], ids[:, 1:])
        out.append(((lp - lr) * resp[:, 1:]).sum(1).float().cpu())
    return torch.cat(out)


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


def sample_policy(policy: ModelLike | Callable[[list], Sequence[str]], prompts: Sequence, seed: int = 0,
                  settings=None, batch_size: int = 32) -> list[str]:
    """Responses of `policy` to `prompts`: a model (anything `models.ModelLike` names; sampled at temperature 1)
    or any `callable(prompts) -> list[str]` (e.g. a `BestOfNSampler`)."""
    if _is_sampler(policy):
        out = list(policy(list(prompts)))
        if len(out) != len(prompts):
            raise ValueError(f"sample_policy: the callable returned {len(out)} responses for {len(prompts)} prompts")
        return out
    from rlhf_widgets.models import load_causal_lm

    return _sample_loaded(*load_causal_lm(policy), prompts, seed, settings, batch_size)


def _is_sampler(policy: object) -> bool:
    """A `callable(prompts) -> responses` rather than a model (a loaded torch model is callable too)."""
    return callable(policy) and not isinstance(policy, (torch.nn.Module, tuple))


def _sample_loaded(model, tokenizer, prompts: Sequence, seed: int, settings=None, batch_size: int = 32) -> list[str]:
    from rlhf_widgets.generation import generate

    return [g.text for g in generate(model, tokenizer, list(prompts), settings, batch_size=batch_size, seed=seed)]


def compare_policies(
    policies: dict,
    prompts: Sequence[str],
    baseline: str,
    gold: RewardFunction | None = None,
    reward_model: RewardFunction | None = None,
    kl_reference: ModelLike | None = None,
    seed: int = 0,
):
    """A comparison table (pandas DataFrame, one row per policy) on the same held-out prompts.

    Args:
        policies: name → a model (`models.ModelLike`: a directory, hub id, `ModelConfig`, loaded model) or a
            `callable(prompts) -> responses` (e.g. a `BestOfNSampler`).
        prompts: held-out prompts.
        baseline: the name in `policies` every win rate is measured against (e.g. "SFT").
        gold: a held-out reward function, e.g. the sandbox's `gold_reward` (adds `gold_win_rate`, `gold_mean`).
        reward_model: the reward function trained on (a `RewardModel`; adds `rm_win_rate`, `rm_mean`).
        kl_reference: a model; adds `kl_to_reference`, the mean sequence KL of each model policy's own samples to
            it (nats); a callable reports its `kl` attribute if it has one (best-of-N: log N − (N−1)/N), else NaN.
        seed: sampling seed (the baseline is sampled with `seed`, the others with `seed + 1`).

    Columns: gold/RM win rate over the baseline (ties ½), mean scores, KL, mean words, the share of
    non-empty responses, and the first response as an example. `table.attrs["responses"]` holds
    every policy's responses (name → list), e.g. for `evaluation_store`.
    """
    import pandas as pd

    if baseline not in policies:
        raise ValueError(f"compare_policies: baseline {baseline!r} is not one of {list(policies)}")
    from rlhf_widgets.models import load_causal_lm

    prompts = list(prompts)
    ref = load_causal_lm(kl_reference) if kl_reference is not None else None
    # one pass per policy: load it once, sample, and measure its KL while it is in memory
    responses, kls = {}, {}
    for name, policy in policies.items():
        policy_seed = seed if name == baseline else seed + 1
        if _is_sampler(policy):  # e.g. best-of-N: its analytic KL when it knows one
            responses[name] = sample_policy(policy, prompts, seed=policy_seed)
            kls[name] = float(getattr(policy, "kl", float("nan")))
            continue
        model, tokenizer = load_causal_lm(policy)
        responses[name] = _sample_loaded(model, tokenizer, prompts, policy_seed)
        if ref is not None:
            kls[name] = float(sequence_kl(model, ref[0], ref[1], prompts, responses[name]).mean())
        del model
    base = responses[baseline]
    rows = {}
    for name, resp in responses.items():
        row: dict = {}
        if gold is not None:
            wr = win_rate(prompts, resp, base, gold)
            row["gold_win_rate"], row["gold_mean"] = wr["win_rate"], wr["mean_score"]
        if reward_model is not None:
            wr = win_rate(prompts, resp, base, reward_model)
            row["rm_win_rate"], row["rm_mean"] = wr["win_rate"], wr["mean_score"]
        if ref is not None:
            row["kl_to_reference"] = kls[name]
        row["mean_words"] = float(np.mean([_words(r) for r in resp]))
        row["non_empty"] = float(np.mean([bool(r.strip()) for r in resp]))
        row["example"] = resp[0]
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.attrs["responses"] = responses  # name → responses, e.g. for a blind human comparison
    return table


def evaluation_store(path, prompts: Sequence[str], candidate: Sequence[str], baseline: Sequence[str],
                     candidate_name: str, baseline_name: str):
    """A `PreferenceStore` of blind pairs (candidate vs baseline per prompt) for human evaluation.

    Label it with `LabelingPanel(store, evaluation=True)` (sources hidden, sides randomised); the
    session's `tally()` then gives the candidate's win rate. Pairs are added only to an empty store,
    so re-running a notebook does not duplicate them; prompts where either response is empty are
    left out (nothing to judge).
    """
    from rlhf_widgets.labeling import PreferenceStore

    store = PreferenceStore(path)
    if len(store) == 0:
        store.add_pairs(
            {"prompt": p, "response_a": a, "response_b": b,
             "metadata": {"a": {"model": candidate_name}, "b": {"model": baseline_name}}}
            for p, a, b in zip(prompts, candidate, baseline, strict=True) if a.strip() and b.strip()
        )
    return store
