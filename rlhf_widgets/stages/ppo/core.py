"""PPO-RLHF as pure tensor functions: KL estimators, shaped rewards, whitening, GAE, clipped losses (and their
stats over pieces of a micro-batch combined).

Shapes: ``B`` sequences × ``T`` response tokens; ``mask`` (B, T) is 1 on real response tokens (up to
and including the first EOS) and 0 after. Every function leaves masked-out positions at 0 (or ignores
them) so padding never leaks into statistics.

Sources: Ziegler et al. 2019 "Fine-Tuning Language Models from Human Preferences" (KL-shaped reward,
adaptive KL controller); Huang et al. 2022/2024 "The N+ Implementation Details of RLHF with PPO";
Schulman et al. 2016 (GAE) and 2017 (clipped surrogate); Schulman's note on KL approximations
(http://joschu.net/blog/kl-approx.html) for k1/k3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlhf_widgets.runtime.logprobs import (  # noqa: F401 - part of the PPO math's namespace
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
)

KL_ESTIMATORS = ("k1", "k3")


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy ‖ reference) from tokens sampled by the policy.

    ``k1 = log π − log π_ref`` (unbiased, can be negative per token); ``k3 = (r − 1) − log r`` with
    ``r = π_ref / π`` (unbiased, always ≥ 0, lower variance).
    """
    if kind == "k1":
        return logprobs - ref_logprobs
    if kind == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {kind!r}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` (B, T) → (B,); rows without any 1 give 0."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


def compute_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KL-shaped per-token rewards (Ziegler et al. 2019): ``−β·KL_t`` everywhere, plus the sequence
    score at the last real token (the EOS slot).

    Args: scores (B,), logprobs / ref_logprobs / mask (B, T), kl_coef β, kind "k1" or "k3".
    Returns ``(rewards, non_score_rewards, kl)``, each (B, T) and 0 outside the mask.
    """
    mask = mask.to(logprobs.dtype)
    kl = per_token_kl(logprobs, ref_logprobs, kind) * mask
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score, kl


def apply_missing_eos_penalty(scores: torch.Tensor, contains_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every response that was cut off before EOS (N+ #24)."""
    return torch.where(contains_eos.bool(), scores, scores - penalty)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the response.

    ``δ_t = r_t + γ·V_{t+1} − V_t``, ``A_t = δ_t + γλ·A_{t+1}``; the value after the last real token
    is 0 (the episode ends at EOS). Args (B, T) each. Returns ``(advantages, returns = A + V)``,
    0 outside the mask.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    cliprange: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate loss (Schulman et al. 2017): mean over the mask of
    ``max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))`` with ``ρ = exp(logprobs − old_logprobs)``.

    Returns the loss and diagnostics: ``clipfrac`` (share of tokens where the clipped term won),
    ``approx_kl`` (½·E[(log ρ)²], http://joschu.net/blog/kl-approx.html), ``ratio_mean``, ``ratio_var``.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask).item(),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_var": masked_var(ratio, mask).item() if mask.sum() > 1 else 0.0,
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
    cliprange_value: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss: ``½·mean(max((V − R)², (V_old + clip(V − V_old, ±c) − R)²))`` over the mask.

    ``cliprange_value`` None or 0 turns clipping off (plain ½·MSE; clipping to ±0 would freeze the value
    function at its rollout estimate). Returns the loss and ``clipfrac``.
    """
    unclipped = (values - returns) ** 2
    if not cliprange_value:
        return 0.5 * masked_mean(unclipped, mask), {"clipfrac": 0.0}
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(values.dtype), mask).item()
    return loss, {"clipfrac": clipfrac}


def combined_stats(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """The masked-mean stats of `ppo_policy_loss` / `ppo_value_loss` over pieces, each (stats, its token
    count), as over their union: means weighted by tokens; `ratio_var` (Bessel-corrected) by the pieces' sums of
    squares plus their means' spread (the law of total variance)."""
    total = sum(count for _, count in parts)
    if len(parts) == 1 or not total:
        return parts[0][0]
    combined = {key: sum(part[key] * count for part, count in parts) / total for key in parts[0][0]}
    if "ratio_var" in combined:
        mean = combined["ratio_mean"]
        squares = sum(part["ratio_var"] * max(count - 1, 0) + count * (part["ratio_mean"] - mean) ** 2
                      for part, count in parts)
        combined["ratio_var"] = squares / (total - 1) if total > 1 else 0.0
    return combined


@dataclass
class FixedKLController:
    """A constant KL coefficient β."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient stays fixed."""


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019's proportional controller: move β so the KL tracks ``target``.

    ``β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n_steps/horizon)``, with ``n_steps`` the episodes in
    the update. Defaults: init 0.15, target 6 nats, horizon 10 000 episodes.
    """

    value: float = 0.15
    target: float = 6.0
    horizon: float = 10_000

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust β after an update whose mean sequence KL was ``current_kl``."""
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
