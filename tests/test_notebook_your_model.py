"""Notebook 07 (bring your own model) runs headless on a model-family fixture, from a copy outside the repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_notebooks import NOTEBOOKS, assert_quiet, outputs, run_notebook


def test_your_model_notebook_runs_from_a_copy_anywhere(family_checkpoints, tmp_path: Path) -> None:
    """The notebook as a user copies it to a folder of their own (or opens it on Colab): its data files come through
    the package, not `../data`; only the model and the sizes are overridden."""
    model = family_checkpoints.causal_lm("qwen2")  # ChatML, pad in its EOS list, a repetition penalty
    elsewhere = tmp_path / "my_project"
    elsewhere.mkdir()
    copy = Path(shutil.copy(NOTEBOOKS / "07_your_model.ipynb", elsewhere))
    overrides = "\n".join([
        f"MODEL = {str(model)!r}",
        "LOAD_IN_4BIT = False",
        "SFT_STEPS, RM_STEPS, PPO_UPDATES, DPO_STEPS = 1, 1, 1, 1",
    ])
    book = run_notebook(copy, overrides, elsewhere)
    # the qwen2 fixture carries repetition_penalty 1.1 in its generation_config and a byte-level tokenizer that makes
    # one example conversation exceed max_length: 07 must say both, once, in words (and nothing else on stderr)
    assert_quiet(book, expected=("TrimmedWarning", "SamplingOverrideWarning"))
    run = elsewhere / "runs" / "your_model"
    for stage in ("sft", "reward", "ppo", "dpo"):
        assert (run / stage / "final").is_dir(), stage
    printed = json.dumps(outputs(book))
    assert "kept 12 of 12 rows" in printed  # the load report
    for name in ("SFT", "PPO", "DPO", "rm_win_rate", "kl_to_reference"):
        assert name in printed, name
