"""The reward stage in one place: a reward model (`model`), K of them as one ensemble (`ensemble`), the report that
measures either the way the stages use it (`report`), and `as_reward_function`, which turns a saved directory of
either into a reward function."""

from __future__ import annotations

import os
from pathlib import Path

from rlhf_widgets.runtime.reward_protocol import RewardFunction
from rlhf_widgets.stages.reward.ensemble import (
    ENSEMBLE_META,
    OBJECTIVES,
    RewardEnsemble,
    RewardEnsembleResult,
    train_reward_ensemble,
    weight_averaged,
)
from rlhf_widgets.stages.reward.model import (
    REWARD_META,
    RewardModel,
    RewardModelResult,
    RewardStageConfig,
    train_reward_model,
)
from rlhf_widgets.stages.reward.report import reward_report

__all__ = [
    "OBJECTIVES",
    "RewardEnsemble",
    "RewardEnsembleResult",
    "RewardModel",
    "RewardModelResult",
    "RewardStageConfig",
    "as_reward_function",
    "reward_report",
    "train_reward_ensemble",
    "train_reward_model",
    "weight_averaged",
]


def as_reward_function(reward: RewardFunction | str | os.PathLike) -> RewardFunction:
    """`reward` as a reward function: a directory written by `RewardModel.save` or `RewardEnsemble.save` is loaded;
    a callable is returned as it is. Raises FileNotFoundError for a path that is neither, naming it, and TypeError
    for anything else, naming what it got."""
    if isinstance(reward, (str, os.PathLike)):
        path = Path(reward)
        if (path / ENSEMBLE_META).is_file():
            return RewardEnsemble.load(path)
        if (path / REWARD_META).is_file():
            return RewardModel.load(path)
        raise FileNotFoundError(f"reward={str(reward)!r} is neither a saved reward model (no {REWARD_META}) nor a "
                                f"saved reward ensemble (no {ENSEMBLE_META})")
    if callable(reward):
        return reward
    raise TypeError(f"reward must be a reward function `(prompts, responses) -> scores` (a RewardModel, a "
                    f"RewardEnsemble) or a saved directory of either, got {type(reward).__name__}")
