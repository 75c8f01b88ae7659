"""SFT stage: TRL's SFTTrainer on conversational prompt–completion data, full / LoRA / 4-bit+LoRA.

Loss is on the assistant completion only (TRL's prompt–completion format), which works with any chat
template. On the sandbox the default data are the world's curt-but-correct demonstrations.
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
class SFTStageConfig(TrainingDefaults, trl.SFTConfig):
    """TRL's `SFTConfig` with workbench defaults, plus the sandbox demonstration count."""

    output_dir: str | None = field(default="runs/sft", metadata={"help": "Where the final model is written."})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW peak learning rate."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Passes over the demonstrations."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Demonstrations per step."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up (a fraction < 1, or a step count)."})
    max_length: int | None = field(default=256, metadata={"help": "Tokens per example (prompt + completion)."})
    sandbox_demos: int = field(
        default=2048, metadata={"help": "Sandbox demonstrations to train on when no dataset is given."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sandbox_demos <= 0:
            raise ValueError(f"SFTStageConfig.sandbox_demos={self.sandbox_demos}: must be positive")


@dataclass
class SFTResult:
    """What an SFT run produced."""

    model_path: Path
    """directory of the final model: full weights, or a LoRA adapter when the base was quantized"""
    metrics: MetricsLog
    """every logged metric of the run"""
    train_seconds: float
    """wall time of `trainer.train()`"""


def train_sft(
    config: SFTStageConfig | None = None,
    model: ModelConfig | str = SANDBOX,
    dataset: datasets.Dataset | None = None,
    metrics: MetricsLog | None = None,
) -> SFTResult:
    """Fine-tune `model` on `dataset` (default: the sandbox's demonstrations) and save the result.

    `dataset` is any format TRL's SFTTrainer takes (prompt/completion, messages, text). A LoRA run on an
    unquantized base saves the merged model (so later stages load plain weights) and the adapter under
    `adapter/`; a 4-bit run saves the adapter, which `load_causal_lm` re-attaches to its base.
    """
    config = config or SFTStageConfig()
    model_cfg = ModelConfig(model_name_or_path=model) if isinstance(model, str) else model
    if dataset is None:
        if model_cfg.model_name_or_path != SANDBOX:
            raise ValueError(f"train_sft: no dataset given for model '{model_cfg.model_name_or_path}' "
                             "(the default demonstrations exist only for the sandbox)")
        from rlhf_widgets.sandbox import sft_dataset

        dataset = sft_dataset(config.sandbox_demos, seed=config.seed)
    out = Path(config.output_dir)
    metrics = metrics if metrics is not None else MetricsLog(out / "metrics.jsonl", run_name="sft")
    policy, tokenizer = load_causal_lm(model_cfg)
    trainer = trl.SFTTrainer(
        model=policy,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_cfg),
        callbacks=[MetricsCallback(metrics, stage="sft")],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    final = out / "final"
    trained = trainer.model
    if model_cfg.use_peft and not model_cfg.load_in_4bit:
        trained.save_pretrained(out / "adapter")
        trained = trained.merge_and_unload()
    trained.save_pretrained(final)
    tokenizer.save_pretrained(final)
    metrics.log_event("saved", f"SFT model saved to {final}", step=trainer.state.global_step)
    return SFTResult(model_path=final, metrics=metrics, train_seconds=seconds)
