"""GRPO and RLOO stages: TRL's online trainers with our reward model (or the sandbox's gold scorer).

Both sample `num_generations` completions per prompt and use the group as the baseline (GRPO: group
mean/std; RLOO: leave-one-out mean). KL β > 0 keeps the policy near the reference. Sample
completions with their rewards are logged to the MetricsLog as they are scored, so the live samples
table follows training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import trl

from rlhf_widgets.callbacks import MetricsCallback
from rlhf_widgets.config import SANDBOX, ModelConfig, TrainingDefaults
from rlhf_widgets.data import as_messages, last_user_content
from rlhf_widgets.metrics import MetricsLog
from rlhf_widgets.models import load_causal_lm, lora_config

RewardFn = Callable[..., list[float]]


def _completion_text(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else completion


def gold_reward(prompts: list, completions: list, **_: object) -> list[float]:
    """The sandbox's gold scorer as a TRL reward function (for studying RL without a learned RM)."""
    from rlhf_widgets.sandbox import gold_score

    return [gold_score(last_user_content(p), _completion_text(c)) for p, c in zip(prompts, completions, strict=True)]


class SampleRecorder:
    """Wraps a TRL reward function; on the first and every `every`-th call logs a few (prompt, completion,
    reward) rows."""

    def __init__(self, reward_fn: RewardFn, metrics: MetricsLog, every: int = 5, rows: int = 4) -> None:
        self.reward_fn, self.metrics, self.every, self.rows = reward_fn, metrics, every, rows
        self.calls = 0
        self.__name__ = getattr(reward_fn, "__name__", type(reward_fn).__name__)

    def __call__(self, prompts: list, completions: list, **kwargs: object) -> list[float]:
        rewards = self.reward_fn(prompts, completions, **kwargs)
        self.calls += 1
        if self.every and (self.calls == 1 or self.calls % self.every == 0):  # first batch at once
            self.metrics.log_samples(
                [{"prompt": last_user_content(p), "response": _completion_text(c), "score": float(r)}
                 for p, c, r in list(zip(prompts, completions, rewards, strict=True))[: self.rows]],
                step=self.calls,
            )
        return rewards


def _common_defaults(cls):
    """Workbench defaults shared by the GRPO and RLOO stage configs (they differ only in the TRL parent)."""

    @dataclass
    class Config(TrainingDefaults, cls):
        output_dir: str | None = field(default="runs/grpo", metadata={"help": "Where the final model is written."})
        learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate."})
        beta: float = field(default=0.04, metadata={"help": "KL coefficient against the reference (> 0)."})
        num_generations: int | None = field(default=4, metadata={"help": "Completions per prompt (the group)."})
        per_device_train_batch_size: int = field(default=8, metadata={"help": "Completions per device step."})
        max_completion_length: int | None = field(default=48, metadata={"help": "Longest completion in tokens."})
        max_steps: int = field(default=30, metadata={"help": "Optimizer steps."})
        temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
        logging_steps: float = field(default=1, metadata={"help": "Steps between metric logs."})

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.beta <= 0:
                raise ValueError(f"{type(self).__name__}.beta={self.beta}: must be > 0 (KL to the reference)")

    return Config


GRPOStageConfig = _common_defaults(trl.GRPOConfig)
GRPOStageConfig.__name__ = GRPOStageConfig.__qualname__ = "GRPOStageConfig"
GRPOStageConfig.__doc__ = "TRL's `GRPOConfig` with workbench defaults (β > 0, small groups)."
RLOOStageConfig = _common_defaults(trl.RLOOConfig)
RLOOStageConfig.__name__ = RLOOStageConfig.__qualname__ = "RLOOStageConfig"
RLOOStageConfig.__doc__ = "TRL's `RLOOConfig` with workbench defaults (β > 0, small groups)."


@dataclass
class OnlineResult:
    """What a GRPO / RLOO run produced."""

    model_path: Path
    metrics: MetricsLog
    train_seconds: float


def train_online(
    prompts: Sequence,
    reward: RewardFn | Sequence[RewardFn],
    config=None,
    model: ModelConfig | str = SANDBOX,
    metrics: MetricsLog | None = None,
    algorithm: str = "grpo",
) -> OnlineResult:
    """GRPO (`algorithm="grpo"`) or RLOO (`"rloo"`) on `prompts` with `reward` function(s).

    `reward`: a `RewardModel` (it is a TRL reward function), `gold_reward`, or any
    `f(prompts, completions, **kw) -> list[float]`.
    """
    if algorithm not in ("grpo", "rloo"):
        raise ValueError(f"train_online: algorithm={algorithm!r}; expected 'grpo' or 'rloo'")
    config_cls, trainer_cls = ((GRPOStageConfig, trl.GRPOTrainer) if algorithm == "grpo"
                               else (RLOOStageConfig, trl.RLOOTrainer))
    config = config or config_cls(output_dir=f"runs/{algorithm}")
    model_cfg = ModelConfig(model_name_or_path=model) if isinstance(model, str) else model
    out = Path(config.output_dir)
    metrics = metrics if metrics is not None else MetricsLog(out / "metrics.jsonl", run_name=algorithm)
    funcs = list(reward) if isinstance(reward, Sequence) else [reward]
    funcs = [SampleRecorder(f, metrics) for f in funcs]
    dataset = datasets.Dataset.from_list([{"prompt": as_messages(p)} for p in prompts])
    policy, tokenizer = load_causal_lm(model_cfg)
    trainer = trainer_cls(
        model=policy,
        reward_funcs=funcs,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_cfg),
        callbacks=[MetricsCallback(metrics, stage=algorithm)],
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
    return OnlineResult(final, metrics, seconds)
