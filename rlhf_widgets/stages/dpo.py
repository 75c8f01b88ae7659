"""DPO stage: TRL's DPOTrainer on preference pairs (label store export or `load_preferences`).

With LoRA the reference is the same model with adapters disabled (TRL does this when no
`ref_model` is given); with full fine-tuning TRL keeps a frozen copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import trl

from rlhf_widgets.runtime.config import SANDBOX, TrainingDefaults
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import ModelLike
from rlhf_widgets.runtime.stage_runner import StageResult, run_policy_stage


@dataclass
class DPOStageConfig(TrainingDefaults, trl.DPOConfig):
    """TRL's `DPOConfig` with workbench defaults."""

    output_dir: str | None = field(default="runs/dpo", metadata={"help": "Where the final model is written."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Passes over the preference pairs."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Pairs per step."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up (a fraction < 1, or a step count)."})
    max_length: int | None = field(default=256, metadata={"help": "Longest prompt + response in tokens."})


def train_dpo(
    data: datasets.Dataset,
    config: DPOStageConfig | None = None,
    *,
    model: ModelLike = SANDBOX,
    metrics: MetricsLog | None = None,
) -> StageResult:
    """Direct preference optimisation of `model` (usually the SFT model) on preference pairs `data`
    (`load_preferences` / `PreferenceStore.to_dataset` format); the result is saved under `<output_dir>/final`."""
    return run_policy_stage("dpo", trl.DPOTrainer, config or DPOStageConfig(), model, metrics, train_dataset=data)
