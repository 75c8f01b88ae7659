"""Reward stage: gold agreement on the sandbox, the length-bias report, LoRA / 4-bit, save / reload."""

from pathlib import Path

import datasets
import pytest
import torch
from conftest import label_rows, sandbox_prompts

from rlhf_widgets.evaluation import reward_report
from rlhf_widgets.runtime.config import SANDBOX, ModelConfig
from rlhf_widgets.runtime.models import load_reward_backbone
from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward
from rlhf_widgets.stages.reward.model import RewardModel, RewardStageConfig, train_reward_model, with_mismatched_pairs


def test_reward_model_agrees_with_gold_on_held_out_pairs(trained_reward, sft_model_dir) -> None:
    # fresh SFT pairs on held-out (test-split) prompts, labeled by a differently seeded noisy annotator:
    # ~350 pairs, so the agreement is measured to about ±0.03 (the 10% eval split alone is too small)
    from rlhf_widgets.labeling.pairs import generate_pairs

    rows = generate_pairs(sandbox_prompts(400, seed=99, split="test"), model=sft_model_dir, seed=5,
                          show_progress=False)
    held_out = label_rows(rows, SimulatedAnnotator(temperature=1.0, seed=7))
    report = reward_report(trained_reward.reward_model, held_out, gold=gold_reward)
    print(f"RM on {report['n_pairs']} held-out pairs: gold agreement {report['gold_agreement']:.3f}, "
          f"accuracy vs noisy labels {report['accuracy']:.3f} (labels agree with gold "
          f"{report['label_gold_agreement']:.3f})")
    assert report["n_pairs"] >= 300
    assert report["gold_agreement"] >= 0.82, report["gold_agreement"]
    assert report["accuracy"] > 0.6
    assert len(report["calibration"]) >= 2
    assert trained_reward.metrics.series("accuracy")[1], "training accuracy was logged"


def test_scores_are_normalised_on_the_sampled_responses(trained_reward, sft_pair_rows) -> None:
    """After training, the sampler's responses score ≈ mean 0 / std 1: both answers of one pair per prompt, ~1,200
    SFT samples over ~600 prompts, most outside the normalisation's fit (256 responses of the first training pairs,
    which come from a few dozen prompts — so its own zero point is off by a few tenths). One answer of 100 prompts
    was a sample too small and too selected to hold on both paths."""
    rm = trained_reward.reward_model
    prompts = [r["prompt"] for r in sft_pair_rows for _ in range(2)]
    responses = [r[key] for r in sft_pair_rows for key in ("response_a", "response_b")]
    scores = rm.score(prompts, responses)
    assert len(scores) > 1000
    assert abs(scores.mean().item()) < 0.35 and 0.6 < scores.std().item() < 1.5, (scores.mean(), scores.std())
    assert rm.scale != 1.0


def test_scores_are_deterministic_batched_and_normalisable(trained_reward) -> None:
    # float32 scoring, pinned: batch-invariance to 1e-5 is float32's (bf16's rounding moves a score by ~1e-3)
    rm = RewardModel(trained_reward.reward_model.model, trained_reward.reward_model.tokenizer, mixed_precision="no")
    prompts = ["My order #12345 hasn't arrived. What should I do?"] * 3
    responses = ["Check your tracking number.", "That is not my problem.", "Hello! I'm sorry. Check your tracking."]
    one_by_one = torch.cat([rm.score([p], [r], normalize=False) for p, r in zip(prompts, responses, strict=True)])
    batched = rm.score(prompts, responses, normalize=False)
    assert torch.allclose(one_by_one, batched, atol=1e-5)
    bf16 = RewardModel(rm.model, rm.tokenizer, mixed_precision="bf16").score(prompts, responses, normalize=False)
    assert torch.allclose(bf16, batched, atol=0.02) and not torch.equal(bf16, batched)  # bf16 really ran
    rm_copy = RewardModel(rm.model, rm.tokenizer, mixed_precision="no")
    rm_copy.fit_normalization(prompts, responses)
    normed = rm_copy.score(prompts, responses)
    assert abs(normed.mean().item()) < 1e-5 and abs(normed.std().item() - 1) < 1e-4
    assert rm_copy(prompts, [[{"role": "assistant", "content": r}] for r in responses]) == pytest.approx(
        normed.tolist(), abs=1e-5)


def test_saved_and_reloaded_reward_model_scores_identically(trained_reward, tmp_path: Path) -> None:
    rm = trained_reward.reward_model
    saved = rm.bias, rm.scale
    rm.bias, rm.scale = 0.3, 2.0
    rm.save(tmp_path / "rm")
    again = RewardModel.load(tmp_path / "rm")
    prompts = ["I was charged twice for order #22222."] * 2
    responses = ["I'm sorry. I have refunded the duplicate charge.", "Please reset your password."]
    assert torch.allclose(rm.score(prompts, responses), again.score(prompts, responses), atol=1e-5)
    rm.bias, rm.scale = saved


