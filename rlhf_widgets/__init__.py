"""rlhf-widgets: a Jupyter-native RLHF workbench.

SFT → preference labeling inside the notebook → reward model → PPO (or DPO / GRPO / RLOO / best-of-N) →
evaluation, with live plots, on an offline sandbox world by default. Every stage has one shape::

    from rlhf_widgets import ModelConfig, SFTStageConfig, train_sft
    sft = train_sft(data, SFTStageConfig(...), model=ModelConfig(...))   # -> StageResult
    sft.model_path                                                         # the next stage's model=

The names below are the public surface the notebooks use; each is imported on first use, so importing the
package is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlhf_widgets import quiet

__version__ = "0.1.0"

quiet.install()  # before any library it quiets is imported

_EXPORTS = {
    # settings and models
    "ModelConfig": "rlhf_widgets.config",
    "load_causal_lm": "rlhf_widgets.models",
    # data
    "load_preferences": "rlhf_widgets.data",
    "save_preferences": "rlhf_widgets.data",
    "load_prompts": "rlhf_widgets.data",
    "demonstrations": "rlhf_widgets.data",
    "data_file": "rlhf_widgets.data",
    # stages
    "StageResult": "rlhf_widgets.stages",
    "SFTStageConfig": "rlhf_widgets.sft",
    "train_sft": "rlhf_widgets.sft",
    "RewardStageConfig": "rlhf_widgets.reward",
    "RewardModel": "rlhf_widgets.reward",
    "train_reward_model": "rlhf_widgets.reward",
    "RewardEnsemble": "rlhf_widgets.reward_ensemble",
    "train_reward_ensemble": "rlhf_widgets.reward_ensemble",
    "weight_averaged": "rlhf_widgets.reward_ensemble",
    "DPOStageConfig": "rlhf_widgets.dpo",
    "train_dpo": "rlhf_widgets.dpo",
    "GRPOStageConfig": "rlhf_widgets.grpo",
    "RLOOStageConfig": "rlhf_widgets.grpo",
    "train_grpo": "rlhf_widgets.grpo",
    "train_rloo": "rlhf_widgets.grpo",
    "PPOConfig": "rlhf_widgets.ppo",
    "PPOTrainer": "rlhf_widgets.ppo",
    "PPOPanel": "rlhf_widgets.ppo",
    "TrainingPanel": "rlhf_widgets.ppo.panel",
    "BackgroundRun": "rlhf_widgets.runs",
    "PPOSweep": "rlhf_widgets.sweeps",
    "train_ppo": "rlhf_widgets.ppo",
    "best_of_n": "rlhf_widgets.best_of",
    "BestOfNSampler": "rlhf_widgets.best_of",
    # rewards
    "RewardFunction": "rlhf_widgets.rewards",
    "JudgeReward": "rlhf_widgets.rewards",
    "pointwise": "rlhf_widgets.rewards",
    # labeling
    "PreferenceStore": "rlhf_widgets.labeling",
    "LabelingPanel": "rlhf_widgets.labeling",
    "prepare_pairs": "rlhf_widgets.labeling",
    "label_with": "rlhf_widgets.labeling",
    "RewardModelLabeler": "rlhf_widgets.labeling",
    # evaluation
    "compare_policies": "rlhf_widgets.evaluation",
    "reward_report": "rlhf_widgets.evaluation",
    "evaluation_store": "rlhf_widgets.evaluation",
    "ppo_overoptimization_curve": "rlhf_widgets.evaluation",
    "best_of_n_curve": "rlhf_widgets.evaluation",
    "load_probes": "rlhf_widgets.evaluation",
    "run_probes": "rlhf_widgets.evaluation",
    "ChatClassifier": "rlhf_widgets.evaluation",
    "refusal_keywords": "rlhf_widgets.evaluation",
    "RewardHackingMonitor": "rlhf_widgets.evaluation",
    "MonitorConfig": "rlhf_widgets.evaluation",
    "check_log": "rlhf_widgets.evaluation",
    "alerts_table": "rlhf_widgets.evaluation",
    "format_table": "rlhf_widgets.tables",
    "judgments_from_responses": "rlhf_widgets.evaluation.leaderboard",
    "leaderboard": "rlhf_widgets.evaluation.leaderboard",
    "leaderboard_figure": "rlhf_widgets.evaluation.leaderboard",
    # metrics and views
    "MetricsLog": "rlhf_widgets.metrics",
    "LiveDashboard": "rlhf_widgets.views",
    "SamplesTable": "rlhf_widgets.views",
    "RunComparison": "rlhf_widgets.views",
    "overlay_figure": "rlhf_widgets.views",
    "figure_from_log": "rlhf_widgets.views",
    "reward_report_figures": "rlhf_widgets.views",
    "overoptimization_figure": "rlhf_widgets.views",
    # the iterative loop
    "IterativeLoop": "rlhf_widgets.loop",
    "rounds_table": "rlhf_widgets.loop",
    "LoopConfig": "rlhf_widgets.loop",
    # the whole loop on the sandbox
    "QuickstartConfig": "rlhf_widgets.pipeline",
    "run_quickstart": "rlhf_widgets.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlhf_widgets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
