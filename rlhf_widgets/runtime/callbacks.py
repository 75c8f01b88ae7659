"""TRL / HF trainer callbacks: `MetricsCallback` feeds a MetricsLog; `ControlCallback` obeys a TrainingControl.

Where TRL owns the loop (GRPO, RLOO), the notebook's controls reach it between optimizer steps through
`ControlCallback`: pause, stop, the learning rate and — for GRPO / RLOO — the KL coefficient β. The sampling
temperature is not changeable there: TRL fixes it into the generation config and the fused log-prob head when the
trainer is built.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from rlhf_widgets.runtime.metrics import MetricsLog

if TYPE_CHECKING:  # (a runtime import would be circular: the PPO package imports stages, which imports this)
    from rlhf_widgets.runtime.control import TrainingControl


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


class ControlCallback(TrainerCallback):
    """Obey `control` between the optimizer steps of an HF / TRL trainer, and report progress to it.

    After each step: wait while paused, end the run on a stop request (the trainer saves as it does at its end),
    and apply queued settings (queued before the run, they apply as it begins: to step 1) — `learning_rate` (the
    peak of the trainer's schedule: the scheduler's base rates and the current rates are scaled together) and
    `kl_coef` (the trainer's `beta`: GRPO / RLOO). Each change, pause, resume and stop is an event in `metrics` at
    the step it happened. `trainer`: the trainer whose `beta` β changes (set by `with_control`); without it `kl_coef`
    is not settable.
    """

    def __init__(self, control: TrainingControl, metrics: MetricsLog, stage: str | None = None,
                 trainer: Any = None) -> None:
        self.control, self.metrics, self.stage, self.trainer = control, metrics, stage, trainer
        self._stopped = False

    def _event(self, kind: str, message: str, step: int, **data: Any) -> None:
        self.metrics.log_event(kind, message, step=step, stage=self.stage, **data)

    def settings(self, optimizer: Any = None, lr_scheduler: Any = None) -> dict[str, float]:
        """The settings the next step uses: the peak learning rate, and β where the trainer has one."""
        out = {}
        if lr_scheduler is not None and getattr(lr_scheduler, "base_lrs", None):
            out["learning_rate"] = float(lr_scheduler.base_lrs[0])
        elif optimizer is not None:
            out["learning_rate"] = float(optimizer.param_groups[0]["lr"])
        if self.trainer is not None and hasattr(self.trainer, "beta"):
            out["kl_coef"] = float(self.trainer.beta)
        return out

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        self._stopped = False
        self.control.state, self.control.reason = "running", ""
        self._apply(self.control.take_pending(state.global_step + 1), state.global_step, optimizer, lr_scheduler)
        self.control.report(state.global_step, self.settings(optimizer, lr_scheduler), total=state.max_steps)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        step, ours = state.global_step, self.control
        ours.report(step, self.settings(optimizer, lr_scheduler))
        if ours.paused and not ours.stop_requested:
            ours.state = "paused"
            self._event("paused", "training paused", step)
            ours.wait_while_paused()
            if not ours.stop_requested:
                ours.state = "running"
                self._event("resumed", "training resumed", step)
        if ours.stop_requested:
            ours.consume_stop()
            ours.state, ours.reason = "stopped", "stopped by the user"
            self._stopped = True
            self._event("stopped", "stopped by the user", step)
            control.should_training_stop = True
            return
        self._apply(ours.take_pending(step + 1), step, optimizer, lr_scheduler)
        ours.report(step, self.settings(optimizer, lr_scheduler))

    def _apply(self, changes: dict[str, float], step: int, optimizer: Any, lr_scheduler: Any) -> None:
        for name, value in changes.items():
            old = self.settings(optimizer, lr_scheduler).get(name)
            if name == "learning_rate" and optimizer is not None:
                scale = value / old if old else 1.0
                if lr_scheduler is not None and getattr(lr_scheduler, "base_lrs", None):
                    lr_scheduler.base_lrs = [lr * scale for lr in lr_scheduler.base_lrs]
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] * scale if old else value
                    if "initial_lr" in group:
                        group["initial_lr"] *= scale
            elif name == "kl_coef" and self.trainer is not None and hasattr(self.trainer, "beta"):
                self.trainer.beta = value
            else:
                self._event("setting", f"{name} cannot change in this trainer; ignored", step, name=name)
                continue
            self._event("setting", f"{name} changed {old:g} → {value:g}", step, name=name, old=old, new=value)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if not self._stopped:
            self.control.state = "finished"
        self.control.report(state.global_step, self.control.settings)


def with_control(trainer_cls: type, control: TrainingControl, metrics: MetricsLog, stage: str | None = None) -> type:
    """A subclass of `trainer_cls` whose instances obey `control` between optimizer steps (a `ControlCallback`
    holding the trainer, so that β can change)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        trainer_cls.__init__(self, *args, **kwargs)
        self.add_callback(ControlCallback(control, metrics, stage, trainer=self))

    return type(trainer_cls.__name__, (trainer_cls,), {"__init__": __init__, "__module__": __name__})
