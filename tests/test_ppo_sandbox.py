"""PPO on the sandbox for real: from the SFT model against the learned reward model, judged by gold.

Also what a verbosity-biased reward model does as a proxy: best-of-N buys its score, not gold's.

The thresholds hold over seeds, not just the one the suite runs: docs/PERFORMANCE.md ("Seed-robust sandbox tests")
has each assertion's figures for seeds 0-3 of the whole chain (SFT, pairs, labels, reward models, PPO).
"""

from pathlib import Path

import pytest
from conftest import sandbox_prompts

from rlhf_widgets.evaluation import (
    best_of_n_curve,
    check_log,
    ppo_overoptimization_curve,
    sample_policy,
    win_rate,
)
from rlhf_widgets.runtime.stage_runner import StageResult
from rlhf_widgets.sandbox import gold_reward
from rlhf_widgets.stages.best_of import best_of_n
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer

pytestmark = pytest.mark.slow


HEALTHY_KL_COEF = 0.1
"""β of the suite's PPO run, twice the default. The tests below need a run that is healthy by gold's own measure
on every seed and both precision paths — gold's smoothed score ends within 0.3 of its best — so that "the monitors
stay quiet" is a false-alarm test, not a test that the run happens not to reward-hack. Over float32 seeds 0-3 and
bf16 seeds 0, 1, 3 (docs/PERFORMANCE.md, "Both precision paths") β = 0.1 is such a run (gold ends 0-0.25 below its
best); the default β = 0.05 is not: on the float32 path it over-optimizes this chain's reward model on three seeds
of four (gold falls 0.58-0.64 from its best while the proxy rises, or entropy collapses), and the monitors say so —
the reward-hacking issue's to fix."""


@pytest.fixture(scope="module")
def ppo_run(sft_model_dir: Path, trained_reward, tmp_path_factory: pytest.TempPathFactory) -> StageResult:
    cfg = PPOConfig(output_dir=str(tmp_path_factory.mktemp("ppo")), num_updates=40, seed=0, kl_coef=HEALTHY_KL_COEF)
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
    # float32 seeds 0-3, bf16 seeds 1 and 3 (docs/PERFORMANCE.md, "Both precision paths"): 0.64-0.87 at β = 0.1;
    # the floor sits below every run and well above SFT's 0.5 (128 prompts: a win rate's standard error is ~0.04)
    assert result["win_rate"] >= 0.6, result
    _, kl = ppo_run.metrics.series("objective/kl")
    assert max(kl) < 25, kl  # the KL penalty keeps the policy near the SFT model
    _, gold = ppo_run.metrics.series("gold/score")
    assert sum(gold[-5:]) / 5 > sum(gold[:5]) / 5


def test_best_of_n_with_a_verbosity_biased_proxy_buys_proxy_score_not_gold(
        biased_reward, trained_reward, sft_model_dir: Path) -> None:
    # Up to best-of-8 (KL 1.2 nats) the biased proxy's pick rises in proxy score but not in gold, while the unbiased
    # reward model, picking from the very same 128 samples a prompt, buys gold. Over float32 seeds 0-3 and bf16
    # seeds 1, 3 (docs/PERFORMANCE.md, "Both precision paths") at N = 8: proxy +1.14 to +1.40, the proxy's pick's
    # gold -0.20 to +0.06, the unbiased pick's gold 0.60 to 0.93 above it. Beyond N = 8 the biased pick's gold moves
    # with the seed (at N = 128 from -0.41 to +0.86: longer answers also carry more of gold's clauses), which is
    # why the assertion stops at 8.
    prompts = sandbox_prompts(32, seed=12, split="test")
    result = best_of_n(prompts, model=sft_model_dir, reward=biased_reward.reward_model, n=128, seed=0)
    ns = [1, 2, 4, 8]
    biased = best_of_n_curve(result, prompts, gold_reward, ns=ns)
    fair = best_of_n_curve(result.rescored(prompts, trained_reward.reward_model), prompts, gold_reward, ns=ns)
    print("best-of-N, biased proxy", [(p["n"], round(p["proxy"], 2), round(p["gold"], 2)) for p in biased],
          "unbiased RM's gold", [round(p["gold"], 2) for p in fair])
    proxy, gold = [p["proxy"] for p in biased], [p["gold"] for p in biased]
    assert proxy == sorted(proxy) and proxy[-1] > proxy[0] + 1.0, proxy  # the proxy rises with N ...
    assert gold[-1] < gold[0] + 0.25, gold  # ... gold does not follow ...
    assert fair[-1]["gold"] > gold[-1] + 0.4, (fair, gold)  # ... though the same samples held better answers


def test_ppo_overoptimization_curve_reads_the_log(ppo_run: StageResult) -> None:
    curve = ppo_overoptimization_curve(ppo_run.metrics, window=5)
    assert len(curve) == 8
    assert curve[-1]["sqrt_kl"] > curve[0]["sqrt_kl"]
    assert curve[-1]["proxy"] > curve[0]["proxy"]


def test_monitors_stay_quiet_on_a_healthy_run_and_fire_on_a_verbosity_biased_proxy(
        ppo_run: StageResult, biased_reward, sft_model_dir: Path, tmp_path: Path) -> None:
    # the healthy run (HEALTHY_KL_COEF): proxy and gold rise together, lengths stay — any alert is a false alarm
    assert check_log(ppo_run.metrics) == []
    # 20 updates at the default β: over the seeds and paths measured the length drift is flagged at updates 11-14
    cfg = PPOConfig(output_dir=str(tmp_path), num_updates=20, seed=0, sample_every=0)
    biased = PPOTrainer(sandbox_prompts(1000, seed=2), cfg, model=sft_model_dir,
                        reward=biased_reward.reward_model, gold=gold_reward).train(show_progress=False)
    alerts = check_log(biased.metrics)
    print("alerts on the verbosity-biased run:", [(a.kind, a.update, a.message) for a in alerts])
    assert "length_drift" in {a.kind for a in alerts}
    drift = next(a for a in alerts if a.kind == "length_drift")
    assert drift.evidence and drift.update <= 20
