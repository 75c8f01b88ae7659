"""Best-of-N with a pairwise judge as the reward: N samples per prompt, the winner of a knockout among them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_widgets.evaluation.judges import verdicts
from rlhf_widgets.labeling.labelers import Labeler
from rlhf_widgets.runtime.models import load_chat_model
from rlhf_widgets.stages.best_of import sample_candidates

if TYPE_CHECKING:
    from rlhf_widgets.runtime.generation import SamplingSettings
    from rlhf_widgets.runtime.types import Prompt


@dataclass
class JudgedBestOfN:
    """Per prompt: the knockout winner among N candidates, its index, and every candidate."""

    responses: list[str]
    winners: list[int]
    """index of the chosen candidate per prompt"""
    candidates: list[list[str]]
    comparisons: int
    """pairs judged in all (N − 1 per prompt)"""
    n: int

    @property
    def kl_upper_bound(self) -> float:
        """KL(selection ‖ sampler) ≤ log N nats for any rule that keeps one of N samples (the rule's density
        is at most N times the sampler's). It is log N − (N−1)/N, as for reward best-of-N, only when the
        judge orders the candidates transitively without ties."""
        return math.log(self.n)


def knockout(judge: Labeler, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]]) -> tuple[list[int], int]:
    """The winner's index among each prompt's candidates in a single-elimination tournament, and the number
    of pairs judged.

    Round by round, candidates meet in listed order (0 vs 1, 2 vs 3, …; an odd one out goes through). A tie
    or skip keeps the earlier candidate: samples are exchangeable, so this favours no kind of answer. Each
    round judges every prompt's matches in one batched call. A prompt's candidate lists may differ in
    length; each must hold at least one.
    """
    prompts = list(prompts)
    if len(prompts) != len(candidates):
        raise ValueError(f"knockout: {len(prompts)} prompts but {len(candidates)} candidate lists")
    for i, cands in enumerate(candidates):
        if isinstance(cands, str) or len(cands) == 0:
            raise ValueError(f"knockout: candidates[{i}] must be a non-empty list of responses, got {cands!r}")
    alive = [list(range(len(cands))) for cands in candidates]  # per prompt: indices still in the tournament
    comparisons = 0
    while any(len(a) > 1 for a in alive):
        # this round's matches of every prompt: (prompt, earlier candidate, later candidate)
        matches = [(p, a[k], a[k + 1]) for p, a in enumerate(alive) for k in range(0, len(a) - 1, 2)]
        decided = verdicts(judge, [prompts[p] for p, _, _ in matches], [candidates[p][x] for p, x, _ in matches],
                           [candidates[p][y] for p, _, y in matches])
        comparisons += len(matches)
        next_alive: list[list[int]] = [[] for _ in alive]
        for (p, x, y), verdict in zip(matches, decided, strict=True):
            next_alive[p].append(y if verdict == "b" else x)
        for p, a in enumerate(alive):
            if len(a) % 2:  # the odd one out goes through
                next_alive[p].append(a[-1])
        alive = next_alive
    return [a[0] for a in alive], comparisons


def best_of_n_with_judge(
    prompts: Sequence[Prompt], *, model: Any, judge: Labeler, n: int = 8, settings: SamplingSettings | None = None,
    seed: int = 0, batch_size: int = 64,
) -> JudgedBestOfN:
    """Best-of-N with a pairwise judge as the reward: sample `n` responses per prompt from `model` (as
    `best_of_n` does: seed + i for the i-th sample) and keep the winner of a `knockout` among them (N − 1
    judged pairs per prompt; 2(N − 1) judge prompts for a `PairwiseJudge` asking both orders). No reference
    answer is needed: the judge only ever compares two candidates.

    `model` is a hub id, a local path, a `ModelConfig` or a loaded `(model, tokenizer)` pair; `judge` any
    labeler (a `PairwiseJudge`, `RewardModelJudge`, `gold_preference`).
    """
    if n < 1:
        raise ValueError(f"best_of_n_with_judge: n={n} must be >= 1")
    loaded, tokenizer = load_chat_model(model)
    prompts = list(prompts)
    candidates = sample_candidates(loaded, tokenizer, prompts, n, settings, seed=seed, batch_size=batch_size)
    winners, comparisons = knockout(judge, prompts, candidates)
    return JudgedBestOfN(responses=[c[w] for c, w in zip(candidates, winners, strict=True)], winners=winners,
                         candidates=candidates, comparisons=comparisons, n=n)
