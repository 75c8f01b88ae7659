"""DPO, GRPO, RLOO and best-of-N on the sandbox (CPU, few steps), and the evaluation helpers around them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import label_rows, sandbox_prompts

from rlhf_widgets.evaluation import best_of_n_curve, best_of_n_kl, compare_policies, evaluation_store, win_rate
from rlhf_widgets.runtime.config import ModelConfig
from rlhf_widgets.runtime.models import load_causal_lm
from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward
from rlhf_widgets.stages.best_of import BestOfNSampler, best_of_n
from rlhf_widgets.views.reward_figures import overoptimization_figure, reward_report_figures


@pytest.fixture(scope="module")
def gold_pairs(sft_pair_rows):
    return label_rows(sft_pair_rows[:320], SimulatedAnnotator(temperature=0.5, seed=2))


def test_dpo_learns_the_labeled_preferences(sft_model_dir: Path, gold_pairs, tmp_path: Path) -> None:
    from rlhf_widgets.stages.dpo import DPOStageConfig, train_dpo

    result = train_dpo(gold_pairs, DPOStageConfig(output_dir=str(tmp_path), num_train_epochs=2, logging_steps=2),
                       model=sft_model_dir)
    assert result.stage == "dpo" and result.model_path == tmp_path / "final"
    _, margins = result.metrics.series("rewards/margins")
    _, acc = result.metrics.series("rewards/accuracies")
    assert len(margins) >= 4
    assert sum(margins[-3:]) / 3 > max(0.0, margins[0]), margins
    assert acc[-1] > 0.6, acc
    model, tok = load_causal_lm(result.model_path)  # a plain causal LM, loadable like any other
    assert model.config.vocab_size == len(tok)
    assert any(e.kind == "saved" for e in result.metrics.events())


def test_dpo_4bit_lora_runs_on_cpu(sft_model_dir: Path, gold_pairs, tmp_path: Path) -> None:
    from rlhf_widgets.stages.dpo import DPOStageConfig, train_dpo

    cfg = ModelConfig(model_name_or_path=str(sft_model_dir), use_peft=True, load_in_4bit=True, lora_r=8)
    result = train_dpo(gold_pairs.select(range(32)), DPOStageConfig(output_dir=str(tmp_path), max_steps=2,
                                                                    logging_steps=1), model=cfg)
    assert (result.model_path / "adapter_config.json").is_file()
    assert result.metrics.series("rewards/margins")[1]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_online_rl_with_kl_runs_and_logs(sft_model_dir: Path, tmp_path: Path, algorithm: str) -> None:
    from rlhf_widgets.stages.grpo import GRPOStageConfig, RLOOStageConfig, train_grpo, train_rloo

    cls, train = (GRPOStageConfig, train_grpo) if algorithm == "grpo" else (RLOOStageConfig, train_rloo)
    cfg = cls(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, num_generations=4,
              max_completion_length=24)
    result = train(sandbox_prompts(32, seed=4), cfg, model=sft_model_dir, reward=gold_reward)
    assert result.stage == algorithm
    assert any(e.kind == "saved" for e in result.metrics.events())
    names = result.metrics.names()
    assert any(n.startswith("reward") for n in names), names
    assert "kl" in names, names  # β > 0: the KL to the reference is measured and logged
    assert result.metrics.samples(), "sample completions reach the live table"
    assert (result.model_path / "config.json").is_file()
    with pytest.raises(ValueError, match="beta"):
        cls(output_dir=str(tmp_path), beta=0.0)


def test_best_of_n_raises_the_judged_score_and_knows_its_kl(sft_model_dir: Path) -> None:
    prompts = sandbox_prompts(24, seed=8, split="test")
    model = load_causal_lm(sft_model_dir)  # a loaded (model, tokenizer) works as model= too
    result = best_of_n(prompts, model=model, reward=gold_reward, n=8, seed=1)
    assert result.kl == pytest.approx(math.log(8) - 7 / 8)
    assert best_of_n_kl(1) == 0.0
    curve = best_of_n_curve(result, prompts, gold_reward)
    assert [p["n"] for p in curve] == [1, 2, 4, 8]
    proxies = [p["proxy"] for p in curve]
    assert proxies == sorted(proxies) and proxies[-1] > proxies[0]  # best of more never scores lower
    assert result.best_of(8)[0] == result.responses
    with pytest.raises(ValueError, match="n=0"):
        best_of_n(prompts, model=model, reward=gold_reward, n=0)


def test_best_of_n_curve_averages_the_pick_over_every_subset_of_the_candidates() -> None:
    import itertools
    import random

    from rlhf_widgets.stages.best_of import BestOfN

    rng = random.Random(0)
    n, prompts = 6, ["p0", "p1", "p2"]
    candidates = [[f"{p} answer {i}" for i in range(n)] for p in prompts]
    proxy = [[rng.gauss(0, 1) for _ in range(n)] for _ in prompts]
    truth = {c: rng.gauss(0, 1) for cs in candidates for c in cs}
    result = BestOfN(responses=[], scores=[], candidates=candidates, candidate_scores=proxy, n=n)
    curve = best_of_n_curve(result, prompts, lambda ps, rs: [truth[r] for r in rs], ns=[1, 2, 3, 6])
    for point in curve:  # brute force: the proxy's pick in every m-subset, averaged over subsets and prompts
        m, golds, proxies = point["n"], [], []
        for cs, ss in zip(candidates, proxy, strict=True):
            picks = [max(subset, key=ss.__getitem__) for subset in itertools.combinations(range(n), m)]
            golds.append(sum(truth[cs[i]] for i in picks) / len(picks))
            proxies.append(sum(ss[i] for i in picks) / len(picks))
        assert point["gold"] == pytest.approx(sum(golds) / len(golds))
        assert point["proxy"] == pytest.approx(sum(proxies) / len(proxies))
    assert curve[-1]["proxy"] == pytest.approx(sum(max(ss) for ss in proxy) / len(prompts))  # m = N: the run's pick
    with pytest.raises(ValueError, match="must be in"):
        best_of_n_curve(result, prompts, gold_reward, ns=[7])


def test_best_of_n_rescored_picks_the_same_candidates_by_another_reward() -> None:
    from rlhf_widgets.stages.best_of import BestOfN

    prompts = ["p0", "p1"]
    candidates = [["short", "a much longer answer", "mid answer"], ["x y", "x", "x y z w"]]
    result = BestOfN(responses=["short", "x"], scores=[0.0, 0.0], candidates=candidates,
                     candidate_scores=[[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]], n=3)
    by_length = result.rescored(prompts, lambda ps, rs: [float(len(r.split())) for r in rs])
    assert by_length.responses == ["a much longer answer", "x y z w"] and by_length.scores == [4.0, 4.0]
    assert by_length.candidates is candidates and by_length.candidate_scores == [[1.0, 4.0, 2.0], [2.0, 1.0, 4.0]]
    assert result.responses == ["short", "x"]  # the original pick is left as it was
    with pytest.raises(ValueError, match="1 prompts for the candidates of 2"):
        result.rescored(prompts[:1], gold_reward)


def test_compare_policies_table_and_blind_store(sft_model_dir: Path, tmp_path: Path) -> None:
    from rlhf_widgets.labeling import LabelingSession

    prompts = sandbox_prompts(16, seed=9, split="test")
    sampler = BestOfNSampler(model=sft_model_dir, reward=gold_reward, n=4)
    table = compare_policies({"SFT": sft_model_dir, "best-of-4": sampler}, prompts, baseline="SFT",
                             gold=gold_reward, kl_reference=sft_model_dir)
    assert list(table.index) == ["SFT", "best-of-4"]
    assert table.loc["SFT", "gold_win_rate"] == 0.5  # against itself: all ties
    assert table.loc["best-of-4", "gold_win_rate"] > 0.5
    assert abs(table.loc["SFT", "kl_to_reference"]) < 1e-4
    assert table.loc["best-of-4", "kl_to_reference"] == pytest.approx(math.log(4) - 3 / 4)
    responses = table.attrs["responses"]
    assert win_rate(prompts, responses["best-of-4"], responses["SFT"], gold_reward)["win_rate"] == \
        table.loc["best-of-4", "gold_win_rate"]
    with pytest.raises(ValueError, match="baseline 'PPO'"):
        compare_policies({"SFT": sft_model_dir}, prompts, baseline="PPO")

    store = evaluation_store(tmp_path / "eval.sqlite", prompts, responses["best-of-4"], responses["SFT"],
                             "best-of-4", "SFT")
    n = len(store)
    assert n > 0 and len(evaluation_store(tmp_path / "eval.sqlite", prompts, responses["best-of-4"],
                                          responses["SFT"], "best-of-4", "SFT")) == n  # no duplicates
    session = LabelingSession(store, "judge", evaluation=True)
    assert session.current.left_source is None and session.current.right_source is None  # blind
    while not session.done:
        a_is_candidate = session.current.pair.metadata["a"]["model"] == "best-of-4"
        session.choose("left" if (session.current.swapped != a_is_candidate) else "right")
    assert session.tally().win_rate("best-of-4") == 1.0


def test_report_figures_draw_the_numbers() -> None:
    report = {"chosen_scores": [1.0, 2.0], "rejected_scores": [0.0, 0.5], "accuracy": 1.0, "mean_margin": 1.25,
              "n_pairs": 2, "expected_calibration_error": 0.1,
              "calibration": [{"predicted": 0.3, "observed": 0.0, "count": 2},
                              {"predicted": 0.7, "observed": 1.0, "count": 2}],
              "length": {"bins": [{"low": -math.inf, "high": -10, "accuracy": 0.4, "count": 3},
                                  {"low": 3, "high": 10, "accuracy": 0.9, "count": 5}],
                         "prefers_longer": 0.8, "gold_prefers_longer": 0.5}}
    figs = reward_report_figures(report)
    assert list(figs["length"].data[0].y) == [0.4, 0.9]
    assert list(figs["length"].data[0].x) == ["< -10", "[3, 10)"]
    assert "80%" in figs["length"].layout.title.text and "gold: 50%" in figs["length"].layout.title.text
    assert list(figs["calibration"].data[1].y) == [0.0, 1.0]
    fig = overoptimization_figure({"PPO": [{"sqrt_kl": 0.0, "proxy": 0.0, "gold": 1.0},
                                           {"sqrt_kl": 1.0, "proxy": 2.0, "gold": 0.5}]})
    assert [t.name for t in fig.data] == ["PPO proxy", "PPO gold"]
    assert list(fig.data[1].y) == [1.0, 0.5]
