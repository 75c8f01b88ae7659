"""PPO's gold-free alarm: an ensemble reward's members logged from one scoring pass, and what a reward-hacking alert
does to a run (`PPOConfig.on_alert`: continue, stop, roll back) — on tiny sandbox runs against a stub ensemble whose
members disagree twice as much with every batch they score."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import sandbox_prompts

from rlhf_widgets.evaluation import MonitorConfig, check_log
from rlhf_widgets.sandbox import gold_reward
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer
from rlhf_widgets.stages.reward.ensemble import RewardEnsemble
from rlhf_widgets.views.report import _alarm_actions, _alerts

PROMPTS = sandbox_prompts(32, seed=27)
MONITOR = MonitorConfig(window=2)
"""Windows of 2 updates: the spread's first window is updates 1–2, and it is first compared at update 4"""
ALERT_UPDATE = 4
"""where `ensemble_disagreement` fires on `drifting_ensemble`: spreads 0.2, 0.4, 0.8, 1.6 → (0.8 + 1.6) / 2 = 1.2,
more than twice (0.2 + 0.4) / 2 = 0.3"""


class DriftingMember:
    """A stub ensemble member: the gold score moved by `sign` × a gap that doubles with every batch it scores
    (0.2, 0.4, 0.8, …): two members ±gap disagree with a spread (population std) of exactly the gap."""

    def __init__(self, sign: float) -> None:
        self.sign = sign
        self.returned: list[torch.Tensor] = []
        """the scores of each call, in order"""

    def score(self, prompts, responses, normalize: bool = True) -> torch.Tensor:
        gap = 0.1 * 2 ** (len(self.returned) + 1)
        scores = torch.tensor(gold_reward(prompts, responses)) + self.sign * gap
        self.returned.append(scores)
        return scores


def drifting_ensemble(objective: str = "mean") -> RewardEnsemble:
    """Two drifting members. Objective "mean" (the gold score itself: conservative score = mean, so only the spread
    can alert)."""
    ensemble = RewardEnsemble([DriftingMember(+1.0), DriftingMember(-1.0)], objective=objective)

    def scored_twice(*args, **kwargs):
        raise AssertionError("PPO must combine the members' scores, not score the batch again")

    ensemble.score = scored_twice  # what calling the ensemble (the reward protocol) would run
    return ensemble


def config(tmp_path: Path, **overrides) -> PPOConfig:
    base = dict(output_dir=str(tmp_path), num_updates=6, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                max_new_tokens=8, sample_every=0, mixed_precision="no")
    return PPOConfig(**{**base, **overrides})


def trainable(trainer: PPOTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.backend.trainable_state().items()}


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def events(trainer: PPOTrainer, kind: str) -> list:
    return [e for e in trainer.metrics.events() if e.kind == kind]


def test_an_ensemble_reward_logs_its_members_from_one_scoring_pass(tmp_path: Path) -> None:
    """Per update: each member's mean score, their mean and their spread — from the one (K, B) pass that gave PPO its
    combined (here worst-member) score; the missing-EOS penalty hits every member alike. A plain reward: none."""
    ensemble = drifting_ensemble("worst")
    trainer = PPOTrainer(PROMPTS, config(tmp_path / "ensemble", num_updates=2), reward=ensemble)
    logged = [trainer.step(), trainer.step()]
    plus, minus = ensemble.members
    assert len(plus.returned) == len(minus.returned) == 2  # one member_scores call per batch
    for metrics, up, down in zip(logged, plus.returned, minus.returned, strict=True):
        members = torch.stack([up, down])
        cut = 1 - metrics["val/num_eos_tokens"] / 4  # share of responses that got the missing-EOS penalty (1.0)
        assert metrics["reward/member_0"] == pytest.approx(up.mean().item() - cut, abs=1e-5)
        assert metrics["reward/member_1"] == pytest.approx(down.mean().item() - cut, abs=1e-5)
        assert metrics["reward/ensemble_mean"] == pytest.approx(members.mean().item() - cut, abs=1e-5)
        assert metrics["reward/ensemble_spread"] == pytest.approx(members.std(0, unbiased=False).mean().item())
        assert metrics["objective/scores"] == pytest.approx(members.min(0).values.mean().item() - cut, abs=1e-5)
    assert [m["reward/ensemble_spread"] for m in logged] == pytest.approx([0.2, 0.4])

    plain = PPOTrainer(PROMPTS, config(tmp_path / "plain", num_updates=1), reward=gold_reward)
    assert not [name for name in plain.step() if name.startswith("reward/")]


@pytest.mark.parametrize("settings", [{}, {"on_alert": "stop", "alert_kinds": ["kl_acceleration"]}],
                         ids=["continue", "stop-on-another-kind"])
def test_an_alert_that_does_not_act_is_logged_and_training_goes_on(tmp_path: Path, settings: dict) -> None:
    trainer = PPOTrainer(PROMPTS, config(tmp_path, **settings), reward=drifting_ensemble(), monitor=MONITOR)
    result = trainer.train(show_progress=False)
    assert result.status == "finished" and trainer.update == 6
    alerts = [e for e in events(trainer, "alert") if e.data["monitor"] == "ensemble_disagreement"]
    assert [e.step for e in alerts] == [ALERT_UPDATE]
    assert alerts[0].data["evidence"]["spread"] == pytest.approx(1.2)
    assert not events(trainer, "rollback") and not events(trainer, "stopped")


