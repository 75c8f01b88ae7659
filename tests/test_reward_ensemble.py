"""Reward-model ensembles: the WCO / UWO arithmetic, bootstrap members, one normalisation and one metrics log,
save / reload, the ensemble report, and an ensemble where a reward function goes (best-of-N, TRL, a saved path)."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch

from rlhf_widgets.evaluation import reward_report
from rlhf_widgets.runtime.generation import SamplingSettings
from rlhf_widgets.runtime.reward_protocol import trl_reward_function
from rlhf_widgets.sandbox import curt_demo, gold_reward, gold_score, ideal_response, make_prompts, random_response
from rlhf_widgets.stages.best_of import best_of_n
from rlhf_widgets.stages.reward import as_reward_function
from rlhf_widgets.stages.reward.ensemble import (
    ENSEMBLE_META,
    MEMBERS,
    RewardEnsemble,
    bootstrap_by_prompt,
    train_reward_ensemble,
)
from rlhf_widgets.stages.reward.model import RewardStageConfig

PROMPTS_PER_RUN = 16
NORMALIZE_ON = 12  # both responses of the first 6 training pairs


class FixedScores:
    """A stub member: a fixed normalised score per response text (the member interface, no model)."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.bias, self.scale = 0.0, 1.0

    def score(self, prompts, responses, normalize: bool = True) -> torch.Tensor:
        raw = torch.tensor([self.table[r] for r in responses])
        return (raw - self.bias) / self.scale if normalize else raw

    def fit_normalization(self, prompts, responses) -> tuple[float, float]:
        raw = self.score(prompts, responses, normalize=False)
        self.bias, self.scale = raw.mean().item(), raw.std().item()
        return self.bias, self.scale

    def save(self, path):
        raise NotImplementedError


