"""PPOSweep: a small grid of PPO runs — one or two settings — trained one after another in a background thread.

    comparison = RunComparison(metric="gold/score")                 # views: the live overlay
    sweep = PPOSweep(prompts, PPOConfig(num_updates=20), grid={"kl_coef": [0.02, 0.05, 0.2]},
                     model=SFT, reward=REWARD, gold=gold_reward, on_run=comparison.add_run)
    sweep.start()                                                    # the overlay fills as each run trains

Each grid point is a full `PPOTrainer` run in `<output_dir>/<name>` (e.g. `runs/ppo/kl_coef=0.05`) with its own
metrics log, so any two runs can be overlaid later from their logs (`views.overlay_figure`). A grid this small
needs no search library: every point is run, in the order given.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.stage_runner import StageResult
from rlhf_widgets.stages.ppo import PPOConfig

MAX_SETTINGS = 2
"""Settings a grid may vary at once."""


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of `grid`'s values, the first setting varying slowest."""
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def run_name(point: Mapping[str, Any]) -> str:
    """"kl_coef=0.05" or "kl_coef=0.05,learning_rate=0.0001": the run's name and directory."""
    return ",".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in point.items())


class PPOSweep:
    """PPO runs over a grid of one or two `PPOConfig` settings, trained one after another by `start()`.

    `prompts`, `model`, `reward`, `gold`: as `PPOTrainer`; `config`: the settings every run shares (each run
    writes under `<config.output_dir>/<run name>`); `grid`: setting name → values (at most two settings).
    `on_run(name, metrics_log)`: called as each run starts (from the sweep's thread) — `RunComparison.add_run`.
    Every grid point's config is built (and checked) here, so a bad value fails before anything trains.
    """

    def __init__(self, prompts: Sequence, config: PPOConfig, grid: Mapping[str, Sequence[Any]], *, model: Any,
                 reward: Any, gold: Any = None, on_run: Callable[[str, MetricsLog], None] | None = None) -> None:
        fields = {f.name for f in dataclasses.fields(PPOConfig)} - {"output_dir"}
        if not 1 <= len(grid) <= MAX_SETTINGS:
            raise ValueError(f"PPOSweep: grid has {len(grid)} settings; vary one or two (e.g. "
                             "{'kl_coef': [0.02, 0.05, 0.2]})")
        for name, values in grid.items():
            if name not in fields:
                raise ValueError(f"PPOSweep: grid setting {name!r} is not a PPOConfig field; fields: {sorted(fields)}")
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"PPOSweep: grid[{name!r}]={values!r} must be a non-empty list of values")
        self.prompts, self.model, self.reward, self.gold, self.on_run = prompts, model, reward, gold, on_run
        root = Path(config.output_dir)
        self.configs: dict[str, PPOConfig] = {}
        for point in grid_points(grid):
            name = run_name(point)
            try:
                self.configs[name] = dataclasses.replace(config, output_dir=str(root / name), **point)
            except (TypeError, ValueError) as err:
                raise ValueError(f"PPOSweep: grid point {name}: {err}") from err
        self.results: dict[str, StageResult] = {}
        """finished runs, by name"""
        self.current: str | None = None
        """the run training now (None before and after)"""
        self.error: BaseException | None = None
        self._trainer: Any = None
        self._stop = False
        self._thread: threading.Thread | None = None

    def run(self) -> dict[str, StageResult]:
        """Train every grid point in order, in this thread; returns `results`."""
        from rlhf_widgets.stages.ppo import PPOTrainer

        for name, config in self.configs.items():
            if self._stop or name in self.results:
                continue
            self.current = name
            self._trainer = PPOTrainer(self.prompts, config, model=self.model, reward=self.reward, gold=self.gold)
            if self.on_run is not None:
                self.on_run(name, self._trainer.metrics)
            if self._stop:  # stop() came while the trainer was being built
                self._trainer.control.stop()
            self.results[name] = self._trainer.train(show_progress=False)
        self.current = None
        return self.results

    def start(self) -> threading.Thread:
        """Train the grid in a background thread (the notebook stays live); returns the thread."""
        if self._thread is not None and self._thread.is_alive():
            raise ValueError("PPOSweep.start: the sweep is already running")
        self._stop = False
        self._thread = threading.Thread(target=self._run_catching, daemon=True, name="rlhf-widgets-sweep")
        self._thread.start()
        return self._thread

    def _run_catching(self) -> None:
        try:
            self.run()
        except BaseException as err:
            self.error = err
            raise

    def stop(self) -> None:
        """Stop the run in progress after its current update, and skip the runs not started."""
        self._stop = True
        if self._trainer is not None:
            self._trainer.control.stop()

    def wait(self, timeout: float | None = None) -> dict[str, StageResult]:
        """Block until the sweep ends; returns `results`. Raises the error that ended it, if any."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.results
