"""The PPO control panel: live dashboard + sample table + pause / resume / stop / settings.

A view only: every button forwards to the trainer's `TrainingControl`; every figure reads the
MetricsLog. Training runs in a background thread (`trainer.start()`), so the buttons respond while it
trains; setting changes apply between updates and appear as events on the dashboard.
"""

from __future__ import annotations

import html
import math

import ipywidgets as w

from rlhf_widgets.views import LiveDashboard, SamplesTable

DEFAULT_METRICS = [
    "objective/rlhf_reward", "objective/scores", "gold/score", "objective/kl", "objective/kl_coef",
    "objective/entropy", "policy/clipfrac_avg", "policy/approxkl_avg", "loss/policy_avg", "loss/value_avg",
    "val/ratio", "val/var_explained", "val/response_length",
]


class PPOPanel:
    """Display with `display(panel)` or by ending a cell with it; `panel.widget` is the ipywidgets tree."""

    def __init__(self, trainer, metrics: list[str] | None = None) -> None:
        self.trainer = trainer
        self.dashboard = LiveDashboard(trainer.metrics, metrics=metrics or DEFAULT_METRICS, title="PPO")
        self.samples = SamplesTable(trainer.metrics)
        self.status = w.HTML(layout=w.Layout(min_width="320px"))
        self.start_button = w.Button(description="Start", icon="play", button_style="success")
        self.pause_button = w.Button(description="Pause", icon="pause")
        self.resume_button = w.Button(description="Resume", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger")
        cfg = trainer.config
        self.lr = w.FloatLogSlider(value=cfg.learning_rate, base=10, min=-6, max=-2, description="learning rate",
                                   readout_format=".1e", style={"description_width": "initial"})
        self.kl = w.FloatLogSlider(value=max(cfg.kl_coef, 1e-4), base=10, min=-4, max=0, description="KL β",
                                   readout_format=".3f", style={"description_width": "initial"})
        self.temperature = w.FloatSlider(value=cfg.temperature, min=0.1, max=2.0, step=0.05,
                                         description="temperature", style={"description_width": "initial"})
        self.apply_button = w.Button(description="Apply settings", icon="check")
        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(lambda _: self.pause())
        self.resume_button.on_click(lambda _: self.resume())
        self.stop_button.on_click(lambda _: self.stop())
        self.apply_button.on_click(lambda _: self.apply_settings())
        self._unsubscribe = trainer.metrics.subscribe(lambda *_: self.refresh())
        self._thread = None
        self.widget = w.VBox([
            w.HBox([self.start_button, self.pause_button, self.resume_button, self.stop_button, self.status]),
            w.HBox([self.lr, self.kl, self.temperature, self.apply_button]),
            self.dashboard.widget,
            self.samples.widget,
        ])
        self.widget.add_class("rlhfw-ppo-panel")
        self.refresh()

    def start(self, num_updates: int | None = None) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = self.trainer.start(num_updates)
        self.refresh()

    def pause(self) -> None:
        self.trainer.control.pause()
        self.refresh()

    def resume(self) -> None:
        self.trainer.control.resume()
        self.refresh()

    def stop(self) -> None:
        self.trainer.control.stop()
        self.refresh()

    def apply_settings(self) -> None:
        """Queue the sliders' values; they take effect at the next update (and are logged as events)."""
        current = self.trainer.settings
        wanted = {"learning_rate": self.lr.value, "kl_coef": self.kl.value, "temperature": self.temperature.value}
        changed = {k: v for k, v in wanted.items() if not math.isclose(v, current[k], rel_tol=1e-9)}
        if changed:
            self.trainer.control.set(**changed)
        self.refresh()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the background run ends (for scripts and headless notebooks)."""
        if self._thread is not None:
            self._thread.join(timeout)
        self.dashboard.flush()
        self.refresh()

    def refresh(self) -> None:
        c, t = self.trainer.control, self.trainer
        paused = c.paused and c.state == "running"
        state = "pause requested" if paused else c.state
        reason = f" — {html.escape(c.reason)}" if c.reason else ""
        self.status.value = (f"<b>{html.escape(state)}</b>{reason} · update {t.update}/{t.config.num_updates}"
                             f" · β {t.settings['kl_coef']:.4f}")
        running = c.state in ("running", "paused")
        self.start_button.disabled = running
        self.pause_button.disabled = not running or paused
        self.resume_button.disabled = not running

    def close(self) -> None:
        self._unsubscribe()
        self.dashboard.close()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
