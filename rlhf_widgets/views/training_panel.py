"""The training control panel: live dashboard + sample table + start / pause / resume / stop / settings.

A view only: every button forwards to the run's `TrainingControl`; every figure reads the MetricsLog. Training
runs in a background thread (`run.start()`), so the buttons respond while it trains; setting changes apply
between updates and appear as events on the dashboard.

What the panel reads of a run is `runtime.control.ControlledRun` (PPO's `PPOTrainer`, or `runs.BackgroundRun` for
GRPO / RLOO): `control` (state, pause / stop requests, queued settings, which settings it can change), `metrics`,
`update` (updates done), `total_updates`, `settings` (the values the next update uses), `continues_after_stop` and
`start(num_updates)`. It never reaches into the trainer's internals.

Controls do what they say:
- a setting is sent only when the user changed it since it was created or last applied (a slider snapped to its
  grid by the browser sends nothing); each setting has a slider and a typed entry, which is the value applied;
- every click answers at once in the status line ("stop requested — finishing update 7", "β 0.05 → 0.2 queued,
  applies at update 8"); when PPO's reward-hacking alarm stopped the run or rolled it back, the status line says
  which, after which alert and why (`alarm_text`);
- buttons are enabled exactly when they can act: Start when no run is under way and updates remain (Start after
  Stop continues the run), Pause while running, Resume while paused or pausing, Stop during a run. While pausing
  (the update in flight has not finished) Resume reads "Cancel pause": it withdraws the request and the run never
  pauses. Start and Stop are coloured only while enabled.

After a page reload the panel's widgets may be gone (their state is not saved with the notebook) while the run goes
on in the kernel; a plain line displayed under the panel (`RELOAD_HINT`, see `reload_hint`) survives and says how to
get it back.
"""

from __future__ import annotations

import html
import math
import threading

import ipywidgets as w

from rlhf_widgets.runtime.control import ACTIVE, ControlledRun
from rlhf_widgets.runtime.monitors import ALERT_EVENT
from rlhf_widgets.views.dashboard import LiveDashboard
from rlhf_widgets.views.reload_hint import display_with_hint
from rlhf_widgets.views.samples import SamplesTable

RELOAD_HINT = ("If this panel is gone after a page reload, training goes on in the kernel: show the panel again "
               "in a new cell (e.g. `panel`). Re-running a cell that creates the trainer starts a new run.")
"""the line displayed under the panel (an output of its own, not a widget: it outlives a page reload)"""
LABELS = {"learning_rate": "learning rate", "kl_coef": "KL β", "temperature": "temperature"}
SHORT = {"learning_rate": "lr", "kl_coef": "β", "temperature": "T"}


def phase(run: ControlledRun) -> str:
    """What the run is doing, as the panel says it: idle | running | pausing | paused | stopping | stopped |
    finished | failed."""
    control = run.control
    if control.state in ACTIVE:
        if control.stop_requested:
            return "stopping"
        if control.paused:
            return "paused" if control.state == "paused" else "pausing"
        return "running"
    return control.state


def alarm_text(run: ControlledRun) -> str | None:
    """What the reward-hacking alarm did, when it is what stopped the run (`PPOConfig.on_alert`), else None.

    Read from the run's log: the "stopped" / "rollback" event that names an alert and says the run's current
    `control.reason` (a later user stop has its own reason), and the monitor's "alert" event with the alert's
    message. A rollback says the update whose weights `final/` holds (the run's counters stay at the alert's)."""
    events = run.metrics.events()
    action = next((e for e in reversed(events) if e.kind in ("stopped", "rollback") and "alert" in e.data
                   and e.message == run.control.reason), None)
    if action is None:
        return None
    kind, at = action.data["alert"], action.data["alert_update"]
    why = next((e.message for e in events if e.kind == ALERT_EVENT and e.data.get("monitor") == kind), action.message)
    if action.kind == "stopped":
        return f"stopped by the reward-hacking alarm after update {at} of {run.total_updates} — {kind}: {why}"
    target = action.data["rolled_back_to"]
    checkpoint = f"checkpoint-{target}/"
    if f"({checkpoint})" in action.message:  # the trainer names the checkpoint it returned to
        return (f"rolled back to update {target} ({checkpoint}), the last checkpoint before the alert (update {at}, "
                f"{kind}: {why}) — the policy in final/ is that checkpoint's")
    return (f"rolled back to update {target}, the last copy of the weights kept before the alert (update {at}, "
            f"{kind}: {why}) — the policy in final/ is update {target}'s")


