"""report_to: PPO's metrics and events reach TensorBoard under their own names; names are checked up front."""

import importlib.util
from pathlib import Path

import pytest
from conftest import sandbox_prompts

from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.trackers import attach_trackers, resolve_report_to
from rlhf_widgets.sandbox import gold_reward
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer


def read_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = log_dir.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(event_file.parent), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def text_of(accumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(f"{tag}/text_summary")]


def test_report_to_names_are_checked() -> None:
    assert resolve_report_to(None) == resolve_report_to("none") == resolve_report_to([]) == []
    assert resolve_report_to("tensorboard") == ["tensorboard"]
    assert "tensorboard" in resolve_report_to("all")
    with pytest.raises(ValueError, match="unknown tracker 'tensorbaord'"):
        resolve_report_to(["tensorbaord"])
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ValueError, match=r"wandb is not installed here \(pip install wandb\)"):
            resolve_report_to("wandb")
    with pytest.raises(ValueError, match="report_to"):
        PPOTrainer(["p"], PPOConfig(report_to="mlflow"), reward=gold_reward)


def test_ppo_report_to_tensorboard_writes_its_metrics_and_events(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    cfg = PPOConfig(output_dir=str(tmp_path), num_updates=2, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                    max_new_tokens=8, report_to="tensorboard")
    trainer = PPOTrainer(sandbox_prompts(16, seed=5), cfg, reward=gold_reward, gold=gold_reward)
    trainer.control.set(kl_coef=0.1)
    trainer.train(show_progress=False)
    trainer.trackers.close()

    events = read_events(tmp_path / "runs")  # HF's default place: <output_dir>/runs/<date>_<host>
    tags = set(events.Tags()["scalars"])
    assert {"objective/kl", "objective/scores", "objective/rlhf_reward", "policy/clipfrac_avg", "loss/value_avg",
            "gold/score", "val/ratio"} <= tags
    assert tags == set(trainer.metrics.names())
    for name in ("objective/kl", "gold/score", "objective/kl_coef"):
        steps, values = trainer.metrics.series(name)
        assert [(e.step, e.value) for e in events.Scalars(name)] == [
            (s, pytest.approx(v, rel=1e-6)) for s, v in zip(steps, values, strict=True)]
    texts = text_of(events, "events")
    assert (0, "setting: kl_coef changed 0.05 → 0.1") in texts
    assert any("saved" in text for _, text in texts)
    assert '"kl_coef": 0.05' in text_of(events, "config")[0][1]


def test_trackers_forward_only_new_entries_and_stop_when_closed(tmp_path: Path) -> None:
    log = MetricsLog()
    log.log({"old": 1.0}, step=1)
    trackers = attach_trackers(log, "tensorboard", run_name="t", config={"a": 1}, output_dir=tmp_path)
    log.log({"loss": 0.5}, step=2)
    trackers.close()
    log.log({"loss": 0.4}, step=3)
    events = read_events(tmp_path)
    assert events.Tags()["scalars"] == ["loss"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(2, 0.5)]