def test_reward_report_scores_a_multi_turn_prompt_with_all_its_turns() -> None:
    """The report scores each prompt as given — the whole conversation, as the reward model trains on it and PPO
    scores it — not by its last user turn alone."""
    torch.manual_seed(0)  # an untrained score head: any reward model reads the earlier turns
    rm = RewardModel(*load_reward_backbone(SANDBOX), mixed_precision="no")
    conversation = [{"role": "user", "content": "My order #12345 hasn't arrived."},
                    {"role": "assistant", "content": "Check your tracking number."},
                    {"role": "user", "content": "I did, it says nothing. What now?"}]
    chosen = ["I'm sorry. I have opened a trace for order #12345.", "I'm sorry. We will refund you."]
    rejected = ["Check your tracking number.", "That is not my problem."]
    pairs = datasets.Dataset.from_list([
        {"prompt": conversation, "chosen": [{"role": "assistant", "content": c}],
         "rejected": [{"role": "assistant", "content": r}]} for c, r in zip(chosen, rejected, strict=True)])
    whole = rm.score([conversation] * 2, chosen, normalize=False)
    last_turn_only = rm.score([conversation[-1]["content"]] * 2, chosen, normalize=False)
    assert not torch.allclose(whole, last_turn_only, atol=1e-4), "the earlier turns must change the score"
    report = reward_report(rm, pairs)
    assert report["chosen_scores"] == pytest.approx(whole.tolist(), abs=1e-6)
    assert report["rejected_scores"] == pytest.approx(
        rm.score([conversation] * 2, rejected, normalize=False).tolist(), abs=1e-6)