def _fmt(value: float) -> str:
    return f"{value:.3g}"


class SettingEntry:
    """One setting: a slider for quick moves and a typed entry for exact values; the entry's value is applied.

    `kind`: "log" (a log-scale slider from value/100 to value×10, 20 steps a decade) or "linear" (from 0 to
    `high`, in steps of `step`). The slider's grid passes through the starting value, and a slider change
    smaller than half a step (a browser snapping the value to its grid) is ignored.
    """

    def __init__(self, name: str, value: float, kind: str, high: float = 0.0, step: float = 0.05) -> None:
        self.name, self.kind = name, kind
        if kind == "log":
            exponent = math.log10(value)
            self.slider = w.FloatLogSlider(value=value, base=10, min=exponent - 2, max=exponent + 1, step=0.05,
                                           readout=False, continuous_update=False)
        else:
            low = value - math.floor(value / step + 1e-9) * step  # the grid passes through `value`
            top = low + math.ceil((max(high, value) - low) / step - 1e-9) * step
            self.slider = w.FloatSlider(value=value, min=low, max=top, step=step, readout=False,
                                        continuous_update=False)
        self.entry = w.FloatText(value=value, layout=w.Layout(width="110px"))
        self.entry.add_class(f"rlhfw-set-{name}")
        self.slider.add_class(f"rlhfw-slider-{name}")
        self.widget = w.HBox([w.Label(LABELS.get(name, name), layout=w.Layout(width="100px")), self.slider,
                              self.entry])
        self._syncing = False
        self.slider.observe(self._slider_moved, names="value")
        self.entry.observe(self._entry_typed, names="value")

    @property
    def value(self) -> float:
        """The typed entry's value: what Apply sends."""
        return float(self.entry.value)

    def _position(self, value: float) -> float:
        return math.log10(value) if self.kind == "log" else value

    def _slider_moved(self, change: dict) -> None:
        if self._syncing or (self.kind == "log" and not self.entry.value > 0):
            return
        step = self.slider.step
        if abs(self._position(change["new"]) - self._position(self.entry.value)) < step / 2:
            return  # a snap to the slider's grid, not a move
        self._syncing = True
        try:
            self.entry.value = change["new"]
        finally:
            self._syncing = False

    def _entry_typed(self, change: dict) -> None:
        value = change["new"]
        if self._syncing or not math.isfinite(value) or value < 0 or (self.kind == "log" and value <= 0):
            return  # Apply reports a value it cannot send
        self._syncing = True
        try:
            position = self._position(value)
            if position < self.slider.min:
                self.slider.min = position
            if position > self.slider.max:
                self.slider.max = position
            self.slider.value = value
        finally:
            self._syncing = False


