"""The PPO control panel without a browser: its buttons drive a real background run."""

import time
from pathlib import Path

import pytest
from conftest import sandbox_prompts

from rlhf_widgets.ppo import PPOConfig, PPOPanel, PPOTrainer
from rlhf_widgets.sandbox import gold_reward


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the training thread")
        time.sleep(0.05)


def test_buttons_pause_resume_change_settings_and_stop(tmp_path: Path) -> None:
    cfg = PPOConfig(output_dir=str(tmp_path), num_updates=50, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                    max_new_tokens=12, sample_every=1, samples_to_log=2)
    trainer = PPOTrainer(sandbox_prompts(32, seed=1), cfg, reward=gold_reward, gold=gold_reward)
    panel = PPOPanel(trainer)
    assert not panel.start_button.disabled and panel.pause_button.disabled

    panel.start_button.click()
    wait_for(lambda: trainer.update >= 1)
    assert panel.start_button.disabled and not panel.pause_button.disabled

    panel.pause_button.click()
    wait_for(lambda: trainer.control.state == "paused")
    paused_at = trainer.update
    time.sleep(0.5)
    assert trainer.update == paused_at, "a paused run must not take more updates"
    assert "paused" in panel.status.value

    panel.lr.value = 1e-5
    panel.kl.value = 0.2
    panel.apply_button.click()
    panel.resume_button.click()
    wait_for(lambda: trainer.update >= paused_at + 1)
    assert trainer.settings["learning_rate"] == pytest.approx(1e-5)
    assert trainer.settings["kl_coef"] == pytest.approx(0.2)

    panel.stop_button.click()
    panel.wait(timeout=120)
    assert trainer.control.state == "stopped" and trainer.update < cfg.num_updates
    kinds = [e.kind for e in trainer.metrics.events()]
    assert kinds.count("setting") == 2  # lr and β changed; temperature untouched is not an event
    assert {"paused", "resumed", "stopped"} <= set(kinds)
    assert "stopped" in panel.status.value and not panel.start_button.disabled
    # the dashboard drew the run and the samples table shows the latest samples
    panel.dashboard.flush()
    kl_trace = next(t for t in panel.dashboard.figure.data if t.name == "objective/kl")
    assert len(kl_trace.x) == trainer.update
    assert "<table" in panel.samples.widget.value
    assert (tmp_path / "last" / "trainer_state.pt").is_file()
    panel.close()
