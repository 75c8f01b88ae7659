"""BackgroundRun: a TRL-looped stage (GRPO, RLOO) training in a background thread under a `TrainingControl`.

It gives those stages the surface PPO's trainer has, so `TrainingPanel` drives them the same way:

    run = BackgroundRun(train_grpo, prompts, GRPOStageConfig(...), model=..., reward=...)
    TrainingPanel(run, title="GRPO")      # Start / Pause / Resume / Stop, learning rate and β between steps

A TRL trainer cannot continue after Stop (its loop, optimizer and schedule end with it): the stopped run's policy
is saved in `<output_dir>/final`, and the panel disables Start, saying so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf_widgets.runtime.control import TrainingControl
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.stage_runner import StageResult


class BackgroundRun:
    """`train_fn(data, config, control=..., metrics=..., **kwargs)` run in a daemon thread by `start()`.

    `train_fn`: a stage function taking `control=` (`train_grpo`, `train_rloo`); `config`: its stage config (its
    `output_dir` holds the metrics log unless `metrics` is given; its `learning_rate` and `beta` are the
    settings shown before the run starts); `kwargs`: the stage's other keywords (`model=`, `reward=`).
    After the run, `result` holds its `StageResult` (or `error` the exception that ended it).
    """

    continues_after_stop = False
    """Start after Stop would start over, not continue (see the module docstring)."""

    def __init__(self, train_fn: Callable[..., StageResult], data: Any, config: Any, *,
                 metrics: MetricsLog | None = None, **kwargs: Any) -> None:
        self.train_fn, self.data, self.config, self.kwargs = train_fn, data, config, kwargs
        stage = train_fn.__name__.removeprefix("train_")
        self.metrics = metrics if metrics is not None else MetricsLog(Path(config.output_dir) / "metrics.jsonl",
                                                                      run_name=stage)
        self.control = TrainingControl(settable=("learning_rate", "kl_coef"))
        self.result: StageResult | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def update(self) -> int:
        """Optimizer steps done."""
        return self.control.update

    @property
    def total_updates(self) -> int:
        """Optimizer steps planned: the trainer's count once it runs, else the config's `max_steps`."""
        return self.control.total if self.control.total is not None else int(self.config.max_steps)

    @property
    def settings(self) -> dict[str, float]:
        """The learning rate (the schedule's peak) and β the next step uses."""
        return self.control.settings or {"learning_rate": float(self.config.learning_rate),
                                         "kl_coef": float(self.config.beta)}

    def start(self, num_updates: int | None = None) -> threading.Thread:
        """Train in a background thread; returns it. `num_updates`: not supported (a TRL run's length is its
        config's `max_steps`); raises ValueError when given, or when a run was already started."""
        if num_updates is not None:
            raise ValueError("BackgroundRun.start: set max_steps in the stage config instead of num_updates")
        if self._thread is not None:
            raise ValueError("BackgroundRun.start: this run was already started; a TRL run cannot continue — "
                             "make a new BackgroundRun from its saved policy")
        self.control.state = "running"
        self._thread = threading.Thread(target=self._train, daemon=True, name="rlhf-widgets-run")
        self._thread.start()
        return self._thread

    def _train(self) -> None:
        try:
            self.result = self.train_fn(self.data, self.config, control=self.control, metrics=self.metrics,
                                        **self.kwargs)
        except BaseException as err:
            self.error = err
            self.control.state, self.control.reason = "failed", repr(err)
            self.metrics.log_event("error", f"training failed: {err!r}", step=self.control.update)
            raise

    def wait(self, timeout: float | None = None) -> StageResult | None:
        """Block until the run ends; its result (None if it failed or has not ended)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result
