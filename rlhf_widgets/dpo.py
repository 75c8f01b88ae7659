"""DPO stage: TRL's DPOTrainer on preference pairs (label store export or `load_preferences`).

With LoRA the reference is the same model with adapters disabled (TRL does this when no
`ref_model` is given); with full fine-tuning TRL keeps a frozen copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import trl

from rlhf_widgets.callbacks import MetricsCallback
from rlhf_widgets.config import SANDBOX, ModelConfig, TrainingDefaults
from rlhf_widgets.metrics import MetricsLog
from rlhf_widgets.models import load_causal_lm, lora_config


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


@dataclass
class DPOResult:
    """What a DPO run produced."""

    model_path: Path
    """final model: full weights, or a LoRA adapter when the base was quantized"""
    metrics: MetricsLog
    """every logged metric (rewards/margins, rewards/accuracies, …)"""
    train_seconds: float
    """wall time of `trainer.train()`"""


def train_dpo(
    dataset: datasets.Dataset,
    config: DPOStageConfig | None = None,
    model: ModelConfig | str = SANDBOX,
    metrics: MetricsLog | None = None,
) -> DPOResult:
    """Direct preference optimisation of `model` (usually the SFT model) on `dataset`."""
    config = config or DPOStageConfig()
    model_cfg = ModelConfig(model_name_or_path=model) if isinstance(model, str) else model
    out = Path(config.output_dir)
    metrics = metrics if metrics is not None else MetricsLog(out / "metrics.jsonl", run_name="dpo")
    policy, tokenizer = load_causal_lm(model_cfg)
    trainer = trl.DPOTrainer(
        model=policy,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_cfg),
        callbacks=[MetricsCallback(metrics, stage="dpo")],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trained = trainer.model
    if model_cfg.use_peft and not model_cfg.load_in_4bit:
        trained = trained.merge_and_unload()
    final = out / "final"
    trained.save_pretrained(final)
    tokenizer.save_pretrained(final)
    metrics.log_event("saved", f"DPO model saved to {final}", step=trainer.state.global_step)
    return DPOResult(final, metrics, seconds)
