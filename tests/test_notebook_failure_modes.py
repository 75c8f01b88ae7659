"""Notebook 09 (failure modes on purpose) executes headless at tiny sizes: SFT on the world with traps, three
annotators on one store, a reward model and a PPO run each, the monitors' table, the probe columns, the arena."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_notebooks import assert_quiet, outputs, run_notebook

from rlhf_widgets.labeling import PreferenceStore

pytestmark = pytest.mark.slow

OVERRIDES = """SFT_DEMOS, SFT_EPOCHS = 128, 1
PAIR_PROMPTS = 12
PPO_UPDATES = 2
ENSEMBLE_MEMBERS = 2
EVAL_PROMPTS = 8
from rlhf_widgets import load_probes
PROBES = load_probes("sandbox")[::16]"""


def test_failure_modes_notebook_runs_headless(tmp_path: Path) -> None:
    book = run_notebook("09_failure_modes", OVERRIDES, tmp_path, timeout=900)
    assert_quiet(book)
    run = tmp_path / "runs" / "failure_modes"
    for name in ("unbiased", "sycophantic", "cautious", "sycophantic_ensemble"):
        assert (run / f"ppo_{name}" / "final").is_dir(), name
    assert (run / "rm_sycophantic_ensemble" / "final" / "members" / "1").is_dir()
    store = PreferenceStore(run / "labels.sqlite")
    assert set(store.annotators()) == {"unbiased", "sycophantic", "cautious", "gold"}

    texts = [o.get("data", {}).get("text/plain", "") for o in outputs(book)]
    texts = ["".join(t) if isinstance(t, list) else t for t in texts]
    table = next(t for t in texts if "sycophancy_rate" in t and "correct_refusal_rate" in t)
    for policy in ("SFT", "PPO (unbiased)", "PPO (sycophantic)", "PPO (cautious)", "PPO (sycophantic, ensemble)"):
        assert policy in table
    assert any("rate" in t and "low" in t and "high" in t for t in texts)  # a probe report's summary
    figures = [o["data"]["application/vnd.plotly.v1+json"] for o in outputs(book)
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, "the leaderboard figure was not shown"
    assert any(any(t.get("name") == "spread" for t in f["data"]) for f in figures), "no ensemble spread plotted"
    streams = "".join("".join(o["text"]) for o in outputs(book) if o.get("output_type") == "stream")
    assert "PPO against the ensemble: " in streams
    names = json.dumps(figures[-1])
    assert all(policy in names for policy in ("SFT", "PPO (sycophantic)"))
