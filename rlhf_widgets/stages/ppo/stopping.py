"""How a PPO run stops: `TrainingStopped`, a safety rail's stop inside an update, and the user's pause / stop between
updates (`user_stop`, read from the notebook's `TrainingControl`).

A rail raises `TrainingStopped` wherever it trips (the rollout, the PPO epochs, the optimizer step, ZeRO's engine);
the trainer puts the last good state back and ends the run with status "failed" (`recovery`). A pause or a stop from
the notebook is only looked at before an update starts, so an update always runs to its end.
"""

from __future__ import annotations

from collections.abc import Callable

from rlhf_widgets.runtime.control import TrainingControl


class TrainingStopped(RuntimeError):
    """A safety rail tripped inside an update; the message is the diagnosis."""


def user_stop(control: TrainingControl, event: Callable[[str, str], None]) -> bool:
    """Before an update: wait out a requested pause (state "paused", events "paused" and — unless a stop ended it —
    "resumed"), then True when the user asked to stop (state "stopped", the stop consumed, event "stopped").
    `event(kind, message)` logs an event at the current update."""
    if control.paused:
        control.state = "paused"
        event("paused", "training paused")
        control.wait_while_paused()
        if not control.stop_requested:
            control.state = "running"
            event("resumed", "training resumed")
    if control.stop_requested:
        control.state, control.reason = "stopped", "stopped by the user"
        control.consume_stop()
        event("stopped", "stopped by the user")
        return True
    return False
