"""MetricsCallback: feeds a MetricsLog from any transformers / TRL trainer."""

from __future__ import annotations

import numbers

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from rlhf_widgets.metrics import MetricsLog


class MetricsCallback(TrainerCallback):
    """Forward every numeric value a trainer logs to `metrics_log`, at `state.global_step`.

    Evaluation metrics (`eval_loss`, `eval_rewards/accuracies`, …) arrive the same way: `Trainer.evaluate`
    passes them through `Trainer.log`, hence `on_log`. Non-numeric values (strings, tables) are skipped.
    Only the main process (`state.is_world_process_zero`) logs, so a multi-GPU run writes one history.

    `stage`: label stored with each record ("sft", "reward", "dpo", …); default None.
    """

    def __init__(self, metrics_log: MetricsLog, stage: str | None = None) -> None:
        self.metrics_log = metrics_log
        self.stage = stage

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        numeric = {k: v for k, v in logs.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        if numeric:
            self.metrics_log.log(numeric, step=state.global_step, stage=self.stage)
