"""Notebook 07 (bring your own model) runs headless on a model-family fixture, with the repository's data files."""

from __future__ import annotations

import json
from pathlib import Path

from test_notebooks import assert_quiet, outputs, run_notebook

DATA = Path(__file__).resolve().parents[1] / "data"


def test_your_model_notebook_runs_on_a_family_checkpoint(family_checkpoints, tmp_path: Path) -> None:
    model = family_checkpoints.causal_lm("qwen2")  # ChatML, pad in its EOS list, a repetition penalty
    overrides = "\n".join([
        f"MODEL = {str(model)!r}",
        f"PREFERENCES = {str(DATA / 'preferences' / 'conversational.jsonl')!r}",
        f"PROMPTS = {str(DATA / 'prompts' / 'sandbox_train.jsonl')!r}",
        f"EVAL_PROMPTS = {str(DATA / 'prompts' / 'sandbox_test.jsonl')!r}",
        "LOAD_IN_4BIT = False",
        "SFT_STEPS, RM_STEPS, PPO_UPDATES, DPO_STEPS = 1, 1, 1, 1",
    ])
    book = run_notebook("07_your_model", overrides, tmp_path)
    assert_quiet(book)
    run = tmp_path / "runs" / "your_model"
    for stage in ("sft", "reward", "ppo", "dpo"):
        assert (run / stage / "final").is_dir(), stage
    printed = json.dumps(outputs(book))
    assert "kept 12 of 12 rows" in printed  # the load report
    for name in ("SFT", "PPO", "DPO", "rm_win_rate", "kl_to_reference"):
        assert name in printed, name