class TrainingPanel:
    """Control panel of a background training run. Display with `display(panel)` or by ending a cell with it;
    `panel.widget` is the ipywidgets tree.

    `run`: a `PPOTrainer`, or a `runs.BackgroundRun` (GRPO / RLOO). `view` / `metrics`: what the dashboard
    draws (default: the stage's designed view; see `views.figure_from_log`). `title`: the dashboard's title.
    """

    def __init__(self, run: ControlledRun, metrics: list[str] | None = None, view: str | None = "auto",
                 title: str | None = None) -> None:
        self.run = run
        self.dashboard = LiveDashboard(run.metrics, metrics=metrics, view=view, title=title,
                                       empty_message="no data yet — press Start")
        self.samples = SamplesTable(run.metrics)
        self.status = w.HTML(layout=w.Layout(width="100%"))
        self.status.add_class("rlhfw-ppo-status")
        self.start_button = w.Button(description="Start", icon="play")
        self.pause_button = w.Button(description="Pause", icon="pause")
        self.resume_button = w.Button(description="Resume", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop")
        self.apply_button = w.Button(description="Apply changes", icon="check",
                                     tooltip="send the settings you changed; they apply between updates")
        for button, name in ((self.start_button, "start"), (self.pause_button, "pause"),
                             (self.resume_button, "resume"), (self.stop_button, "stop"),
                             (self.apply_button, "apply")):
            button.add_class(f"rlhfw-ppo-{name}")
        settings = run.settings
        kinds = {"learning_rate": {"kind": "log"},
                 "kl_coef": {"kind": "linear", "high": max(0.5, 4 * settings.get("kl_coef", 0.0)), "step": 0.005},
                 "temperature": {"kind": "linear", "high": max(2.0, 2 * settings.get("temperature", 1.0)),
                                 "step": 0.05}}
        self.entries = {name: SettingEntry(name, settings[name], **kinds[name])
                        for name in run.control.settable if name in settings}
        self._applied = {name: entry.value for name, entry in self.entries.items()}
        """per setting, the value it was created with or last applied: Apply sends only what differs"""
        self.lr = self._entry_widget("learning_rate")
        self.kl = self._entry_widget("kl_coef")
        self.temperature = self._entry_widget("temperature")
        self._message = ""
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(lambda _: self.pause())
        self.resume_button.on_click(lambda _: self.resume())
        self.stop_button.on_click(lambda _: self.stop())
        self.apply_button.on_click(lambda _: self.apply_settings())
        self._unsubscribe = run.metrics.subscribe(lambda *_: self.refresh())
        self.widget = w.VBox([
            w.HBox([self.start_button, self.pause_button, self.resume_button, self.stop_button]),
            self.status,
            w.HBox([w.VBox([entry.widget for entry in self.entries.values()]), self.apply_button],
                   layout=w.Layout(align_items="center")),
            self.dashboard.widget,
            self.samples.widget,
        ], layout=w.Layout(width="100%"))
        self.widget.add_class("rlhfw-ppo-panel")
        self.refresh()

    def _entry_widget(self, name: str) -> w.FloatText | None:
        entry = self.entries.get(name)
        return entry.entry if entry is not None else None

    # ---- actions
    def start(self, num_updates: int | None = None) -> None:
        """Start (or continue) training in the background; `num_updates` total (default the run's plan)."""
        with self._lock:
            if phase(self.run) in ACTIVE + ("pausing", "stopping") or (
                    self._thread is not None and self._thread.is_alive()):
                self._message = "a run is already under way"
            else:
                self._message = ""
                self._thread = self.run.start(num_updates)
        self.refresh()

    def pause(self) -> None:
        """Pause before the next update; the status says which update finishes first."""
        self.run.control.pause()
        self._message = ""
        self.refresh()

    def resume(self) -> None:
        self.run.control.resume()
        self._message = ""
        self.refresh()

    def stop(self) -> None:
        """End the run after the current update (at once when paused). Ignored when no run is under way."""
        if phase(self.run) in ("running", "pausing", "paused"):
            self.run.control.stop()
            self._message = ""
        self.refresh()

    def apply_settings(self) -> None:
        """Queue the settings the user changed; they take effect between updates (and are logged as events)."""
        changed = {name: entry.value for name, entry in self.entries.items()
                   if not math.isclose(entry.value, self._applied[name], rel_tol=1e-9, abs_tol=1e-15)}
        if not changed:
            self._message = "no setting changed"
        else:
            try:
                self.run.control.set(**changed)
            except ValueError as err:
                self._message = f"not applied: {err}"
            else:
                self._applied.update(changed)
                self._message = ""
        self.refresh()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the background run ends (for scripts and headless notebooks)."""
        if self._thread is not None:
            self._thread.join(timeout)
        self.dashboard.flush()
        self.dashboard.snapshot()
        self.refresh()

    # ---- what the panel shows
    def status_text(self) -> str:
        """The status line as plain text (what `status` shows, before HTML escaping)."""
        run, control = self.run, self.run.control
        now, done, total = phase(run), run.update, run.total_updates
        settings = run.settings
        alarm = alarm_text(run) if now == "stopped" else None
        text = {
            "idle": f"ready — {total} updates planned",
            "running": f"running update {done + 1} of {total}",
            "pausing": f"pause requested — finishing update {done + 1}",
            "paused": f"paused after update {done} of {total}",
            "stopping": (f"stop requested — finishing update {done + 1}" if control.state == "running"
                         else "stop requested — stopping"),
            "stopped": alarm or f"stopped after update {done} of {total} — " + (
                "Start continues the run" if run.continues_after_stop else
                "the policy is saved in final/; this trainer cannot continue a stopped run"),
            "finished": f"finished — {done} of {total} updates",
            "failed": f"failed after update {done}: {control.reason}",
        }.get(now, now)
        current = " · ".join(f"{SHORT.get(k, k)} {_fmt(v)}" for k, v in settings.items() if k in self.entries)
        lines = [f"{text} · {current}" if current else text]
        # the update in flight took the queue as it began (`taken_for`): a change queued since waits for the next
        # one. Between updates — paused, or resumed and not yet begun — the queue goes to the next update.
        # (`taken_for` is read before `pending`: a take in between leaves the queue empty, never misdated.)
        taken_for = control.taken_for
        pending = control.pending
        if pending:
            in_flight = control.state == "running" and taken_for is not None and taken_for > done
            at = done + 2 if in_flight else done + 1
            moves = ", ".join(f"{SHORT.get(k, k)} {_fmt(settings.get(k, math.nan))} → {_fmt(v)}"
                              for k, v in pending.items())
            lines.append(f"{moves} queued, applies at update {at}")
        if self._message:
            lines.append(self._message)
        return "\n".join(lines)

    def refresh(self) -> None:
        """Redraw the status line and the button states from the run's public state."""
        with self._lock:
            now = phase(self.run)
            remaining = self.run.update < self.run.total_updates
            can_start = now == "idle" or (now in ("stopped", "failed") and self.run.continues_after_stop)
            self.start_button.disabled = not (can_start and remaining)
            self.start_button.tooltip = (
                "" if not self.start_button.disabled else
                f"all {self.run.total_updates} updates are done: call panel.start(num_updates=…) for more"
                if not remaining else "this trainer cannot continue a stopped run" if now in ("stopped", "failed")
                else "a run is under way")
            self.pause_button.disabled = now != "running"
            self.resume_button.disabled = now not in ("pausing", "paused")
            # while pausing, the trainer has not reached the pause yet: Resume withdraws the request and no pause
            # happens, so the button says that
            self.resume_button.description = "Cancel pause" if now == "pausing" else "Resume"
            self.resume_button.tooltip = (
                f"the pause has not begun: update {self.run.update + 1} finishes and training goes on"
                if now == "pausing" else "")
            self.stop_button.disabled = now not in ("running", "pausing", "paused")
            # a colour marks a button that can act: disabled, it is plain (a faded red Stop still reads as "live")
            self.start_button.button_style = "" if self.start_button.disabled else "success"
            self.stop_button.button_style = "" if self.stop_button.disabled else "danger"
            self.apply_button.disabled = now == "finished" and not remaining
            first, *rest = self.status_text().split("\n")
            state, _, tail = first.partition(" · ")
            parts = [f"<b>{html.escape(state)}</b>" + (f" · {html.escape(tail)}" if tail else "")]
            parts += [f'<span style="color:#b35900">{html.escape(line)}</span>' for line in rest]
            self.status.value = "<br>".join(parts)

    def close(self) -> None:
        self._unsubscribe()
        self.dashboard.close()
        self.samples.close()

    def _ipython_display_(self) -> None:
        display_with_hint(self.widget, RELOAD_HINT)
        self.dashboard.fit_width()


class PPOPanel(TrainingPanel):
    """The PPO control panel: `TrainingPanel` of a `PPOTrainer`, titled "PPO"."""

    def __init__(self, trainer: ControlledRun, metrics: list[str] | None = None, view: str | None = "auto") -> None:
        super().__init__(trainer, metrics=metrics, view=view, title="PPO")
        self.trainer = trainer
