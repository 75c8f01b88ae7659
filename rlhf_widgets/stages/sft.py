"""SFT stage: TRL's SFTTrainer on conversational prompt–completion data, full / LoRA / 4-bit+LoRA.

Loss is on the assistant completion only (TRL's prompt–completion format), which works with any chat
format and includes the format's turn end. A `messages` dataset is turned into that format first — the
conversation up to its last assistant answer is the prompt, that answer the completion — since TRL would
otherwise train on every token (system and user turns included). On the sandbox the default data are the
world's curt-but-correct demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import trl

from rlhf_widgets.runtime.config import SANDBOX, TrainingDefaults
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import ModelLike, model_name
from rlhf_widgets.runtime.stage_runner import StageResult, run_policy_stage
from rlhf_widgets.runtime.validation import check_fields
from rlhf_widgets.sandbox import sft_dataset


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
        check_fields(self, {"sandbox_demos": (self.sandbox_demos > 0, "must be positive")})


def train_sft(
    data: datasets.Dataset | None = None,
    config: SFTStageConfig | None = None,
    *,
    model: ModelLike = SANDBOX,
    metrics: MetricsLog | None = None,
) -> StageResult:
    """Fine-tune `model` on demonstrations `data` and save the result under `<output_dir>/final`.

    `data` is any format TRL's SFTTrainer takes (prompt/completion, messages, text); None (default) takes
    `config.sandbox_demos` of the sandbox's demonstrations, which exist only for the sandbox model. A LoRA
    run on an unquantized base saves the merged model in `final/` and the adapter in `adapter/`; a 4-bit run
    saves the adapter, which `load_causal_lm` re-attaches to its base.
    """
    config = config or SFTStageConfig()
    if data is None:
        if model_name(model) != SANDBOX:
            raise ValueError(f"train_sft: no demonstrations given for model {model_name(model)!r} (the default "
                             "demonstrations exist only for the sandbox); pass data=<a prompt/completion or "
                             "messages dataset>")

        data = sft_dataset(config.sandbox_demos, seed=config.seed)
    return run_policy_stage("sft", trl.SFTTrainer, config, model, metrics, train_dataset=as_prompt_completion(data))


def as_prompt_completion(data: datasets.Dataset) -> datasets.Dataset:
    """A `messages` dataset as TRL's prompt–completion format (the loss then falls on the last assistant answer
    and its turn end only); any other format is returned as it is. A conversation that does not end with an
    assistant answer raises ValueError naming the row."""
    if "messages" not in data.column_names or "completion" in data.column_names:
        return data

    def split(row: dict, index: int) -> dict:
        messages = row["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            last = messages[-1].get("role") if messages else "nothing"
            raise ValueError(f"row {index}: 'messages' must end with an assistant answer to train on, not {last}")
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return data.map(split, with_indices=True, remove_columns=["messages"])
