"""Evaluation: how good are the policies and the reward model, and how do they fail.

- `compare`: policies on held-out prompts — win rates under a judge, KL to a reference, length; blind pairs.
- `reward_model`: a reward model's accuracy, calibration, length bias and gold agreement.
- `overoptimization`: proxy vs gold reward against √KL (PPO updates, best-of-N).
- `judges`: pairwise LLM judges (RLAIF) and any judge's verdicts on many pairs.
- `win_rates`: a candidate's win rate over a baseline under a judge, with a Wilson interval.
- `judged_best_of_n`: best-of-N with a judge as the reward (a knockout among N samples).
- `constitutional`: Constitutional AI's critique → revise, and its (revised ≻ original) pairs as labels.
- `leaderboard`: Bradley–Terry (Elo-scale) ratings with bootstrap intervals from any pairwise judgments.
- `probes`: failure-mode probes — sycophancy rate, benign refusal rate, correct refusal rate — for any policy.
- `monitors`: reward-hacking alerts from a PPO run's metrics (length drift, KL acceleration, entropy collapse,
  proxy rising while the held-out score falls; without gold, a reward ensemble's members disagreeing more, and its
  conservative score falling while their mean rises).
"""

from rlhf_widgets.evaluation.compare import (
    PolicyComparison,
    compare_policies,
    evaluation_store,
    measure_policies,
    sample_policy,
    sequence_kl,
    win_rate,
)
from rlhf_widgets.evaluation.overoptimization import best_of_n_curve, best_of_n_kl, ppo_overoptimization_curve
from rlhf_widgets.evaluation.probes import (
    ChatClassifier,
    Probe,
    ProbeReport,
    load_probes,
    probe_report,
    refusal_keywords,
    run_probes,
)
from rlhf_widgets.runtime.monitors import Alert, MonitorConfig, RewardHackingMonitor, alerts_table, check_log
from rlhf_widgets.stages.reward import reward_report

__all__ = [
    "Alert",
    "ChatClassifier",
    "MonitorConfig",
    "PolicyComparison",
    "Probe",
    "ProbeReport",
    "RewardHackingMonitor",
    "alerts_table",
    "best_of_n_curve",
    "best_of_n_kl",
    "check_log",
    "compare_policies",
    "evaluation_store",
    "load_probes",
    "measure_policies",
    "ppo_overoptimization_curve",
    "probe_report",
    "refusal_keywords",
    "reward_report",
    "run_probes",
    "sample_policy",
    "sequence_kl",
    "win_rate",
]
