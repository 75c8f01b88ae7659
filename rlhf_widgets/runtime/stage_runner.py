"""The stage contract every trainer follows, and the one runner under the TRL stages.

Every stage is called the same way and returns the same kind of result::

    result = train_<stage>(data, config=None, *, model=..., metrics=None)   # -> StageResult
    result.model_path      # a directory that loads with `load_causal_lm` (or `RewardModel.load`)

`data` comes first (demonstrations, preference pairs or prompts), `config` is the stage's own config
dataclass (a TRL config subclass, or `PPOConfig`), `model=` anything `models.ModelLike` names (a hub id,
a local path, 'sandbox', a `ModelConfig`, or a loaded model), and `metrics` the `MetricsLog` the run writes
to (default: `<output_dir>/metrics.jsonl`). `ModelConfig` is the one source of model settings (LoRA rank,
alpha, targets, dropout; 4-bit); no stage modifies the caller's config objects.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel

from rlhf_widgets.runtime.attention import cpu_math_attention
from rlhf_widgets.runtime.callbacks import MetricsCallback
from rlhf_widgets.runtime.chat import accepts_system_role, fit_messages
from rlhf_widgets.runtime.config import ModelConfig, as_model_config
from rlhf_widgets.runtime.length_split import length_split
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import ModelLike, load_causal_lm, lora_config
from rlhf_widgets.runtime.quiet import quiet_trainer

FINAL = "final"
"""Sub-directory of a stage's `output_dir` that holds its trained model (`StageResult.model_path`)."""
ADAPTER = "adapter"
"""Sub-directory that also keeps the LoRA adapter when `final/` holds the merged model."""


@dataclass
class StageResult:
    """What a stage run produced."""

    stage: str
    """"sft", "reward", "dpo", "grpo", "rloo" or "ppo\""""
    model_path: Path
    """directory of the trained model: loads with `load_causal_lm` (a policy) or `RewardModel.load` (a reward
    model); full weights, or a LoRA adapter that records its base"""
    metrics: MetricsLog
    """every metric, event and sample the run logged"""
    train_seconds: float
    """wall time of the training loop, seconds"""
    status: str = "finished"
    """"finished", "stopped" (by the user, or by a reward-hacking alert: PPO's `on_alert`) or "failed" (a safety
    stop restored the last good weights)"""
    reason: str = ""
    """why the run stopped or failed ("" when it finished); a PPO run stopped by an alert names it, and a rollback
    the update whose weights it kept"""


def stage_metrics(metrics: MetricsLog | None, output_dir: str | Path, stage: str) -> MetricsLog:
    """`metrics`, or a new log at `<output_dir>/metrics.jsonl` named after the stage."""
    return metrics if metrics is not None else MetricsLog(Path(output_dir) / "metrics.jsonl", run_name=stage)


def load_for_training(model: ModelLike) -> tuple[Any, Any, ModelConfig | None]:
    """(model, tokenizer, its ModelConfig or None for a model passed loaded) for a TRL stage."""
    if isinstance(model, (str, os.PathLike, ModelConfig)):
        cfg = as_model_config(model)
        loaded, tokenizer = load_causal_lm(cfg)
        return loaded, tokenizer, cfg
    loaded, tokenizer = load_causal_lm(model)
    return loaded, tokenizer, None


