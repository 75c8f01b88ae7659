"""Benchmark scripts run end to end at their smallest sizes (`--quick`): the real script, not a copy of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_ensemble_arms_quick_prints_one_line_per_arm(tmp_path: Path) -> None:
    """The ensemble-arms benchmark builds the quickstart's chain, trains a 2-member ensemble, runs PPO against its
    worst member and prints the arm's JSON line (stdout holds nothing else) with the best-of-N curve; the chain is
    cached for the next run."""
    cmd = [sys.executable, str(BENCHMARKS / "ensemble_arms.py"), "--quick", "--seed", "0", "--arms", "worst",
           "--best-of-n", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [json.loads(text) for text in proc.stdout.splitlines()]
    assert (line["seed"], line["arm"], line["members"], line["objective"]) == (0, "worst", 2, "worst")
    assert line["ppo"]["updates"] == 2 and line["ppo"]["status"] == "finished"
    assert 0 <= line["gold_win_rate_vs_sft"] <= 1 and isinstance(line["alerts"], list)
    assert set(line["seconds"]) == {"reward", "ppo", "evaluate", "best_of_n"}
    assert [p["n"] for p in line["best_of_n"]] == [1, 2, 4, 8]
    assert line["reused"] == {"chain": False, "reward": False}
    assert json.loads((tmp_path / "results.jsonl").read_text()) == line
    assert (tmp_path / "seed_0" / "chain.json").is_file()
