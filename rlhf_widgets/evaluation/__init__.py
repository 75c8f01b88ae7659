"""Evaluation: how good are the policies and the reward model, and how do they fail.

- `compare`: policies on held-out prompts — win rates under a judge, KL to a reference, length; blind pairs.
- `reward_model`: a reward model's accuracy, calibration, length bias and gold agreement.
- `overoptimization`: proxy vs gold reward against √KL (PPO updates, best-of-N).
- `judges`: pairwise LLM judges (RLAIF), judge win rates, judged best-of-N, constitutional critique → revise.
- `leaderboard`: Bradley–Terry (Elo-scale) ratings with bootstrap intervals from any pairwise judgments.
"""

from rlhf_widgets.evaluation.compare import compare_policies, evaluation_store, sample_policy, sequence_kl, win_rate
from rlhf_widgets.evaluation.overoptimization import best_of_n_curve, best_of_n_kl, ppo_overoptimization_curve
from rlhf_widgets.evaluation.reward_model import reward_report

__all__ = [
    "best_of_n_curve",
    "best_of_n_kl",
    "compare_policies",
    "evaluation_store",
    "ppo_overoptimization_curve",
    "reward_report",
    "sample_policy",
    "sequence_kl",
    "win_rate",
]
