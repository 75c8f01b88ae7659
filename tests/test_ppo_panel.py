"""The training control panel without a browser: its buttons drive real background runs (PPO, and GRPO through
TRL's callback hooks); the settings it sends are exactly those the user changed."""

import html
import math
import time
from pathlib import Path

import pytest
from conftest import sandbox_prompts
from test_ppo_alarm import ALERT_UPDATE, MONITOR, PROMPTS, config, drifting_ensemble

from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.sandbox import gold_reward
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer, TrainingControl
from rlhf_widgets.views.training_panel import PPOPanel, SettingEntry, TrainingPanel


def wait_for(condition, what: str = "the training thread", timeout: float = 300.0) -> None:
    """Wait until `condition()` holds: a state, never a number of updates assumed to fit in some time (the timeout
    only ends a hung run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def buttons(panel) -> dict[str, bool]:
    """Which buttons are enabled."""
    return {name: not getattr(panel, f"{name}_button").disabled for name in ("start", "pause", "resume", "stop")}


IDLE = {"start": True, "pause": False, "resume": False, "stop": False}
RUNNING = {"start": False, "pause": True, "resume": False, "stop": True}
PAUSED = {"start": False, "pause": False, "resume": True, "stop": True}
STOPPING = {"start": False, "pause": False, "resume": False, "stop": False}


def test_setting_entry_ignores_grid_snaps_and_follows_moves_and_typing() -> None:
    lr = SettingEntry("learning_rate", 3e-4, "log")
    # the slider's grid passes through the starting value; the browser snapping it sends nothing
    assert math.isclose(lr.slider.value, 3e-4, rel_tol=1e-12)
    lr.slider.value = 10 ** -3.5  # 0.023 decades away, under half a step (0.025): a snap to a coarser grid
    assert lr.value == 3e-4
    lr.slider.value = 1e-3  # a real move (0.52 decades)
    assert lr.value == pytest.approx(1e-3)
    lr.entry.value = 2.5e-7  # typed below the slider's range: the slider widens to it, the entry keeps it exactly
    assert lr.value == 2.5e-7 and lr.slider.min <= math.log10(2.5e-7)
    beta = SettingEntry("kl_coef", 0.037, "linear", high=0.5, step=0.005)
    assert beta.slider.value == pytest.approx(0.037) and beta.slider.max >= 0.5
    beta.slider.value = 0.0372  # within half a step: a snap
    assert beta.value == 0.037
    beta.slider.value = 0.2
    assert beta.value == pytest.approx(0.2)


def test_panel_buttons_drive_a_ppo_run(tmp_path: Path) -> None:
    cfg = PPOConfig(output_dir=str(tmp_path), num_updates=40, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                    max_new_tokens=8, samples_to_log=2)
    assert cfg.sample_every == 4  # sized to the run: about ten tables
    trainer = PPOTrainer(sandbox_prompts(32, seed=1), cfg, reward=gold_reward, gold=gold_reward)
    panel = PPOPanel(trainer)
    assert buttons(panel) == IDLE and "ready" in panel.status.value

    panel.start_button.click()
    wait_for(lambda: trainer.update >= 1)
    assert buttons(panel) == RUNNING and "running update" in panel.status.value

    panel.pause_button.click()  # answered at once, before the update in flight ends
    assert buttons(panel) == PAUSED
    assert "pause requested — finishing update" in panel.status.value or "paused after" in panel.status.value
    wait_for(lambda: trainer.control.state == "paused")
    panel.refresh()
    paused_at = trainer.update
    assert f"paused after update {paused_at}" in panel.status.value
    time.sleep(0.3)
    assert trainer.update == paused_at, "a paused run must not take more updates"

    # the browser snaps the lr slider to its grid; the user changes β only: only β is sent
    panel.entries["learning_rate"].slider.value = 10 ** -3.5
    panel.kl.value = 0.2
    panel.apply_button.click()
    assert trainer.control.pending == {"kl_coef": 0.2}
    assert f"β 0.05 → 0.2 queued, applies at update {paused_at + 1}" in panel.status.value
    panel.apply_button.click()
    assert "no setting changed" in panel.status.value and trainer.control.pending == {"kl_coef": 0.2}
    panel.temperature.value = -1.0
    panel.apply_button.click()
    assert "not applied" in panel.status.value and "temperature" in panel.status.value

    panel.temperature.value = 1.0
    panel.resume_button.click()
    wait_for(lambda: trainer.update >= paused_at + 1)
    assert trainer.settings["kl_coef"] == 0.2 and trainer.settings["learning_rate"] == 3e-4
    assert trainer.settings["temperature"] == 1.0

    panel.stop_button.click()
    assert "stop requested — finishing update" in panel.status.value and buttons(panel) == STOPPING
    panel.wait(timeout=120)
    stopped_at = trainer.update
    assert trainer.control.state == "stopped" and stopped_at < cfg.num_updates
    assert buttons(panel) == IDLE and f"stopped after update {stopped_at}" in panel.status.value

    panel.start_button.click()  # continues the run, until it has logged a samples table (every 4th update)
    wait_for(lambda: trainer.update >= stopped_at + 1 and "<table" in panel.samples.widget.value,
             "a continued update and a logged samples table")
    panel.stop_button.click()
    panel.wait(timeout=120)
    assert trainer.update > stopped_at and trainer.control.state == "stopped"

    events = trainer.metrics.events()
    settings = [e for e in events if e.kind == "setting"]
    assert [(e.data["name"], e.data["new"]) for e in settings] == [("kl_coef", 0.2)]  # lr and T were never sent
    assert [e.kind for e in events].count("stopped") == 2
    panel.dashboard.flush()
    kl_trace = next(t for t in panel.dashboard.figure.data if t.meta == "objective/kl")
    assert len(kl_trace.x) == trainer.update
    assert "<table" in panel.samples.widget.value
    assert (tmp_path / "last" / "trainer_state.pt").is_file()
    panel.close()


def test_panel_drives_grpo_through_the_trl_callback(tmp_path: Path) -> None:
    from rlhf_widgets.runtime.runs import BackgroundRun
    from rlhf_widgets.stages.grpo import GRPOStageConfig, train_grpo

    cfg = GRPOStageConfig(output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=8, learning_rate=1e-4, beta=0.04)
    run = BackgroundRun(train_grpo, sandbox_prompts(32, seed=2), cfg, model="sandbox", reward=gold_reward)
    panel = TrainingPanel(run, title="GRPO")
    assert set(panel.entries) == {"learning_rate", "kl_coef"}  # TRL fixes the temperature when it builds
    assert buttons(panel) == IDLE

    panel.start_button.click()
    wait_for(lambda: run.update >= 1)
    panel.pause_button.click()
    wait_for(lambda: run.control.state == "paused")
    paused_at = run.update
    panel.lr.value = 5e-5
    panel.kl.value = 0.1
    panel.apply_button.click()
    assert "queued, applies at update" in panel.status.value
    panel.resume_button.click()
    wait_for(lambda: run.update >= paused_at + 1)
    assert run.settings == {"learning_rate": pytest.approx(5e-5), "kl_coef": pytest.approx(0.1)}

    panel.stop_button.click()
    assert "stop requested" in panel.status.value
    result = run.wait(timeout=300)
    panel.refresh()
    assert run.control.state == "stopped" and result is not None and run.update < 30
    assert (result.model_path / "config.json").is_file()
    assert buttons(panel) == {"start": False, "pause": False, "resume": False, "stop": False}
    assert "cannot continue" in panel.status.value
    kinds = [e.kind for e in run.metrics.events()]
    assert kinds.count("setting") == 2 and {"paused", "resumed", "stopped", "saved"} <= set(kinds)
    panel.close()


def test_settings_queued_before_a_trl_run_apply_as_it_begins() -> None:
    """`ControlCallback.on_train_begin` takes the queue for step 1 (the panel dates it so while idle)."""
    from types import SimpleNamespace

    import torch

    from rlhf_widgets.runtime.callbacks import ControlCallback

    control, trl_trainer = TrainingControl(settable=("learning_rate", "kl_coef")), SimpleNamespace(beta=0.04)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    control.set(kl_coef=0.1, learning_rate=5e-5)
    callback = ControlCallback(control, MetricsLog(), stage="grpo", trainer=trl_trainer)
    callback.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=3), None, optimizer=optimizer)
    assert trl_trainer.beta == 0.1 and optimizer.param_groups[0]["lr"] == pytest.approx(5e-5)
    assert control.pending == {} and control.taken_for == 1 and control.settings["kl_coef"] == 0.1


@pytest.mark.parametrize("settings, expected", [
    ({"on_alert": "stop"},
     f"stopped by the reward-hacking alarm after update {ALERT_UPDATE} of 6 — ensemble_disagreement: "),
    ({"on_alert": "rollback", "save_every": 2},
     f"rolled back to update 2 (checkpoint-2/), the last checkpoint before the alert (update {ALERT_UPDATE}, "
     "ensemble_disagreement: "),
    ({"on_alert": "rollback"},
     f"rolled back to update 2, the last copy of the weights kept before the alert (update {ALERT_UPDATE}, "
     "ensemble_disagreement: "),
], ids=["stop", "rollback-to-checkpoint", "rollback-in-memory"])
def test_status_says_the_alarm_stopped_or_rolled_back_the_run_and_why(tmp_path: Path, settings: dict,
                                                                     expected: str) -> None:
    """A tiny run whose ensemble's members drift apart (tests/test_ppo_alarm.py): the alarm ends it at update 4, and
    the status line says what it did, after which alert, the alert's own message and — after a rollback — whose
    policy final/ holds. The text reaches the page escaped. A later stop by the user reads as any user stop."""
    trainer = PPOTrainer(PROMPTS, config(tmp_path, **settings), reward=drifting_ensemble(), monitor=MONITOR)
    panel = PPOPanel(trainer)
    trainer.train(show_progress=False)
    panel.refresh()
    (alert,) = [e for e in trainer.metrics.events() if e.kind == "alert"]
    status = panel.status_text().split("\n")[0]
    assert status.startswith(expected + alert.message)
    if settings["on_alert"] == "rollback":
        assert "— the policy in final/ is " + ("that checkpoint's" if "save_every" in settings else "update 2's") \
            in status
    assert "'" in status and "'" not in panel.status.value  # the alert's message, escaped
    assert html.escape(status.partition(" · ")[0]) in panel.status.value

    trainer.control.stop()  # Start after the alarm continues the run; the user stops it before its next update
    trainer.train(show_progress=False)
    panel.refresh()
    assert panel.status_text().startswith(f"stopped after update {ALERT_UPDATE} of 6 — Start continues the run")
    panel.close()


class HandRun:
    """What the panel reads of a run, and nothing else: the test plays the trainer's side of `TrainingControl` by
    hand (state, `take_pending` as an update begins, `update` as it ends)."""

    def __init__(self, total: int = 6) -> None:
        self.control = TrainingControl()
        self.metrics = MetricsLog()
        self.update = 0
        self.settings = {"learning_rate": 3e-4, "kl_coef": 0.05, "temperature": 1.0}
        self.total_updates = total

    def start(self, num_updates: int | None = None) -> None:
        self.control.state = "running"


def test_start_and_stop_are_coloured_only_while_they_can_act() -> None:
    run = HandRun()
    panel = TrainingPanel(run, title="hand")
    styles = lambda: (panel.start_button.button_style, panel.stop_button.button_style)  # noqa: E731
    assert styles() == ("success", "")  # idle: Stop is disabled, so not red
    panel.start_button.click()
    assert buttons(panel) == RUNNING and styles() == ("", "danger")
    panel.stop_button.click()
    assert buttons(panel) == STOPPING and styles() == ("", "")
    panel.close()


def test_resume_while_pausing_says_it_cancels_the_pause() -> None:
    """Until the trainer reaches the pause, Resume withdraws the request (the run never pauses): it says so."""
    run = HandRun()
    panel = TrainingPanel(run, title="hand")
    panel.start_button.click()
    panel.pause_button.click()
    assert buttons(panel) == PAUSED and panel.resume_button.description == "Cancel pause"
    assert "update 1 finishes and training goes on" in panel.resume_button.tooltip
    panel.resume_button.click()
    assert not run.control.paused and "running update 1" in panel.status_text()
    assert panel.resume_button.description == "Resume" and buttons(panel) == RUNNING

    panel.pause_button.click()
    run.update, run.control.state = 1, "paused"  # the trainer reached the pause
    panel.refresh()
    assert panel.resume_button.description == "Resume" and panel.resume_button.tooltip == ""
    panel.close()


def test_a_queued_setting_is_dated_by_the_update_that_takes_it() -> None:
    """A change applies at the first update that begins after it is queued: the one after the update in flight, the
    next one between updates — also right after Resume, before the trainer has begun that update."""
    run = HandRun()
    panel = TrainingPanel(run, title="hand")
    control = panel.run.control
    panel.start_button.click()
    control.take_pending(1)  # update 1 begins
    panel.kl.value = 0.2
    panel.apply_button.click()
    assert panel.status_text().endswith("β 0.05 → 0.2 queued, applies at update 2")
    panel.pause_button.click()
    run.update = 1  # update 1 ends; the trainer has not yet reached the pause
    assert panel.status_text().endswith("applies at update 2")
    control.state = "paused"
    assert panel.status_text().endswith("applies at update 2")
    panel.resume_button.click()
    control.state = "running"  # the trainer wakes ("resumed") and has not taken the queue yet
    assert panel.status_text().endswith("applies at update 2")
    run.settings["kl_coef"] = control.take_pending(2)["kl_coef"]  # update 2 begins with β 0.2
    panel.kl.value = 0.3
    panel.apply_button.click()
    assert panel.status_text().endswith("β 0.2 → 0.3 queued, applies at update 3")
    run.update = 2
    assert panel.status_text().endswith("applies at update 3")
    panel.close()


def test_the_status_after_resume_names_the_update_the_trainer_applies_a_setting_at(tmp_path: Path) -> None:
    """A real PPO run paused before its first update, β queued, resumed: every status line drawn while it goes on
    dates the change at update 1, where the trainer applies it."""
    cfg = PPOConfig(output_dir=str(tmp_path), num_updates=1, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                    max_new_tokens=4, sample_every=0)
    trainer = PPOTrainer(sandbox_prompts(8, seed=3), cfg, reward=gold_reward)
    panel = PPOPanel(trainer)
    drawn: list[str] = []
    trainer.metrics.subscribe(lambda *_: drawn.append(panel.status_text()))
    trainer.control.pause()
    panel.start_button.click()
    wait_for(lambda: trainer.control.state == "paused")
    panel.kl.value = 0.2
    panel.apply_button.click()
    panel.resume_button.click()
    panel.wait(timeout=120)
    dated = [line for text in drawn for line in text.split("\n") if "queued" in line]
    assert dated and all(line.endswith("applies at update 1") for line in dated), dated
    (setting,) = [e for e in trainer.metrics.events() if e.kind == "setting"]
    assert setting.step == 0 and trainer.control.taken_for == 1  # applied as update 1 began
    panel.close()


def test_a_line_that_survives_a_page_reload_is_displayed_with_the_panel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The panel's widgets are gone after a reload of a notebook saved without widget state; a plain output
    displayed with them is not, and it tells how to get the panel back."""
    import IPython.display

    from rlhf_widgets.views.training_panel import RELOAD_HINT

    shown: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.append((objs, kw)))
    panel = TrainingPanel(HandRun(), title="hand")
    panel._ipython_display_()
    (view,), (hint,) = [objs for objs, _ in shown]
    assert view["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
    assert hint["text/plain"] == RELOAD_HINT and html.escape(RELOAD_HINT) in hint["text/html"]
    assert not any(key.startswith("application/vnd.jupyter.widget") for key in hint)
    assert "training goes on" in RELOAD_HINT and "show the panel again" in RELOAD_HINT
    panel.close()