def is_quantized(model: Any) -> bool:
    """True for a model loaded in 4-bit or 8-bit (through a PEFT wrapper too)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def save_trained_policy(model: Any, tokenizer: Any, output_dir: str | Path) -> Path:
    """Save a trained causal LM under `<output_dir>/final` and return that path.

    A LoRA adapter on an unquantized base is saved twice: merged into full weights in `final/` (later stages
    load plain weights) and as the adapter alone in `adapter/`. On a quantized base `final/` holds the adapter,
    which `load_causal_lm` re-attaches to its base. Full fine-tuning saves full weights.
    """
    out = Path(output_dir)
    final = out / FINAL
    if isinstance(model, PeftModel) and not is_quantized(model):
        model.save_pretrained(out / ADAPTER)
        tokenizer.save_pretrained(out / ADAPTER)
        model = model.merge_and_unload()
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    return final


def run_trl_trainer(stage: str, trainer_cls: type, config: Any, model: Any, tokenizer: Any,
                    model_config: ModelConfig | None, metrics: MetricsLog, *, task_type: str = "CAUSAL_LM",
                    peft_overrides: dict[str, Any] | None = None, **trainer_kwargs: Any) -> tuple[Any, float]:
    """Build a TRL trainer with the workbench's wiring (LoRA from `model_config`, metrics callback) and train it.

    Returns `(trainer, seconds of trainer.train())`. `peft_overrides` sets fields of the LoRA config (e.g.
    `modules_to_save` for a reward head).
    """
    peft_config = lora_config(model_config, task_type=task_type) if model_config is not None else None
    if peft_config is not None:
        for name, value in (peft_overrides or {}).items():
            setattr(peft_config, name, value)
    trainer = length_split(trainer_cls)(  # on CPU, a batch's rows in length-sorted pieces (runtime.length_split)
        model=model,
        args=config,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsCallback(metrics, stage=stage)],
        **trainer_kwargs,
    )
    quiet_trainer(trainer, name=stage)
    start = time.perf_counter()
    with cpu_math_attention(model):  # on CPU: sdpa's forward, a cheaper exact backward (rlhf_widgets.runtime.attention)
        trainer.train()
    # under bf16/fp16 accelerate wraps the model's forward in autocast and leaves it wrapped after training: take the
    # wrapper off, so the model a stage hands on (a reward model that scores, a policy that samples) computes as the
    # one it saved does when loaded again
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return trainer, time.perf_counter() - start


CONVERSATION_COLUMNS = ("prompt", "messages", "chosen", "rejected", "completion")
"""Dataset columns that may hold chat messages a chat format must accept."""


def fit_to_chat_format(dataset: Any, tokenizer: Any) -> Any:
    """`dataset` with its conversations as the tokenizer's chat format takes them: where the format rejects system
    messages (Gemma 2), a leading system message is folded into the first user turn (`chat.fit_messages`)."""
    columns = [c for c in CONVERSATION_COLUMNS if c in getattr(dataset, "column_names", ())]
    if not columns or accepts_system_role(tokenizer):
        return dataset

    def fit(row: dict) -> dict:
        return {c: fit_messages(tokenizer, row[c]) if isinstance(row[c], list) else row[c] for c in columns}

    return dataset.map(fit)


def run_policy_stage(stage: str, trainer_cls: type, config: Any, model: ModelLike, metrics: MetricsLog | None,
                     **trainer_kwargs: Any) -> StageResult:
    """Load `model`, train it with a TRL `trainer_cls`, save the policy (`save_trained_policy`) and return the
    `StageResult`. Used by SFT, DPO, GRPO and RLOO; `trainer_kwargs` carry the data (`train_dataset`, …)."""
    metrics = stage_metrics(metrics, config.output_dir, stage)
    loaded, tokenizer, model_config = load_for_training(model)
    if "train_dataset" in trainer_kwargs:
        trainer_kwargs["train_dataset"] = fit_to_chat_format(trainer_kwargs["train_dataset"], tokenizer)
    trainer, seconds = run_trl_trainer(stage, trainer_cls, config, loaded, tokenizer, model_config, metrics,
                                       **trainer_kwargs)
    final = save_trained_policy(trainer.model, tokenizer, config.output_dir)
    metrics.log_event("saved", f"{stage} model saved to {final}", step=trainer.state.global_step, stage=stage)
    return StageResult(stage=stage, model_path=final, metrics=metrics, train_seconds=seconds)


def copied(config: Any) -> Any:
    """A shallow copy of a stage config, for a stage to adjust without touching the caller's object."""
    return copy.copy(config)
