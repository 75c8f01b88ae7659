"""A grid of tiny PPO runs trains in the background and fills a live overlay; overlays of saved logs."""

from pathlib import Path

import pytest
from conftest import sandbox_prompts

from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.sandbox import gold_reward
from rlhf_widgets.stages.ppo import PPOConfig
from rlhf_widgets.views.run_comparison import RunComparison
from rlhf_widgets.views.run_figures import overlay_figure
from rlhf_widgets.workflows.sweeps import PPOSweep, grid_points, run_name


def tiny(tmp_path: Path) -> PPOConfig:
    return PPOConfig(output_dir=str(tmp_path), num_updates=2, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                     max_new_tokens=8)


def test_a_sweep_of_three_ppo_runs_fills_the_overlay(tmp_path: Path) -> None:
    comparison = RunComparison(metric="objective/kl_coef", min_interval=0.0)
    sweep = PPOSweep(sandbox_prompts(16, seed=4), tiny(tmp_path), grid={"kl_coef": [0.01, 0.1, 0.3]},
                     model="sandbox", reward=gold_reward, gold=gold_reward, on_run=comparison.add_run)
    sweep.start()
    results = sweep.wait(timeout=600)
    assert list(results) == ["kl_coef=0.01", "kl_coef=0.1", "kl_coef=0.3"]
    assert all(r.status == "finished" and r.model_path.is_dir() for r in results.values())
    assert (tmp_path / "kl_coef=0.1" / "metrics.jsonl").is_file()

    comparison.flush()
    traces = {t.name: (list(t.x), list(t.y)) for t in comparison.figure.data}
    assert traces == {"kl_coef=0.01": ([1, 2], [0.01, 0.01]), "kl_coef=0.1": ([1, 2], [0.1, 0.1]),
                      "kl_coef=0.3": ([1, 2], [0.3, 0.3])}
    assert "gold/score" in comparison.choice.options
    comparison.choice.value = "gold/score"  # any metric of the runs
    gold = {t.name: list(t.y) for t in comparison.figure.data}
    assert gold == {name: r.metrics.series("gold/score")[1] for name, r in results.items()}
    # the same overlay from the saved logs
    saved = overlay_figure({name: tmp_path / name / "metrics.jsonl" for name in results}, "gold/score")
    assert {t.name: list(t.y) for t in saved.data} == gold


def test_grid_is_checked_before_anything_trains(tmp_path: Path) -> None:
    assert grid_points({"kl_coef": [0.1, 0.2], "learning_rate": [1e-4]}) == [
        {"kl_coef": 0.1, "learning_rate": 1e-4}, {"kl_coef": 0.2, "learning_rate": 1e-4}]
    assert run_name({"kl_coef": 0.05, "num_ppo_epochs": 2}) == "kl_coef=0.05,num_ppo_epochs=2"
    args = dict(model="sandbox", reward=gold_reward)
    with pytest.raises(ValueError, match="'beta' is not a PPOConfig field"):
        PPOSweep(["p"], tiny(tmp_path), grid={"beta": [0.1]}, **args)
    with pytest.raises(ValueError, match="one or two"):
        PPOSweep(["p"], tiny(tmp_path), grid={"kl_coef": [0.1], "seed": [1], "lam": [0.9]}, **args)
    with pytest.raises(ValueError, match=r"grid point temperature=0: PPOConfig.temperature=0"):
        PPOSweep(["p"], tiny(tmp_path), grid={"temperature": [1.0, 0]}, **args)
    with pytest.raises(ValueError, match="non-empty list"):
        PPOSweep(["p"], tiny(tmp_path), grid={"kl_coef": []}, **args)


def test_overlay_names_what_was_logged_when_the_metric_is_missing() -> None:
    log = MetricsLog()
    log.log({"loss": 1.0}, step=1)
    with pytest.raises(ValueError, match=r"no run logged 'gold/score'; logged metrics: \['loss'\]"):
        overlay_figure({"a": log}, "gold/score")
