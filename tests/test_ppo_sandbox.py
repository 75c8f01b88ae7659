"""PPO on the sandbox for real: from the SFT model against the learned reward model, judged by gold.

Also what a verbosity-biased reward model does as a proxy: best-of-N buys its score, not gold's.

The thresholds hold over seeds, not just the one the suite runs: docs/PERFORMANCE.md ("Seed-robust sandbox tests")
has each assertion's figures for seeds 0-3 of the whole chain (SFT, pairs, labels, reward models, PPO).
"""

from pathlib import Path

import pytest
from conftest import sandbox_prompts

from rlhf_widgets.best_of import best_of_n
from rlhf_widgets.evaluation import (
    best_of_n_curve,
    check_log,
    ppo_overoptimization_curve,
    sample_policy,
    win_rate,
)
from rlhf_widgets.ppo import PPOConfig, PPOTrainer
from rlhf_widgets.sandbox import gold_reward
from rlhf_widgets.stages import StageResult

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ppo_run(sft_model_dir: Path, trained_reward, tmp_path_factory: pytest.TempPathFactory) -> StageResult:
    cfg = PPOConfig(output_dir=str(tmp_path_factory.mktemp("ppo")), num_updates=40, seed=0)
    trainer = PPOTrainer(sandbox_prompts(1000, seed=2), cfg, model=sft_model_dir, reward=trained_reward.reward_model,
                         gold=gold_reward)
    return trainer.train(show_progress=False)


def test_ppo_beats_sft_on_gold_with_bounded_kl(ppo_run: StageResult, sft_model_dir: Path) -> None:
    assert ppo_run.status == "finished", ppo_run.reason
    prompts = sandbox_prompts(128, seed=3, split="test")
    sft = sample_policy(sft_model_dir, prompts, seed=7)
    ppo = sample_policy(ppo_run.model_path, prompts, seed=8)
    result = win_rate(prompts, ppo, sft, gold_reward)
    print(f"PPO gold win rate over SFT: {result['win_rate']:.3f} (gold {result['mean_score']:.2f} vs "
          f"{result['baseline_mean_score']:.2f})")
    assert result["win_rate"] >= 0.65, result
    _, kl = ppo_run.metrics.series("objective/kl")
    assert max(kl) < 25, kl  # the KL penalty keeps the policy near the SFT model
    _, gold = ppo_run.metrics.series("gold/score")
    assert sum(gold[-5:]) / 5 > sum(gold[:5]) / 5


def test_best_of_n_with_a_verbosity_biased_proxy_buys_proxy_score_not_gold(biased_reward, sft_model_dir: Path) -> None:
    # Over seeds 0-3 of the chain (docs/PERFORMANCE.md) best-of-128 raised this proxy by 1.6-2.0 while gold moved
    # -0.24 to +0.11; whether gold then peaks and falls within N <= 128 (Gao et al.'s shape) varies with the seed
    prompts = sandbox_prompts(32, seed=12, split="test")
    result = best_of_n(prompts, model=sft_model_dir, reward=biased_reward.reward_model, n=128, seed=0)
    curve = best_of_n_curve(result, prompts, gold_reward)
    proxy, gold = [p["proxy"] for p in curve], [p["gold"] for p in curve]
    print("best-of-N curve", [(p["n"], round(p["proxy"], 2), round(p["gold"], 2)) for p in curve])
    assert proxy == sorted(proxy) and proxy[-1] > proxy[0] + 1.2, proxy  # the proxy rises with N ...
    assert gold[-1] < gold[0] + 0.3, gold  # ... gold does not follow


def test_ppo_overoptimization_curve_reads_the_log(ppo_run: StageResult) -> None:
    curve = ppo_overoptimization_curve(ppo_run.metrics, window=5)
    assert len(curve) == 8
    assert curve[-1]["sqrt_kl"] > curve[0]["sqrt_kl"]
    assert curve[-1]["proxy"] > curve[0]["proxy"]


def test_monitors_stay_quiet_on_the_default_run_and_fire_on_a_verbosity_biased_proxy(
        ppo_run: StageResult, biased_reward, sft_model_dir: Path, tmp_path: Path) -> None:
    assert check_log(ppo_run.metrics) == []  # the default run: proxy and gold rise together, lengths stay
    # 20 updates: on this run the length drift is flagged at update 11 (27.6 vs 17.8 tokens, +55%)
    cfg = PPOConfig(output_dir=str(tmp_path), num_updates=20, seed=0, sample_every=0)
    biased = PPOTrainer(sandbox_prompts(1000, seed=2), cfg, model=sft_model_dir,
                        reward=biased_reward.reward_model, gold=gold_reward).train(show_progress=False)
    alerts = check_log(biased.metrics)
    print("alerts on the verbosity-biased run:", [(a.kind, a.update, a.message) for a in alerts])
    assert "length_drift" in {a.kind for a in alerts}
    drift = next(a for a in alerts if a.kind == "length_drift")
    assert drift.evidence and drift.update <= 20
