"""Best-of-N: sample N responses per prompt, keep the one the reward model scores highest.

The simplest RLHF baseline; its KL to the sampling policy is known in closed form,
log N − (N−1)/N (`best_of_n_kl`), which places it on the same √KL axis as PPO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf_widgets.runtime.data import prompt_list
from rlhf_widgets.runtime.generation import SamplingSettings, generate
from rlhf_widgets.runtime.models import ModelLike, load_causal_lm
from rlhf_widgets.runtime.reward_protocol import RewardFunction, score_responses
from rlhf_widgets.stages.reward import as_reward_function


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-N ‖ base) = log N − (N−1)/N (Stiennon et al. 2020; Hilton & Gao 2022)."""
    if n < 1:
        raise ValueError(f"best_of_n_kl: n={n} must be >= 1")
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfN:
    """Per prompt: the chosen response, its score, and all N candidates with their scores."""

    responses: list[str]
    scores: list[float]
    candidates: list[list[str]]
    candidate_scores: list[list[float]]
    n: int

    @property
    def kl(self) -> float:
        """Analytic KL(best-of-N ‖ sampler) in nats."""
        return best_of_n_kl(self.n)

    def best_of(self, m: int) -> tuple[list[str], list[float]]:
        """Best of the first `m` ≤ n candidates (reuses the samples: the curve over N comes for free)."""
        if not 1 <= m <= self.n:
            raise ValueError(f"best_of: m={m} must be in [1, {self.n}]")
        picks = [max(range(m), key=lambda i: s[i]) for s in self.candidate_scores]
        return ([c[i] for c, i in zip(self.candidates, picks, strict=True)],
                [s[i] for s, i in zip(self.candidate_scores, picks, strict=True)])

    def rescored(self, prompts: Sequence, reward: RewardFunction) -> BestOfN:
        """The same N candidates per prompt picked by another reward function: what `reward` would have chosen from
        exactly these samples (e.g. an unbiased reward model against a flawed proxy, or a conservative ensemble
        objective against its mean). `prompts` are the ones the candidates answer, in order."""
        prompts = prompt_list(prompts)
        if len(prompts) != len(self.candidates):
            raise ValueError(f"rescored: {len(prompts)} prompts for the candidates of {len(self.candidates)}")
        return _picked(prompts, self.candidates, as_reward_function(reward), self.n)


def _picked(prompts: list, candidates: list[list[str]], reward: RewardFunction, n: int) -> BestOfN:
    """Every candidate scored by `reward` after its prompt, and the highest-scoring one of each prompt picked."""
    flat = [c for cs in candidates for c in cs]
    rows = score_responses(reward, [p for p in prompts for _ in range(n)], flat).view(len(prompts), n).tolist()
    picks = [max(range(n), key=lambda i: s[i]) for s in rows]
    return BestOfN(responses=[c[i] for c, i in zip(candidates, picks, strict=True)],
                   scores=[s[i] for s, i in zip(rows, picks, strict=True)], candidates=candidates,
                   candidate_scores=rows, n=n)


def sample_candidates(model, tokenizer, prompts: list, n: int, settings: SamplingSettings | None = None, *,
                      seed: int = 0, batch_size: int = 64, show_progress: bool = False) -> list[list[str]]:
    """N sampled responses per prompt (`[prompt][i]`), the i-th of each drawn with seed `seed + i`: the candidates
    best-of-N picks from, whatever picks them (a reward function here, a judge's knockout in
    `evaluation.judged_best_of_n`)."""
    candidates: list[list[str]] = [[] for _ in prompts]
    for i in range(n):
        for j, g in enumerate(generate(model, tokenizer, prompts, settings, batch_size=batch_size, seed=seed + i,
                                       show_progress=show_progress)):
            candidates[j].append(g.text)
    return candidates


def best_of_n(
    prompts: Sequence, *, model: ModelLike, reward: RewardFunction, n: int = 8,
    settings: SamplingSettings | None = None, seed: int = 0, batch_size: int = 64, show_progress: bool = False,
) -> BestOfN:
    """Sample `n` responses per prompt from `model` with `settings` and pick the one `reward` scores highest.

    `reward` is a reward function `(prompts, responses) -> scores` (a `RewardModel`, a saved reward-model
    directory, `sandbox.gold_reward`, a `labeling.JudgeReward`, …).
    """
    if n < 1:
        raise ValueError(f"best_of_n: n={n} must be >= 1")
    loaded, tokenizer = load_causal_lm(model)
    reward = as_reward_function(reward)
    prompts = prompt_list(prompts)
    candidates = sample_candidates(loaded, tokenizer, prompts, n, settings, seed=seed, batch_size=batch_size,
                                   show_progress=show_progress)
    return _picked(prompts, candidates, reward, n)


class BestOfNSampler:
    """`callable(prompts) -> responses`: best-of-N of a model under a reward function.

    Plugs into `evaluation.compare_policies` as a policy; `last` keeps the latest `BestOfN` (all candidates and
    scores), from which `evaluation.best_of_n_curve` reads best-of-m for every m ≤ N.
    """

    def __init__(self, *, model: ModelLike, reward: RewardFunction, n: int = 8,
                 settings: SamplingSettings | None = None, seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"BestOfNSampler: n={n} must be >= 1")
        self.model, self.reward, self.n = model, reward, n
        self.settings, self.seed = settings, seed
        self.last: BestOfN | None = None

    @property
    def kl(self) -> float:
        """Analytic KL(best-of-N ‖ sampler) in nats."""
        return best_of_n_kl(self.n)

    def __call__(self, prompts: Sequence) -> list[str]:
        self.last = best_of_n(prompts, model=self.model, reward=self.reward, n=self.n, settings=self.settings,
                              seed=self.seed)
        return self.last.responses
