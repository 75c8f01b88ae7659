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

from rlhf_widgets.runtime import quiet

__version__ = "0.1.0"

quiet.install()  # before any library it quiets is imported

_EXPORTS = {
    # settings and models
    "ModelConfig": "rlhf_widgets.runtime.config",
    "load_causal_lm": "rlhf_widgets.runtime.models",
    # data
    "load_preferences": "rlhf_widgets.runtime.data",
    "save_preferences": "rlhf_widgets.runtime.data",
    "load_prompts": "rlhf_widgets.runtime.data",
    "demonstrations": "rlhf_widgets.runtime.data",
    "data_file": "rlhf_widgets.runtime.data",
    # stages
    "StageResult": "rlhf_widgets.runtime.stage_runner",
    "SFTStageConfig": "rlhf_widgets.stages.sft",
    "train_sft": "rlhf_widgets.stages.sft",
    "RewardStageConfig": "rlhf_widgets.stages.reward.model",
    "RewardModel": "rlhf_widgets.stages.reward.model",
    "train_reward_model": "rlhf_widgets.stages.reward.model",
    "RewardEnsemble": "rlhf_widgets.stages.reward.ensemble",
    "train_reward_ensemble": "rlhf_widgets.stages.reward.ensemble",
    "weight_averaged": "rlhf_widgets.stages.reward.ensemble",
    "DPOStageConfig": "rlhf_widgets.stages.dpo",
    "train_dpo": "rlhf_widgets.stages.dpo",
    "GRPOStageConfig": "rlhf_widgets.stages.grpo",
    "RLOOStageConfig": "rlhf_widgets.stages.grpo",
    "train_grpo": "rlhf_widgets.stages.grpo",
    "train_rloo": "rlhf_widgets.stages.grpo",
    "PPOConfig": "rlhf_widgets.stages.ppo",
    "PPOTrainer": "rlhf_widgets.stages.ppo",
    "PPOPanel": "rlhf_widgets.views.training_panel",
    "TrainingPanel": "rlhf_widgets.views.training_panel",
    "BackgroundRun": "rlhf_widgets.runtime.runs",
    "PPOSweep": "rlhf_widgets.workflows.sweeps",
    "train_ppo": "rlhf_widgets.stages.ppo",
    "best_of_n": "rlhf_widgets.stages.best_of",
    "BestOfNSampler": "rlhf_widgets.stages.best_of",
    # rewards
    "RewardFunction": "rlhf_widgets.runtime.reward_protocol",
    "JudgeReward": "rlhf_widgets.labeling.labelers",
    "pointwise": "rlhf_widgets.runtime.reward_protocol",
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
    "format_table": "rlhf_widgets.views.tables",
    "judgments_from_responses": "rlhf_widgets.evaluation.leaderboard",
    "leaderboard": "rlhf_widgets.evaluation.leaderboard",
    "leaderboard_figure": "rlhf_widgets.evaluation.leaderboard",
    # metrics and views
    "MetricsLog": "rlhf_widgets.runtime.metrics",
    "LiveDashboard": "rlhf_widgets.views.dashboard",
    "SamplesTable": "rlhf_widgets.views.samples",
    "RunComparison": "rlhf_widgets.views.run_comparison",
    "overlay_figure": "rlhf_widgets.views.run_figures",
    "figure_from_log": "rlhf_widgets.views.run_figures",
    "reward_report_figures": "rlhf_widgets.views.reward_figures",
    "overoptimization_figure": "rlhf_widgets.views.reward_figures",
    # the iterative loop
    "IterativeLoop": "rlhf_widgets.workflows.loop",
    "rounds_table": "rlhf_widgets.workflows.loop",
    "LoopConfig": "rlhf_widgets.workflows.loop",
    # the whole loop on the sandbox
    "QuickstartConfig": "rlhf_widgets.workflows.quickstart",
    "run_quickstart": "rlhf_widgets.workflows.quickstart",
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
