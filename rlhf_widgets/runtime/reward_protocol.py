"""One reward protocol, batched: `reward(prompts, responses) -> scores`.

A reward function takes N prompts (strings or chat-message lists) and N response texts and returns N floats
(a list or a (N,) tensor); higher is better. Everything that scores responses speaks it: PPO, GRPO / RLOO,
best-of-N, AI labelers and evaluation. A trained `RewardModel` is one (call it), so is a `RewardEnsemble` of them,
and so is the sandbox's `gold_reward`.

Adapters, for what does not speak it yet:
- `pointwise(fn)`: a per-item scorer `fn(prompt, response) -> float`.
- `trl_reward_function(reward)`: TRL's reward-function signature `f(prompts, completions, **kwargs) -> list`
  (GRPO / RLOO), whose prompts and completions may be conversational.
A saved reward-model or ensemble directory becomes a reward function through `stages.reward.as_reward_function`;
a pairwise judge becomes one through `labeling.JudgeReward`, and a reward function a pairwise judge through
`labeling.RewardModelLabeler`.

A reward that combines several members' scores (`EnsembleReward`: a `RewardEnsemble`) can also hand over each
member's scores from the same pass (`score_with_members`), so a trainer can log their disagreement without scoring
twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from rlhf_widgets.runtime.data import message_text
from rlhf_widgets.runtime.types import Prompt

RewardFunction = Callable[[Sequence[Prompt], Sequence[str]], "Sequence[float] | torch.Tensor"]
"""`reward(prompts, responses) -> N scores` (a list or a (N,) tensor), higher is better."""


def score_responses(reward: RewardFunction, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
    """`reward(prompts, responses)` as a float32 CPU tensor of shape (N,), checked to hold N scores."""
    if len(prompts) != len(responses):
        raise ValueError(f"score_responses: {len(prompts)} prompts but {len(responses)} responses")
    scores = reward(list(prompts), list(responses))
    scores = (scores.detach().float().cpu() if isinstance(scores, torch.Tensor)
              else torch.tensor(list(scores), dtype=torch.float32))
    if scores.shape != (len(responses),):
        raise ValueError(f"the reward function {_name(reward)} returned scores of shape {tuple(scores.shape)} for "
                         f"{len(responses)} responses; it must return one float per response")
    return scores


@runtime_checkable
class EnsembleReward(Protocol):
    """A reward function whose score combines K members' scores (`reward_ensemble.RewardEnsemble` is one)."""

    def member_scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """Every member's scores, shape (K, N)."""
        ...

    def combine(self, member_scores: torch.Tensor) -> torch.Tensor:
        """The reward's scores (N,) from the members' (K, N) — what calling the reward returns."""
        ...


def score_with_members(reward: RewardFunction, prompts: Sequence[Prompt], responses: Sequence[str]
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(scores, member_scores)`: for an `EnsembleReward`, its combined scores (N,) and its members' (K, N) from one
    pass over the members; for any other reward, `score_responses(...)` and None. Float32 CPU tensors."""
    if not isinstance(reward, EnsembleReward):
        return score_responses(reward, prompts, responses), None
    if len(prompts) != len(responses):
        raise ValueError(f"score_with_members: {len(prompts)} prompts but {len(responses)} responses")
    members = torch.as_tensor(reward.member_scores(list(prompts), list(responses))).detach().float().cpu()
    if members.dim() != 2 or members.shape[1] != len(responses):
        raise ValueError(f"the ensemble reward {_name(reward)} returned member scores of shape "
                         f"{tuple(members.shape)} for {len(responses)} responses; it must return (members, responses)")
    return reward.combine(members).float(), members


class pointwise:  # noqa: N801 - used like a function decorator
    """A per-item scorer `fn(prompt, response) -> float` as a batched reward function."""

    def __init__(self, fn: Callable[[Prompt, str], float]) -> None:
        self.fn = fn
        self.__name__ = _name(fn)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return [float(self.fn(p, r)) for p, r in zip(prompts, responses, strict=True)]


class trl_reward_function:  # noqa: N801 - used like a function
    """A reward function in TRL's signature `f(prompts, completions, **kwargs) -> list[float]` (GRPO / RLOO).

    Conversational completions (message lists) are reduced to their last message's text; prompts are passed
    on as they are (strings or message lists). TRL names the metric after `__name__`.
    """

    def __init__(self, reward: RewardFunction) -> None:
        self.reward = reward
        self.__name__ = _name(reward)

    def __call__(self, prompts: list, completions: list, **_: Any) -> list[float]:
        return score_responses(self.reward, prompts, [message_text(c) for c in completions]).tolist()


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
