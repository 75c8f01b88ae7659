"""TrainingControl: the thread-safe remote control a notebook panel uses while PPO trains in the background.

The panel calls `pause` / `resume` / `stop` / `set(...)`; the trainer reads the requests between updates
(`wait_while_paused`, `stop_requested`, `take_pending`) and reports its own `state`. Everything a view needs
is public: `state`, `reason`, `paused`, `stop_requested`, `pending`.
"""

from __future__ import annotations

import math
import threading

SETTABLE = ("learning_rate", "kl_coef", "temperature")
"""Settings `TrainingControl.set` can change between updates."""


class TrainingControl:
    """Requests from the notebook to a running trainer, and the trainer's reported state."""

    def __init__(self) -> None:
        self.state = "idle"
        """idle | running | paused | stopped | finished | failed (set by the trainer)"""
        self.reason = ""
        """why the run stopped or failed ("" otherwise)"""
        self._resume = threading.Event()
        self._resume.set()
        self._stop = False
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()

    # ---- requests (from the panel's thread)
    def pause(self) -> None:
        """Pause before the next update (the current one finishes)."""
        self._resume.clear()

    def resume(self) -> None:
        """Continue after a pause."""
        self._resume.set()

    def stop(self) -> None:
        """Finish the current update, save, and end the run (a paused run ends at once)."""
        self._stop = True
        self._resume.set()

    def set(self, **changes: float) -> None:
        """Queue new values of `learning_rate`, `kl_coef` or `temperature` for the next update."""
        unknown = set(changes) - set(SETTABLE)
        if unknown:
            raise ValueError(f"TrainingControl.set: cannot change {sorted(unknown)}; allowed: {list(SETTABLE)}")
        for name, value in changes.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainingControl.set: {name}={value!r} must be a finite number >= 0")
            if name in ("learning_rate", "temperature") and value == 0:
                raise ValueError(f"TrainingControl.set: {name} must be > 0")
        with self._lock:
            self._pending.update(changes)

    # ---- public state (any thread)
    @property
    def paused(self) -> bool:
        """A pause is requested or in effect: no new update starts until `resume`."""
        return not self._resume.is_set()

    @property
    def stop_requested(self) -> bool:
        """`stop` was called: the run ends after the current update."""
        return self._stop

    @property
    def pending(self) -> dict[str, float]:
        """Setting changes queued for the next update (a copy)."""
        with self._lock:
            return dict(self._pending)

    # ---- the trainer's side
    def wait_while_paused(self) -> None:
        """Block while paused (returns at once when not, and when `stop` is called)."""
        self._resume.wait()

    def consume_stop(self) -> None:
        """The run ended on the stop request: forget it, so that training again continues the run."""
        self._stop = False

    def take_pending(self) -> dict[str, float]:
        """The queued changes, emptying the queue."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending
