"""Notebook 08 (the iterative loop) runs headless on the sandbox, two tiny rounds."""

from __future__ import annotations

import json
from pathlib import Path

from test_notebooks import assert_quiet, outputs, run_notebook

SMALL = "ROUNDS = 2\nPROMPTS_PER_ROUND = 6\nPPO_UPDATES = 1\nWAIT = True"
"""Notebook 08's sizes in the tests (its parameters cell's names): two rounds of 6 prompts, one PPO update each,
the cell that starts the rounds waits for them (tests/test_browser_loop.py runs the same)."""


def test_iterative_notebook_runs_two_rounds(sft_model_dir: Path, tmp_path: Path) -> None:
    overrides = f"SFT = {str(sft_model_dir)!r}\n{SMALL}"
    book = run_notebook("08_iterative", overrides, tmp_path)
    assert_quiet(book)
    state = json.loads((tmp_path / "runs" / "loop" / "loop.json").read_text())
    assert [set(r["done"]) for r in state["rounds"]] == [{"pairs", "labels", "reward", "policy", "evaluate"}] * 2
    printed = json.dumps(outputs(book))
    assert "loop/gold_win_rate_vs_sft" in printed and "loop/rm_gold_agreement_before" in printed
