"""TrainingControl: the thread-safe remote control a notebook panel uses while a stage trains in the background.

The panel calls `pause` / `resume` / `stop` / `set(...)`; the trainer reads the requests between updates
(`wait_while_paused`, `stop_requested`, `take_pending`) and reports its own `state`. Everything a view needs
is public: `state`, `reason`, `paused`, `stop_requested`, `pending`, `taken_for`, `settable`. PPO's trainer exposes its
progress itself (`trainer.update`, `trainer.settings`); a trainer that cannot (a TRL stage under
`callbacks.ControlCallback`) reports it here with `report`, read back as `update` and `settings`.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rlhf_widgets.runtime.metrics import MetricsLog

SETTABLE = ("learning_rate", "kl_coef", "temperature")
"""Settings `TrainingControl.set` can change between updates (PPO: all three)."""
ACTIVE = ("running", "paused")
"""States in which a run is under way."""


class TrainingControl:
    """Requests from the notebook to a running trainer, and the trainer's reported state.

    `settable`: the settings this trainer can change between updates (default all of `SETTABLE`; a TRL GRPO /
    RLOO run: learning rate and β).
    """

    def __init__(self, settable: tuple[str, ...] = SETTABLE) -> None:
        unknown = set(settable) - set(SETTABLE)
        if unknown:
            raise ValueError(f"TrainingControl: unknown settings {sorted(unknown)}; known: {list(SETTABLE)}")
        self.settable = tuple(settable)
        self.state = "idle"
        """idle | running | paused | stopped | finished | failed (set by the trainer)"""
        self.reason = ""
        """why the run stopped or failed ("" otherwise)"""
        self.update = 0
        """updates done, as reported by the trainer with `report` (PPO: read `trainer.update` instead)"""
        self.settings: dict[str, float] = {}
        """the settings the next update uses, as reported with `report` (PPO: `trainer.settings`)"""
        self.total: int | None = None
        """updates the run plans, as reported with `report` (None until reported; PPO: `config.num_updates`)"""
        self.taken_for: int | None = None
        """the update the queued settings were last taken for (`take_pending`; None before any): while it is in
        flight, a change queued now waits for the update after it"""
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
        """Continue after a pause. Before the trainer reaches a requested pause, it withdraws the request: no pause
        happens."""
        self._resume.set()

    def stop(self) -> None:
        """Finish the current update, save, and end the run (a paused run ends at once). Requested while no run is
        under way, it ends the next run before its first update (the panel's Stop is enabled only during a run)."""
        self._stop = True
        self._resume.set()

    def set(self, **changes: float) -> None:
        """Queue new values of the `settable` settings for the next update.

        Raises ValueError naming the setting: unknown here, not a finite number, negative, or a zero learning
        rate / temperature.
        """
        unknown = set(changes) - set(self.settable)
        if unknown:
            raise ValueError(f"TrainingControl.set: cannot change {sorted(unknown)} here; allowed: "
                             f"{list(self.settable)}")
        for name, value in changes.items():
            if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value)
                                               and value >= 0):
                raise ValueError(f"TrainingControl.set: {name}={value!r} must be a finite number >= 0")
            if name in ("learning_rate", "temperature") and value == 0:
                raise ValueError(f"TrainingControl.set: {name} must be > 0")
        with self._lock:
            self._pending.update({name: float(value) for name, value in changes.items()})

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

    def take_pending(self, update: int) -> dict[str, float]:
        """The queued changes, emptying the queue, as the trainer begins `update` (1-based; recorded as
        `taken_for`)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self.taken_for = int(update)
        return pending

    def report(self, update: int, settings: dict[str, float], total: int | None = None) -> None:
        """Record progress for views: `update` done, `settings` the next update uses, `total` planned (None keeps
        the last reported)."""
        self.update = int(update)
        self.settings = dict(settings)
        if total is not None:
            self.total = int(total)


class ControlledRun(Protocol):
    """What a training panel drives (`views.training_panel.TrainingPanel`): PPO's `PPOTrainer` is one, and
    `runs.BackgroundRun` (GRPO / RLOO) is one. The panel reads and writes nothing else of a run."""

    control: TrainingControl
    """pause / stop requests, queued settings, the state the panel shows"""
    metrics: MetricsLog
    """the log every figure reads"""
    continues_after_stop: bool
    """True when Start after Stop continues the run (PPO), False when it cannot (a TRL loop)"""

    @property
    def update(self) -> int:
        """Updates done."""

    @property
    def total_updates(self) -> int:
        """Updates the run plans."""

    @property
    def settings(self) -> dict[str, float]:
        """The values of the settable knobs the next update uses."""

    def start(self, num_updates: int | None = None) -> threading.Thread:
        """Train in a background thread (for `num_updates` more updates where the run can say so)."""
