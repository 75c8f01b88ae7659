"""What the quickstart says to expect before it starts: each stage's precision here, and its time."""

from __future__ import annotations

import pytest
import torch

from rlhf_widgets.workflows.plan import QuickstartPlan, expected_seconds, plan_quickstart, stage_precision
from rlhf_widgets.workflows.quickstart import STAGES, QuickstartConfig

CPU = torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule")
def test_each_stage_names_the_precision_it_will_use_on_this_cpu(pretend_cpu_bf16, monkeypatch) -> None:
    """With native bf16 every stage's "auto" is bf16 (TRL stages' bf16=None, PPO's mixed_precision, sampling); without
    it, or with RLHF_WIDGETS_CPU_BF16=0, every stage is float32 — and the line says why."""
    config = QuickstartConfig(output_dir="unused")
    pretend_cpu_bf16(True)
    assert {stage: stage_precision(stage, config, CPU) for stage in STAGES} == dict.fromkeys(STAGES, "bf16")
    pretend_cpu_bf16(False)
    assert {stage: stage_precision(stage, config, CPU) for stage in STAGES} == dict.fromkeys(STAGES, "float32")
    pretend_cpu_bf16(True)
    monkeypatch.setenv("RLHF_WIDGETS_CPU_BF16", "0")
    assert {stage: stage_precision(stage, config, CPU) for stage in STAGES} == dict.fromkeys(STAGES, "float32")


def test_the_lines_name_the_path_each_stage_and_the_total() -> None:
    plan = QuickstartPlan(path="float32 (the CPU has no native bf16: no avx512_bf16 or amx_bf16)",
                          precision=dict.fromkeys(("sft", "ppo"), "float32"),
                          expected_seconds={"sft": 75.0, "ppo": 131.0})
    assert plan.lines() == [
        "precision: float32 (the CPU has no native bf16: no avx512_bf16 or amx_bf16) — every stage in float32",
        "expect ~3 min 30 s here (SFT 1 min 20 s, PPO 2 min 10 s); the README's 4 min 20 s is bf16 on a CPU with "
        "native bf16"]
    plan.precision["ppo"] = "bf16"
    assert plan.lines()[0].endswith("— SFT float32, PPO bf16")
    assert plan.as_dict()["expected_seconds"] == {"sft": 75.0, "ppo": 131.0}


def test_the_estimate_comes_from_this_machine_and_grows_with_the_sizes() -> None:
    """Positive for every stage, and more work is more time: twice the PPO updates, twice PPO's seconds."""
    small = QuickstartConfig(output_dir="unused", sft_demos=128, pair_prompts=24, ppo_updates=2, eval_prompts=8)
    plan = plan_quickstart(small)
    assert list(plan.expected_seconds) == list(STAGES) and all(t > 0 for t in plan.expected_seconds.values())
    precision = plan.precision["ppo"]
    bigger = QuickstartConfig(output_dir="unused", ppo_updates=4)
    assert expected_seconds("ppo", bigger, precision) == pytest.approx(2 * expected_seconds("ppo", small, precision))
    assert expected_seconds("sft", bigger, precision) > expected_seconds("sft", small, precision)
    assert plan.as_dict()["path"] == plan.path and set(plan.as_dict()["precision"]) == set(STAGES)


def test_an_ensemble_of_k_reward_models_is_expected_to_train_k_times_as_long() -> None:
    one = expected_seconds("reward", QuickstartConfig(output_dir="unused"), "bf16")
    four = expected_seconds("reward", QuickstartConfig(output_dir="unused", reward_members=4), "bf16")
    assert four == pytest.approx(4 * one)


def test_ppo_is_expected_to_take_its_reference_seconds_scaled_to_the_updates() -> None:
    """The reference run had the default 48 PPO updates; 72 take half as long again, whatever the machine."""
    from rlhf_widgets.workflows.plan import REFERENCE_PPO_UPDATES

    default = QuickstartConfig(output_dir="unused")
    longer = QuickstartConfig(output_dir="unused", ppo_updates=72)
    assert default.ppo_updates == REFERENCE_PPO_UPDATES == 48
    # (one calibration per precision and process: the same machine factor in both)
    assert expected_seconds("ppo", longer, "bf16") == pytest.approx(1.5 * expected_seconds("ppo", default, "bf16"))
