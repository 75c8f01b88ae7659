"""What a PPO run goes back to when an update fails or an alarm fires: the last good state, rollback points, and what
a failed update or an acting alert does to the run.

Failure handling: before every update the trainable weights and optimizer state are kept as the last good state
(only when finite: `keep_last_good`). A rail, a non-finite gradient (`PPOConfig.nonfinite_grads`) or any exception
inside the update puts that state back on every process and writes `last/` with the reason (`failed_update`); a rail
ends the run with status "failed", another exception is raised after the checkpoint. A process that dies makes the
others raise `PeerLost` at their next collective (no checkpoint: the weights in memory are put back to the last good
update).

Reward-hacking alarm: during `train()` a `RewardHackingMonitor` (`runtime.monitors`) watches the run's log and logs
each alert as an event; at the end of an update that raised an alert of a kind in `PPOConfig.alarm_kinds`,
`PPOConfig.on_alert` decides — on the main process, whose log it is, followed by every process (`acting_alert`) —
whether the run goes on, stops there, or rolls the weights back to the last checkpoint before that update and stops
(`act_on`; the points a rollback can return to are kept by `keep_rollback_point`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from rlhf_widgets.stages.ppo.distributed import PeerLost
from rlhf_widgets.stages.ppo.stopping import TrainingStopped

if TYPE_CHECKING:
    from rlhf_widgets.runtime.monitors import Alert
    from rlhf_widgets.stages.ppo.trainer import PPOTrainer


# ---------------------------------------------------------------- the last good state
def keep_last_good(trainer: PPOTrainer) -> None:
    """Keep the trainable weights and optimizer state as the state a failed update returns to — only when every
    weight is finite (then the previous one stays, and the update is refused)."""
    weights = trainer.backend.trainable_state()
    if not all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()):
        raise TrainingStopped(f"non-finite weights before update {trainer.update + 1}: they were changed outside "
                              "the trainer")
    zero, scaler = trainer.zero, trainer.precision.scaler
    trainer._last_good = {"weights": {k: v.detach().clone() for k, v in weights.items()},
                          "optimizer": None if zero else copy.deepcopy(trainer.optimizer.state_dict()),
                          "zero": zero.state() if zero else None,
                          "scaler": None if scaler is None else scaler.state_dict()}


def restore_last_good(trainer: PPOTrainer) -> None:
    """Put back the state kept before the failed update (weights, optimizer moments, loss scale)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    if trainer._last_good is not None:
        restore(trainer, trainer._last_good)


def restore(trainer: PPOTrainer, state: dict) -> None:
    """Put back a state `keep_last_good` kept. The optimizer gets a copy: it keeps the tensors it is given and
    updates them in place, and a kept state may be put back again (a rollback point outlives one update)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.backend.load_trainable_state(state["weights"])
    if trainer.zero is not None:
        trainer.zero.load_state(copy.deepcopy(state["zero"]))
    else:
        trainer.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    if state["scaler"] is not None:
        trainer.precision.scaler.load_state_dict(state["scaler"])


def failed_update(trainer: PPOTrainer, err: BaseException) -> bool:
    """After `err` ended an update: the last good state put back, the run's status "failed" with the reason, an
    event. True for a safety stop (`TrainingStopped`): the run ends there. False when the caller re-raises `err`:
    a lost process or an interrupt (no checkpoint: it needs every process / is unwanted), or any other exception
    (after `last/` is written with the reason)."""
    control = trainer.control
    restore_last_good(trainer)
    if isinstance(err, (PeerLost, KeyboardInterrupt)):
        control.state, control.reason = "failed", str(err) or type(err).__name__
        trainer._event("error", f"update {trainer.update + 1} interrupted: {control.reason}; weights restored to "
                       "the last good update")
        return False
    stopped = isinstance(err, TrainingStopped)
    control.state, control.reason = "failed", str(err) if stopped else f"{type(err).__name__}: {err}"
    trainer._event("stopped", f"{'safety stop' if stopped else 'update failed'}: {control.reason}; weights restored "
                   "to the last good update")
    if stopped:
        return True
    trainer.save_checkpoint(trainer.output_dir / "last")
    return False


# ---------------------------------------------------------------- the reward-hacking alarm
def keep_rollback_point(trainer: PPOTrainer) -> None:
    """With `on_alert="rollback"`: keep the last good state (just taken, before this update) as a point a rollback
    can return to, when this update follows a checkpoint (`save_every`; without checkpoints every
    `MonitorConfig.window` updates) or none is kept yet (the state the run started from). An alert at update u reads
    the trailing window u − window + 1 … u, so it returns to the last point at or before u − window
    (`rollback_target`): older points than that one are dropped."""
    cfg = trainer.config
    if cfg.on_alert != "rollback":
        return
    window = trainer.monitor_config.window
    every = cfg.save_every or window
    points = trainer._rollback_points
    if not points or trainer.update % every == 0:
        points.append((trainer.update, trainer._last_good))
    earliest_alert = trainer.update + 1
    while len(points) > 1 and points[1][0] <= earliest_alert - window:
        points.pop(0)


def rollback_target(points: list[tuple[int, dict]], alert_update: int, window: int) -> tuple[int, dict]:
    """Of the kept `points` (update, state), the last one before the `window` updates whose trailing mean raised an
    alert at `alert_update` (the run's first point if there is none that early)."""
    before = [point for point in points if point[0] <= alert_update - window]
    return before[-1] if before else points[0]


def acting_alert(trainer: PPOTrainer, raised: list[Alert]) -> Alert | None:
    """The first of `raised` (this update's alerts) of a kind `on_alert` acts on, or None — decided on the main
    process, whose log the monitor watches, and the same on every process."""
    cfg = trainer.config
    if cfg.on_alert == "continue":
        return None
    acting = next((alert for alert in raised if alert.kind in cfg.alarm_kinds), None) if trainer.is_main else None
    trainer.processes.where = f"the alarm of update {trainer.update}"
    return trainer.processes.broadcast(acting)


def act_on(trainer: PPOTrainer, alert: Alert) -> None:
    """End the run for `alert` as `on_alert` says: "stop" keeps this update's weights; "rollback" first puts back the
    weights and optimizer state of the rollback point (the last checkpoint before the window of updates that raised
    the alert: `rollback_target`).
    Either way the status is "stopped" and the reason names the alert; an event ("stopped" / "rollback") says it in
    the log."""
    control = trainer.control
    cause = f"the {alert.kind} alert at update {alert.update}: {alert.message}"
    if trainer.config.on_alert == "stop":
        control.state, control.reason = "stopped", f"stopped by {cause}"
        trainer._event("stopped", control.reason, alert=alert.kind, alert_update=alert.update)
        return
    target, state = rollback_target(trainer._rollback_points, alert.update, trainer.monitor_config.window)
    restore(trainer, state)
    trainer._rollback_points = []  # the weights are that point's now: a later run keeps its own
    every = trainer.config.save_every
    source = f" (checkpoint-{target}/)" if every and target and target % every == 0 else ""
    control.state, control.reason = "stopped", f"rolled back to update {target}{source} after {cause}"
    trainer._event("rollback", control.reason, alert=alert.kind, alert_update=alert.update, rolled_back_to=target)