def test_stop_ends_the_run_after_the_update_that_raised_the_alert(tmp_path: Path) -> None:
    trainer = PPOTrainer(PROMPTS, config(tmp_path, on_alert="stop"), reward=drifting_ensemble(), monitor=MONITOR)
    result = trainer.train(show_progress=False)
    assert result.status == "stopped" and trainer.update == ALERT_UPDATE
    assert result.reason.startswith(f"stopped by the ensemble_disagreement alert at update {ALERT_UPDATE}: ")
    (stopped,) = events(trainer, "stopped")
    assert stopped.step == ALERT_UPDATE and stopped.data["alert"] == "ensemble_disagreement"
    saved = torch.load(tmp_path / "last" / "trainer_state.pt", weights_only=False)
    assert saved["update"] == ALERT_UPDATE and saved["status"] == "stopped" and saved["reason"] == result.reason
    assert equal(saved["trainable"], trainable(trainer))  # the alert's update's weights are kept
    assert result.model_path == tmp_path / "final" and result.model_path.is_dir()


def rolled_back_to_checkpoint_2(tmp_path: Path, save_every: int, later: int):
    """A run with checkpoints every `save_every` updates whose alert at update 4 rolls it back: it stops there, says it
    went back to checkpoint-2, and holds checkpoint-2's weights, not checkpoint-`later`'s. Returns (trainer, result,
    {2: weights, later: weights})."""
    trainer = PPOTrainer(PROMPTS, config(tmp_path, on_alert="rollback", save_every=save_every),
                         reward=drifting_ensemble(), monitor=MONITOR)
    result = trainer.train(show_progress=False)
    assert result.status == "stopped" and trainer.update == ALERT_UPDATE
    assert result.reason.startswith(f"rolled back to update 2 (checkpoint-2/) after the ensemble_disagreement alert "
                                    f"at update {ALERT_UPDATE}: ")
    checkpoint = {n: torch.load(tmp_path / f"checkpoint-{n}" / "trainer_state.pt", weights_only=False)["trainable"]
                  for n in (2, later)}
    now = trainable(trainer)
    assert equal(now, checkpoint[2]) and not equal(now, checkpoint[later])
    return trainer, result, checkpoint


def test_rollback_restores_the_checkpoint_before_the_alert(tmp_path: Path) -> None:
    """save_every=2: checkpoints 2 and 4; the alert at update 4 rolls back to checkpoint-2 — not to checkpoint-4,
    written at the end of the alert's own update — and that is the final policy and last/'s weights."""
    trainer, result, checkpoint = rolled_back_to_checkpoint_2(tmp_path, save_every=2, later=4)
    last = torch.load(tmp_path / "last" / "trainer_state.pt", weights_only=False)
    assert equal(last["trainable"], checkpoint[2]) and last["reason"] == result.reason
    adapter = "adapter_model.safetensors"
    assert (tmp_path / "final" / adapter).read_bytes() == (tmp_path / "checkpoint-2" / "policy" / adapter).read_bytes()
    (rollback,) = events(trainer, "rollback")
    assert rollback.step == ALERT_UPDATE and rollback.message == result.reason
    assert rollback.data == {"alert": "ensemble_disagreement", "alert_update": ALERT_UPDATE, "rolled_back_to": 2}
    # the report says it beside the monitors' alerts
    page = _alerts(check_log(trainer.metrics, MONITOR), _alarm_actions(trainer.metrics))
    assert f"Rolled back at update {ALERT_UPDATE}</b>: rolled back to update 2 (checkpoint-2/)" in page


def test_rollback_without_checkpoints_uses_the_copy_kept_every_window(tmp_path: Path) -> None:
    """save_every=0: a copy of the weights kept in memory every window (2) updates — the alert at update 4 returns to
    update 2's, taken here from a first train() of 2 updates that the second continues."""
    trainer = PPOTrainer(PROMPTS, config(tmp_path, on_alert="rollback"), reward=drifting_ensemble(), monitor=MONITOR)
    trainer.train(num_updates=2, show_progress=False)
    after_two = trainable(trainer)
    result = trainer.train(show_progress=False)
    assert result.status == "stopped" and trainer.update == ALERT_UPDATE
    assert result.reason.startswith(f"rolled back to update 2 after the ensemble_disagreement alert at update "
                                    f"{ALERT_UPDATE}: ")
    assert equal(trainable(trainer), after_two)
    assert not list(tmp_path.glob("checkpoint-*"))
    (rollback,) = events(trainer, "rollback")
    assert rollback.data["rolled_back_to"] == 2


def test_alarm_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"PPOConfig.on_alert='halt': must be one of \('continue', 'stop', "):
        PPOConfig(on_alert="halt")
    with pytest.raises(ValueError, match=r"PPOConfig.alert_kinds=\['gold_drop'\]: must be None or a non-empty list"):
        PPOConfig(alert_kinds=["gold_drop"])
    assert PPOConfig().alarm_kinds == ("proxy_gold_divergence", "ensemble_disagreement", "conservative_divergence",
                                       "off_prompt_answers")
    assert PPOConfig(alert_kinds=["length_drift"]).alarm_kinds == ("length_drift",)


def test_rollback_goes_back_before_the_window_the_alert_read(tmp_path: Path) -> None:
    """save_every=1: a checkpoint after every update. The alert at update 4 read the window of updates 3–4 (window 2),
    so the run returns to checkpoint-2 — the last one before that window — not to checkpoint-3, whose weights
    update 3, already inside the alert's evidence, had written."""
    trainer, _, _ = rolled_back_to_checkpoint_2(tmp_path, save_every=1, later=3)
    assert trainer._rollback_points == []  # the copies are gone with the run