def test_verbosity_biased_labels_show_in_the_length_report(biased_reward, trained_reward, sft_pair_rows) -> None:
    # judge both on the same fairly labeled pairs (the biased RM's own held-out split)
    held_out = label_rows(sft_pair_rows[-120:], SimulatedAnnotator(temperature=0.5, seed=5))
    rep_b = reward_report(biased_reward.reward_model, held_out, gold=gold_reward)
    rep_f = reward_report(trained_reward.reward_model, held_out, gold=gold_reward)
    assert rep_b["length"]["prefers_longer"] > rep_f["length"]["prefers_longer"] + 0.1, \
        (rep_b["length"], rep_f["length"])
    assert rep_b["length"]["prefers_longer"] > rep_b["length"]["gold_prefers_longer"]


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["lora", "4bit-lora"])
def test_lora_reward_training_runs_and_reloads(sft_pair_rows, tmp_path: Path, load_in_4bit: bool) -> None:
    pairs = label_rows(sft_pair_rows[:64], SimulatedAnnotator(seed=1))
    cfg = RewardStageConfig(output_dir=str(tmp_path), max_steps=3, eval_fraction=0, mismatched_pairs=0.5)
    result = train_reward_model(pairs, cfg, model=ModelConfig(use_peft=True, load_in_4bit=load_in_4bit, lora_r=8))
    [added] = [e for e in result.metrics.events() if e.kind == "mismatched"]  # said once, with the count
    assert added.data["pairs"] == 32 and "32 mismatched pairs" in added.message
    again = RewardModel.load(result.model_path)
    prompts, responses = ["Where is order #31313?"], ["Check your tracking number."]
    # 4-bit: the base is re-quantized on load, so allow a little rounding in the raw score
    atol = 1e-2 if load_in_4bit else 1e-5
    assert torch.allclose(result.reward_model.raw_score(prompts, responses), again.raw_score(prompts, responses),
                          atol=atol)
    assert (again.bias, again.scale) == (result.reward_model.bias, result.reward_model.scale)


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_bf16_training_keeps_the_score_head_in_float32(sft_pair_rows, tmp_path: Path, use_peft: bool) -> None:
    """Under bf16 autocast the body computes in bf16 but the scoring head in float32: a bf16 head rounds each score
    to 8 mantissa bits, most of the margin between two close answers. After training, the model the stage returns
    scores exactly as the saved one reloaded (accelerate's autocast wrapper around `forward` is taken off)."""
    pairs = label_rows(sft_pair_rows[:64], SimulatedAnnotator(seed=1))
    cfg = RewardStageConfig(output_dir=str(tmp_path), max_steps=2, eval_fraction=0, bf16=True)
    result = train_reward_model(pairs, cfg, model=ModelConfig(use_peft=use_peft, lora_r=8))
    rm = result.reward_model
    inputs, _ = rm._encode([[{"role": "user", "content": "Where is order #31313?"},
                             {"role": "assistant", "content": "Check your tracking number."}]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = rm.model(**inputs).logits
    assert logits.dtype == torch.float32
    again = RewardModel.load(result.model_path)
    prompts, responses = ["Where is order #31313?"], ["Check your tracking number."]
    assert torch.allclose(rm.raw_score(prompts, responses), again.raw_score(prompts, responses), atol=1e-5)


def test_scoring_runs_in_bf16_autocast_where_native_with_a_float32_head(trained_reward, pretend_cpu_bf16) -> None:
    """`RewardModel(mixed_precision="auto")` scores a float32 model under bf16 autocast on a CPU with native bf16
    (the body's rounding only: the linear head stays float32), and exactly in float32 with "no"."""
    rm = trained_reward.reward_model
    prompts = ["My order #12345 hasn't arrived. What should I do?"] * 3
    responses = ["Check your tracking number.", "That is not my problem.", "Hello! I'm sorry. Check your tracking."]
    pretend_cpu_bf16(True)
    exact = RewardModel(rm.model, rm.tokenizer, mixed_precision="no").raw_score(prompts, responses)
    fast = RewardModel(rm.model, rm.tokenizer, mixed_precision="auto").raw_score(prompts, responses)
    assert not torch.equal(fast, exact), "auto computed in float32"
    assert torch.allclose(fast, exact, atol=0.05 * exact.abs().max().item()), (fast, exact)
    assert fast.argsort().tolist() == exact.argsort().tolist()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inputs, _ = rm._encode([[{"role": "user", "content": prompts[0]}, {"role": "assistant", "content": "Hi."}]])
        assert rm.model(**inputs).logits.dtype == torch.float32
    with pytest.raises(ValueError, match="mixed_precision='fp32'"):
        RewardModel(rm.model, rm.tokenizer, mixed_precision="fp32")


def test_mismatched_pairs_pair_each_answer_against_another_prompts_answer() -> None:
    pairs = datasets.Dataset.from_dict({"prompt": ["a", "a", "b", "c"], "chosen": ["A1", "A2", "B", "C"],
                                        "rejected": ["x", "y", "z", "w"]})
    assert with_mismatched_pairs(pairs, 0.0, seed=0) is pairs
    more = with_mismatched_pairs(pairs, 2.0, seed=1)
    assert len(more) == 12 and more.select(range(4)).to_list() == pairs.to_list()
    answer_of = {"A1": "a", "A2": "a", "B": "b", "C": "c"}
    for row in more.select(range(4, 12)):
        assert answer_of[row["chosen"]] == row["prompt"]  # the prompt's own answer is chosen …
        assert answer_of[row["rejected"]] != row["prompt"]  # … over an answer written for another prompt
    assert sorted(more["prompt"][4:]) == sorted(list(pairs["prompt"]) * 2)  # every pair drawn once per round
    one_prompt = datasets.Dataset.from_dict({"prompt": ["a", "a"], "chosen": ["A1", "A2"], "rejected": ["x", "y"]})
    assert with_mismatched_pairs(one_prompt, 1.0, seed=0) is one_prompt  # nothing to mismatch
    with pytest.raises(ValueError, match="mismatched_pairs=-0.5"):
        RewardStageConfig(mismatched_pairs=-0.5)


class _KeywordScorer:
    """A stand-in reward model: 1 when the answer names the prompt's item (`reads_prompt`), else the answer's length
    in words / 10 whatever the prompt."""

    def __init__(self, reads_prompt: bool) -> None:
        self.reads_prompt = reads_prompt

    def score(self, prompts, responses, normalize: bool = True) -> torch.Tensor:
        return torch.tensor([float(p.split()[-1] in r) if self.reads_prompt else len(r.split()) / 10
                             for p, r in zip(prompts, responses, strict=True)])


def test_reward_report_says_whether_the_reward_model_reads_the_prompt() -> None:
    items = ["kettle", "jacket", "mat"]
    pairs = datasets.Dataset.from_dict({
        "prompt": [f"Where is my {i}" for i in items for _ in range(2)],  # two pairs per prompt: the next pair of
        "chosen": [f"Your {i} ships today." for i in items for _ in range(2)],  # the same prompt is skipped
        "rejected": [f"Your {i}." for i in items for _ in range(2)]})
    reads = reward_report(_KeywordScorer(reads_prompt=True), pairs)["prompt_dependence"]
    assert reads["own_prompt_higher"] == 1.0 and reads["mean_gap"] == pytest.approx(1.0)
    blind = reward_report(_KeywordScorer(reads_prompt=False), pairs)["prompt_dependence"]
    assert blind["own_prompt_higher"] == 0.0 and blind["mean_gap"] == 0.0
    one_prompt = pairs.filter(lambda row: "kettle" in row["prompt"])
    assert "prompt_dependence" not in reward_report(_KeywordScorer(reads_prompt=True), one_prompt)
