"""Log-probabilities and masked statistics over token sequences: the math every stage that scores tokens shares.

Shapes: ``B`` sequences × ``T`` tokens; ``mask`` (B, T) is 1 on the positions that count and 0 on padding, so
padding never leaks into a statistic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the mask (Bessel-corrected by default, as TRL's ``masked_var``)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"masked_var needs at least 2 unmasked values for an unbiased estimate, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``(x − mean) / std`` over the mask; ``shift_mean=False`` keeps the mean (reward whitening).

    ``sum_across``: a function summing a tensor over every process (an all-reduce) — the mean and the
    (Bessel-corrected) variance are then those of all processes' unmasked values together, so each process
    whitens its share with the same statistics; default None: this process's values only.
    Masked-out positions come back as 0.
    """
    if sum_across is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mask = mask.to(x.dtype)
        n, total = sum_across(torch.stack([mask.sum(), (x * mask).sum()]))
        mean = total / n.clamp(min=1)
        if n < 2:
            raise ValueError(f"masked_whiten needs at least 2 unmasked values across processes, got {int(n)}")
        var = sum_across(((x - mean) ** 2 * mask).sum()) / (n - 1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each label under ``softmax(logits / temperature)``: (B, T, V), (B, T) → (B, T).

    The same temperature the rollout sampled with must divide the logits here, or the "old" log-probs
    describe a different distribution than the one that produced the tokens (N+ details, #13).
    """
    logits = logits.float() / temperature
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per position: (..., V) → (...)."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
