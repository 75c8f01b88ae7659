"""Evaluation numbers (no plotting here; `figures.py` draws them).

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

from rlhf_widgets.data import last_user_content


def _text(message_list_or_str) -> str:
    if isinstance(message_list_or_str, str):
        return message_list_or_str
    return message_list_or_str[-1]["content"]


def _words(text: str) -> int:
    return len(text.split())


def reward_report(
    reward_model,
    pairs: datasets.Dataset,
    gold: Callable[[str, str], float] | None = None,
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
    chosen = [_text(c) for c in pairs["chosen"]]
    rejected = [_text(r) for r in pairs["rejected"]]
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
        gc = np.array([gold(p_, c) for p_, c in zip(prompts, chosen, strict=True)])
        gr = np.array([gold(p_, r) for p_, r in zip(prompts, rejected, strict=True)])
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
    judge: Callable[[str, str], float] | object,
) -> dict:
    """Share of prompts where `responses` beat `baseline` under `judge` (ties count ½).

    `judge` is a `score(prompt, response) -> float` function (e.g. `gold_score`) or an object with
    `score(prompts, responses) -> tensor` (a `RewardModel`). Returns win_rate, wins, ties, losses, n,
    and the mean judge score of each side.
    """
    if not len(prompts) == len(responses) == len(baseline):
        raise ValueError(f"win_rate: {len(prompts)} prompts, {len(responses)} responses, {len(baseline)} baseline")
    if hasattr(judge, "score"):
        a = judge.score(list(prompts), list(responses)).tolist()
        b = judge.score(list(prompts), list(baseline)).tolist()
    else:
        a = [judge(p, r) for p, r in zip(prompts, responses, strict=True)]
        b = [judge(p, r) for p, r in zip(prompts, baseline, strict=True)]
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    ties = sum(x == y for x, y in zip(a, b, strict=True))
    n = len(a)
    return {"win_rate": (wins + ties / 2) / n if n else float("nan"), "wins": wins, "ties": ties,
            "losses": n - wins - ties, "n": n, "mean_score": float(np.mean(a)), "baseline_mean_score": float(np.mean(b))}


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
        lp = _token_logprobs(policy, ids, mask)
        lr = _token_logprobs(reference, ids, mask)
        out.append(((lp - lr) * resp[:, 1:]).sum(1).float().cpu())
    return torch.cat(out)


def _token_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-N ‖ base) = log N − (N−1)/N (Stiennon et al. 2020; Hilton & Gao 2022)."""
    if n < 1:
        raise ValueError(f"best_of_n_kl: n={n} must be >= 1")
    return math.log(n) - (n - 1) / n