def _pairs(n_prompts: int, seed: int) -> datasets.Dataset:
    """Two pairs per sandbox prompt (ideal vs random, curt vs random), chosen by the gold scorer."""
    rng = random.Random(seed)
    rows = []
    for prompt in make_prompts(n_prompts, seed=seed):
        for good in (ideal_response(prompt), curt_demo(prompt, rng)):
            other = random_response(prompt, rng)
            chosen, rejected = (good, other) if gold_score(prompt.text, good) >= gold_score(prompt.text, other) \
                else (other, good)
            rows.append({"prompt": [{"role": "user", "content": prompt.text}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
    return datasets.Dataset.from_list(rows)


def _config(output_dir: Path) -> RewardStageConfig:
    return RewardStageConfig(output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=8, logging_steps=1,
                             eval_fraction=0.25, normalize_on=NORMALIZE_ON)


def _key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True)


@pytest.fixture(scope="module")
def pairs() -> datasets.Dataset:
    return _pairs(PROMPTS_PER_RUN, seed=4)


@pytest.fixture(scope="module")
def trained(pairs: datasets.Dataset, tmp_path_factory: pytest.TempPathFactory):
    """Three members on bootstrap resamples, 3 steps each."""
    return train_reward_ensemble(pairs, _config(tmp_path_factory.mktemp("ensemble")), members=3)


# ---------------------------------------------------------------------------------- the arithmetic, on stubs
def test_mean_worst_and_uncertainty_objectives_match_hand_computed_values() -> None:
    members = [FixedScores({"x": 1.0, "y": -0.5, "z": 2.0}), FixedScores({"x": 0.0, "y": 0.5, "z": 2.0}),
               FixedScores({"x": 2.0, "y": -1.0, "z": -1.0})]
    ensemble = RewardEnsemble(members, objective="mean")
    prompts, responses = ["p"] * 3, ["x", "y", "z"]
    assert ensemble.member_scores(prompts, responses).tolist() == [[1.0, -0.5, 2.0], [0.0, 0.5, 2.0],
                                                                    [2.0, -1.0, -1.0]]
    # means: x (1+0+2)/3 = 1; y (-0.5+0.5-1)/3 = -1/3; z (2+2-1)/3 = 1
    assert ensemble(prompts, responses).tolist() == pytest.approx([1.0, -1 / 3, 1.0])
    ensemble.objective = "worst"  # WCO: the lowest member
    assert ensemble(prompts, responses).tolist() == pytest.approx([0.0, -1.0, -1.0])
    # population variances: x (0²+1²+1²)/3 = 2/3; y ((1/6)²+(5/6)²+(2/3)²)/3 = 7/18; z (1²+1²+2²)/3 = 2
    ensemble.objective, ensemble.uncertainty_weight = "uncertainty", 0.5
    assert ensemble(prompts, responses).tolist() == pytest.approx([1 - 1 / 3, -1 / 3 - 7 / 36, 1 - 1.0])
    scores, spread = ensemble.score_with_spread(prompts, responses)
    assert scores.tolist() == pytest.approx([2 / 3, -19 / 36, 0.0])
    assert spread.tolist() == pytest.approx([math.sqrt(2 / 3), math.sqrt(7 / 18), math.sqrt(2)])
    # an ensemble has no raw scale: normalize=False (what reward_report asks for) is the same combined score
    assert ensemble.score(prompts, responses, normalize=False).tolist() == scores.tolist()
    assert ensemble.raw_score(prompts, responses).tolist() == scores.tolist()


def test_fit_normalization_refits_every_member() -> None:
    members = [FixedScores({"x": 1.0, "y": 3.0, "z": 5.0}), FixedScores({"x": -10.0, "y": 0.0, "z": 40.0})]
    ensemble = RewardEnsemble(members)
    assert ensemble.fit_normalization(["p"] * 3, ["x", "y", "z"]) == [(3.0, 2.0), (10.0, pytest.approx(26.457513))]
    normalised = ensemble.member_scores(["p"] * 3, ["x", "y", "z"])
    assert normalised.mean(dim=1).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert normalised.std(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_bad_objective_weight_or_member_count_raise_errors_naming_the_setting(pairs, tmp_path: Path) -> None:
    two = [FixedScores({"x": 0.0}), FixedScores({"x": 1.0})]
    with pytest.raises(ValueError, match=r"objective='best': must be one of 'mean', 'worst', 'uncertainty'"):
        RewardEnsemble(two, objective="best")
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="uncertainty_weight="):
            RewardEnsemble(two, objective="uncertainty", uncertainty_weight=bad)
    with pytest.raises(ValueError, match="members=1: an ensemble needs at least 2"):
        RewardEnsemble(two[:1])
    ensemble = RewardEnsemble(two)
    with pytest.raises(ValueError, match="objective='min'"):
        ensemble.objective = "min"
    with pytest.raises(ValueError, match="uncertainty_weight=-1"):
        ensemble.uncertainty_weight = -1
    assert (ensemble.objective, ensemble.uncertainty_weight) == ("worst", 0.5)
    # the stage checks before it trains anything
    with pytest.raises(ValueError, match="members=1"):
        train_reward_ensemble(pairs, _config(tmp_path), members=1)
    with pytest.raises(ValueError, match="objective='max'"):
        train_reward_ensemble(pairs, _config(tmp_path), objective="max")
    no_normalisation = _config(tmp_path)
    no_normalisation.normalize_on = 0
    with pytest.raises(ValueError, match="normalize_on=0"):
        train_reward_ensemble(pairs, no_normalisation)
    assert not (tmp_path / MEMBERS).exists()


def test_report_gives_each_member_and_how_often_they_disagree() -> None:
    # member margins (chosen − rejected) per pair:   A  B  C      gold prefers
    #   pair 1: all prefer chosen                   +  +  +      chosen
    #   pair 2: C disagrees                         +  +  −      rejected
    #   pair 3: all prefer rejected                 −  −  −      rejected
    #   pair 4: A disagrees                         +  −  −      chosen
    signs = {"A": (1, 1, -1, 1), "B": (1, 1, -1, -1), "C": (1, -1, -1, -1)}
    members = [FixedScores({f"good answer {i}": s / 2 for i, s in enumerate(signs[m])}
                           | {f"bad {i}": -s / 2 for i, s in enumerate(signs[m])}) for m in "ABC"]
    gold_prefers_chosen = (True, False, False, True)
    pairs = datasets.Dataset.from_list([{"prompt": "p", "chosen": f"good answer {i}", "rejected": f"bad {i}"}
                                        for i in range(4)])

    def gold(prompts, responses):
        return [float(r.startswith("good") == gold_prefers_chosen[int(r[-1])]) for r in responses]

    report = reward_report(RewardEnsemble(members, objective="mean"), pairs, gold=gold)
    ens = report["ensemble"]
    assert ens["member_accuracy"] == [0.75, 0.5, 0.25]
    assert ens["member_gold_agreement"] == [0.75, 0.5, 0.75]
    assert ens["disagreement"] == 0.5
    assert (ens["objective"], ens["uncertainty_weight"]) == ("mean", 0.5)
    # the mean margins are +1, +1/3, −1, −1/3: the ensemble is right on pairs 1-2, agrees with gold on 1 and 3
    assert report["accuracy"] == 0.5 and report["gold_agreement"] == 0.5
    assert report["chosen_scores"] == pytest.approx([0.5, 1 / 6, -0.5, -1 / 6])


# ---------------------------------------------------------------------------------- trained on the sandbox
def test_members_train_on_bootstrap_resamples_of_whole_prompts_never_held_out(trained, pairs) -> None:
    held_out = {_key(p) for p in trained.eval_dataset["prompt"]}
    train_prompts = Counter(_key(p) for p in pairs["prompt"] if _key(p) not in held_out)
    assert held_out and len(trained.train_datasets) == 3
    drawn = []
    for member in trained.train_datasets:
        counts = Counter(_key(p) for p in member["prompt"])
        assert not held_out & set(counts), "a member trained on a held-out prompt"
        # whole prompts: a prompt drawn d times brings all its pairs d times; as many draws as training prompts
        draws = {key: n // train_prompts[key] for key, n in counts.items()}
        assert all(n % train_prompts[key] == 0 for key, n in counts.items())
        assert sum(draws.values()) == len(train_prompts) and len(draws) < len(train_prompts)
        drawn.append(draws)
    assert drawn[0] != drawn[1] != drawn[2] != drawn[0]
    assert bootstrap_by_prompt(pairs, seed=7)["prompt"] == bootstrap_by_prompt(pairs, seed=7)["prompt"]


def test_bootstrap_makes_members_differ_beyond_their_seed(trained, pairs, tmp_path: Path) -> None:
    """Member 0 of a seed-only ensemble has member 0's seed but the whole training split: the resample alone makes
    it score the same responses differently (training is deterministic given data and seed)."""
    seed_only = train_reward_ensemble(pairs, _config(tmp_path), members=2, bootstrap=False)
    split = [_key(p) for p in seed_only.train_datasets[0]["prompt"]]
    assert split == [_key(p) for p in seed_only.train_datasets[1]["prompt"]]
    assert len(split) == len(pairs) - len(trained.eval_dataset)
    prompts = [p for p in trained.eval_dataset["prompt"]]
    responses = [r[0]["content"] for r in trained.eval_dataset["chosen"]]
    resampled, whole = trained.reward_model.members[0], seed_only.reward_model.members[0]
    assert not torch.allclose(resampled.raw_score(prompts, responses), whole.raw_score(prompts, responses),
                              atol=1e-3)
    member_scores = trained.reward_model.member_scores(prompts, responses)
    assert all(not torch.allclose(member_scores[i], member_scores[j], atol=1e-3) for i, j in ((0, 1), (0, 2), (1, 2)))


def test_members_share_one_normalisation_and_one_metrics_log(trained) -> None:
    ensemble = trained.reward_model
    # the first NORMALIZE_ON / 2 pairs of the training split (the held-out prompts taken out, not resampled)
    held_out = {_key(p) for p in trained.eval_dataset["prompt"]}
    reference = [row for row in _pairs(PROMPTS_PER_RUN, seed=4) if _key(row["prompt"]) not in held_out]
    reference = reference[: NORMALIZE_ON // 2]
    prompts = [row["prompt"] for row in reference for _ in range(2)]
    responses = [row[side][0]["content"] for row in reference for side in ("chosen", "rejected")]
    scores = ensemble.member_scores(prompts, responses)
    assert scores.mean(dim=1).abs().max() < 1e-4 and (scores.std(dim=1) - 1).abs().max() < 1e-4, scores

    log = trained.metrics
    assert log.path == Path(trained.model_path).parent / "metrics.jsonl" and log.path.is_file()
    steps, _ = log.series("loss")
    assert steps == list(range(1, 10)), "three members x 3 steps, one after another"
    members = [e for e in log.events() if e.kind == "member"]
    assert [(e.data["member"], e.step, e.data["seed"]) for e in members] == [(0, 0, 0), (1, 3, 1), (2, 6, 2)]
    assert [e.message for e in log.events() if e.kind == "saved"] == [
        f"reward ensemble of 3 members saved to {trained.model_path}"]
    for name in ("eval_accuracy", "eval_disagreement", "eval_accuracy/member_0", "eval_accuracy/member_2"):
        assert log.series(name)[0] == [9], name
    # one copy of the weights: the members' own final/ directories went into the ensemble
    assert not (Path(trained.model_path).parent / MEMBERS).exists()
    assert sorted(p.name for p in (Path(trained.model_path) / MEMBERS).iterdir()) == ["0", "1", "2"]


def test_report_on_a_trained_ensemble_matches_its_members_alone(trained) -> None:
    held = trained.eval_dataset
    report = reward_report(trained.reward_model, held, gold=gold_reward)
    alone = [reward_report(member, held, gold=gold_reward) for member in trained.reward_model.members]
    assert report["ensemble"]["member_accuracy"] == [r["accuracy"] for r in alone]
    assert report["ensemble"]["member_gold_agreement"] == [r["gold_agreement"] for r in alone]
    assert 0 <= report["ensemble"]["disagreement"] <= 1
    assert trained.metrics.latest("eval_accuracy") == report["accuracy"]


def test_saved_ensemble_reloads_with_identical_scores_also_as_a_reward_function(trained, tmp_path: Path) -> None:
    ensemble = trained.reward_model
    prompts = ["I was charged twice for order #22222."] * 3
    responses = ["I'm sorry. I have refunded the duplicate charge.", "Please reset your password.", "No."]
    again = RewardEnsemble.load(trained.model_path)
    assert (again.objective, again.uncertainty_weight, len(again)) == ("worst", 0.5, 3)
    torch.testing.assert_close(again.member_scores(prompts, responses), ensemble.member_scores(prompts, responses))
    loaded = as_reward_function(str(trained.model_path))
    assert isinstance(loaded, RewardEnsemble)
    torch.testing.assert_close(loaded(prompts, responses), ensemble(prompts, responses))
    # the settings travel with the directory
    again.objective, again.uncertainty_weight = "uncertainty", 0.25
    again.save(tmp_path / "uwo")
    assert json.loads((tmp_path / "uwo" / ENSEMBLE_META).read_text()) == {
        "objective": "uncertainty", "uncertainty_weight": 0.25, "members": 3}
    uwo = RewardEnsemble.load(tmp_path / "uwo")
    torch.testing.assert_close(uwo(prompts, responses), again(prompts, responses))
    with pytest.raises(FileNotFoundError, match="nothing_here.*neither a saved reward model"):
        as_reward_function(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="is not a saved RewardEnsemble"):
        RewardEnsemble.load(tmp_path / "nothing_here")


def test_best_of_n_and_trl_take_an_ensemble_unchanged(trained) -> None:
    ensemble = trained.reward_model
    prompts = [p.text for p in make_prompts(2, seed=9)]
    best = best_of_n(prompts, model="sandbox", reward=ensemble, n=2, settings=SamplingSettings(max_new_tokens=8))
    # scored as best_of_n scores them, in one batch: the combined (worst-member) score picked the best
    expected = ensemble([p for p in prompts for _ in range(2)], [c for cs in best.candidates for c in cs])
    assert [s for scores in best.candidate_scores for s in scores] == pytest.approx(expected.tolist(), abs=1e-6)
    assert best.scores == pytest.approx(expected.view(2, 2).max(dim=1).values.tolist(), abs=1e-6)
    assert trl_reward_function(ensemble).__name__ == "reward_ensemble"


# ---------------------------------------------------------------------------------- LoRA members, one base
def test_lora_members_share_one_base_model_and_score_as_each_would_alone(pairs, tmp_path: Path) -> None:
    from peft import PeftModel

    from rlhf_widgets.runtime.config import ModelConfig
    from rlhf_widgets.stages.reward.ensemble import AdapterMember
    from rlhf_widgets.stages.reward.model import RewardModel

    result = train_reward_ensemble(pairs, _config(tmp_path / "lora"), members=2,
                                   model=ModelConfig(use_peft=True, lora_r=8))
    prompts = ["I was charged twice for order #22222."] * 3
    responses = ["I'm sorry. I have refunded the duplicate charge.", "Please reset your password.", "No."]
    for ensemble in (result.reward_model, RewardEnsemble.load(result.model_path)):
        first, second = ensemble.members
        assert isinstance(first, AdapterMember) and isinstance(first.model, PeftModel)
        assert first.model is second.model  # one base in memory, two adapters on it
        assert set(first.model.peft_config) == {"member_0", "member_1"}
        scores = ensemble.member_scores(prompts, responses)
        # each member scores as its adapter loaded alone on its own base does: the switch picks the right adapter
        # and score head, in either order of calls
        for i in (1, 0):
            alone = RewardModel.load(result.model_path / MEMBERS / str(i))
            torch.testing.assert_close(ensemble.members[i].score(prompts, responses), scores[i])
            torch.testing.assert_close(alone.score(prompts, responses), scores[i])
        assert not torch.allclose(scores[0], scores[1])  # two members, not one twice
    saved = json.loads((result.model_path / MEMBERS / "1" / "rlhf_widgets_reward.json").read_text())
    assert saved["adapter"] and saved["base_model"]
    assert not (result.model_path / MEMBERS / "1" / "member_1").exists()  # the adapter's files sit in the member dir


def test_weight_averaged_model_holds_the_mean_of_the_members_weights(trained, tmp_path: Path) -> None:
    from rlhf_widgets.stages.reward.ensemble import weight_averaged

    ensemble = trained.reward_model
    warm = weight_averaged(ensemble)
    (name, param), = [(n, p) for n, p in warm.model.named_parameters() if n.endswith("score.weight")]
    members = [dict(m.model.named_parameters())[name] for m in ensemble.members]
    torch.testing.assert_close(param, torch.stack(members).mean(dim=0))
    assert all(not torch.equal(param, m) for m in members)
    prompts = ["I was charged twice for order #22222."] * 3
    responses = ["I'm sorry. I have refunded the duplicate charge.", "Please reset your password.", "No."]
    assert (warm.bias, warm.scale) == (0.0, 1.0)  # the caller normalises it, as the members were
    warm.fit_normalization(prompts, responses)
    assert warm.score(prompts, responses).mean().item() == pytest.approx(0.0, abs=1e-5)
    # the members themselves are untouched
    torch.testing.assert_close(RewardEnsemble.load(trained.model_path).member_scores(prompts, responses),
                               ensemble.member_scores(prompts, responses))
    with pytest.raises(ValueError, match="full-model RewardModel.*LoRA"):
        weight_averaged(RewardEnsemble([FixedScores({}), FixedScores({})]))


# ---------------------------------------------------------------------------------- the quickstart's reward
def test_quickstart_trains_an_ensemble_when_asked_and_refuses_bad_settings_before_any_stage(pairs, tmp_path) -> None:
    from rlhf_widgets.stages.reward.model import RewardModel
    from rlhf_widgets.workflows.quickstart import QuickstartConfig, quickstart_reward, run_quickstart

    config = QuickstartConfig(output_dir=str(tmp_path / "qs"), reward_members=2, reward_objective="uncertainty")
    ensemble = quickstart_reward(config, "sandbox", pairs).reward_model
    assert isinstance(ensemble, RewardEnsemble) and (len(ensemble), ensemble.objective) == (2, "uncertainty")
    single = quickstart_reward(QuickstartConfig(output_dir=str(tmp_path / "one")), "sandbox", pairs).reward_model
    assert isinstance(single, RewardModel)
    for changes, message in (({"reward_members": 0}, "reward_members=0: must be 1"),
                             ({"reward_members": 3, "reward_objective": "min"}, "reward_objective='min'"),
                             ({"reward_mismatched_pairs": -1}, "reward_mismatched_pairs=-1: must be in")):
        with pytest.raises(ValueError, match=message):
            run_quickstart(QuickstartConfig(output_dir=str(tmp_path / "bad"), **changes))
    assert not (tmp_path / "bad" / "sft").exists()  # refused before the first stage


def test_the_reward_stages_line_says_when_the_reward_is_an_ensemble(tmp_path) -> None:
    from rlhf_widgets.workflows.quickstart import QuickstartResult, stage_line

    one = {"gold_agreement": 0.9, "accuracy": 0.85}
    result = QuickstartResult(output_dir=tmp_path, report_path=None, numbers={"reward": one}, seconds={"reward": 71})
    assert stage_line("reward", result, {}) == "reward model: gold agreement 0.90, accuracy 0.85, 71 s"
    result.numbers["reward"] = {**one, "ensemble": {"member_accuracy": [0.8, 0.9, 0.85], "objective": "uncertainty",
                                                    "disagreement": 0.125}}
    assert stage_line("reward", result, {}) == ("reward model: gold agreement 0.90, accuracy 0.85 (ensemble of 3, "
                                                "uncertainty; members differ on 12%), 71 s")
