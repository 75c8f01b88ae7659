"""GRPO and RLOO stages: TRL's online trainers with any reward function (a reward model, the sandbox's gold).

Both sample `num_generations` completions per prompt and use the group as the baseline (GRPO: group
mean/std; RLOO: leave-one-out mean). KL β > 0 keeps the policy near the reference. Sample completions with
their rewards are logged to the MetricsLog as they are scored, so the live samples table follows training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import trl

from rlhf_widgets.runtime.callbacks import with_control
from rlhf_widgets.runtime.config import SANDBOX, TrainingDefaults
from rlhf_widgets.runtime.control import TrainingControl
from rlhf_widgets.runtime.data import as_messages, message_text, prompt_list
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import ModelLike
from rlhf_widgets.runtime.reward_protocol import RewardFunction, trl_reward_function
from rlhf_widgets.runtime.stage_runner import StageResult, run_policy_stage, stage_metrics
from rlhf_widgets.runtime.validation import check_fields
from rlhf_widgets.stages.reward import as_reward_function


class SampleRecorder:
    """Wraps a TRL reward function; on its first call and every `every`-th call after, logs the first `rows`
    (prompt, completion, reward) rows to `metrics`."""

    def __init__(self, reward_fn, metrics: MetricsLog, stage: str, every: int = 5, rows: int = 4) -> None:
        self.reward_fn, self.metrics, self.stage, self.every, self.rows = reward_fn, metrics, stage, every, rows
        self.calls = 0
        self.__name__ = getattr(reward_fn, "__name__", type(reward_fn).__name__)

    def __call__(self, prompts: list, completions: list, **kwargs: object) -> list[float]:
        rewards = self.reward_fn(prompts, completions, **kwargs)
        self.calls += 1
        if self.every and (self.calls == 1 or self.calls % self.every == 0):
            self.metrics.log_samples(
                [{"prompt": message_text(p), "response": message_text(c), "score": float(r)}
                 for p, c, r in list(zip(prompts, completions, rewards, strict=True))[: self.rows]],
                step=self.calls, stage=self.stage,
            )
        return rewards


def sample_cadence(updates: int) -> int:
    """A sample-table cadence sized to a run of `updates`: about ten tables, at least one every 5 updates."""
    return max(1, min(5, updates // 10))


@dataclass
class _OnlineDefaults:
    """Workbench defaults GRPO and RLOO share (listed before the TRL config class, so they override its own)."""

    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate."})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient against the reference (> 0)."})
    num_generations: int | None = field(default=4, metadata={"help": "Completions per prompt (the group)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Completions per device step."})
    max_completion_length: int | None = field(default=48, metadata={"help": "Longest completion in tokens."})
    max_steps: int = field(default=30, metadata={"help": "Optimizer steps."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    logging_steps: float = field(default=1, metadata={"help": "Optimizer steps between two metric logs."})
    sample_every: int | None = field(default=None, metadata={"help": (
        "Log a table of sample completions every this many reward calls (0 = never); None = sized to the run: "
        "about ten tables, at least one every 5 calls.")})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sample_every is None:
            self.sample_every = sample_cadence(self.max_steps)
        check_fields(self, {"beta": (self.beta > 0, "must be > 0 (KL to the reference)")})


@dataclass
class GRPOStageConfig(_OnlineDefaults, TrainingDefaults, trl.GRPOConfig):
    """TRL's `GRPOConfig` with workbench defaults (β > 0, groups of 4)."""

    output_dir: str | None = field(default="runs/grpo", metadata={"help": "Where the final model is written."})


@dataclass
class RLOOStageConfig(_OnlineDefaults, TrainingDefaults, trl.RLOOConfig):
    """TRL's `RLOOConfig` with workbench defaults (β > 0, groups of 4)."""

    output_dir: str | None = field(default="runs/rloo", metadata={"help": "Where the final model is written."})


def _train_online(stage: str, trainer_cls: type, prompts: Sequence, config, model: ModelLike,
                  reward: RewardFunction | Sequence[RewardFunction], metrics: MetricsLog | None,
                  control: TrainingControl | None) -> StageResult:
    prompts = prompt_list(prompts)
    metrics = stage_metrics(metrics, config.output_dir, stage)
    if control is not None:
        trainer_cls = with_control(trainer_cls, control, metrics, stage)
    rewards = list(reward) if isinstance(reward, (list, tuple)) else [reward]
    funcs = [SampleRecorder(trl_reward_function(as_reward_function(r)), metrics, stage, every=config.sample_every)
             for r in rewards]
    dataset = datasets.Dataset.from_list([{"prompt": as_messages(p)} for p in prompts])
    return run_policy_stage(stage, trainer_cls, config, model, metrics, reward_funcs=funcs, train_dataset=dataset)


def train_grpo(
    prompts: Sequence,
    config: GRPOStageConfig | None = None,
    *,
    model: ModelLike = SANDBOX,
    reward: RewardFunction | Sequence[RewardFunction],
    metrics: MetricsLog | None = None,
    control: TrainingControl | None = None,
) -> StageResult:
    """GRPO on `prompts` (strings or chat messages, or a source `data.load_prompts` reads) against `reward` — a
    reward function `(prompts, responses) -> scores` (a `RewardModel`, `sandbox.gold_reward`, …), a saved
    reward-model directory, or several of them (their rewards are summed by TRL). The policy is saved under
    `<output_dir>/final`. `control`: a `TrainingControl` the run obeys between optimizer steps (pause, stop,
    learning rate, β; see `callbacks.ControlCallback`) — what `TrainingPanel` drives through `BackgroundRun`."""
    return _train_online("grpo", trl.GRPOTrainer, prompts, config or GRPOStageConfig(), model, reward, metrics,
                         control)


def train_rloo(
    prompts: Sequence,
    config: RLOOStageConfig | None = None,
    *,
    model: ModelLike = SANDBOX,
    reward: RewardFunction | Sequence[RewardFunction],
    metrics: MetricsLog | None = None,
    control: TrainingControl | None = None,
) -> StageResult:
    """RLOO (REINFORCE with a leave-one-out baseline) on `prompts` against `reward`; as `train_grpo`."""
    return _train_online("rloo", trl.RLOOTrainer, prompts, config or RLOOStageConfig(), model, reward, metrics,
                         control)
