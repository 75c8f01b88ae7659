"""The iterative loop on the sandbox: rounds of pairs on the current policy → labels → reward model → PPO →
evaluation, killed after round 1 and resumed; provenance of every pair and label; the round-3 policy beats SFT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_widgets.labeling import PreferenceStore
from rlhf_widgets.workflows.loop import STEPS, IterativeLoop, LoopConfig

pytestmark = pytest.mark.slow

RUN = """
import os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, {tests!r})
from test_loop import make_loop
make_loop({out!r}, {sft!r}).run()
"""


def make_loop(out: str, sft: str, seed: int = 0) -> IterativeLoop:
    """The test's three-round loop; `seed` shifts every seed of the recipe (benchmarks/seed_chain.py measures it)."""
    from rlhf_widgets.runtime.data import load_prompts
    from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward
    from rlhf_widgets.stages.ppo import PPOConfig
    from rlhf_widgets.stages.reward.model import RewardStageConfig

    config = LoopConfig(output_dir=out, rounds=3, prompts_per_round=48, answers_per_prompt=4, pairs_per_prompt=6,
                        eval_prompts=96, seed=seed)
    return IterativeLoop(load_prompts("sandbox", n=3 * 48, seed=31), config, sft_model=sft,
                         labeler=SimulatedAnnotator(temperature=1.0, seed=seed), gold=gold_reward,
                         reward_config=RewardStageConfig(seed=seed),
                         ppo_config=PPOConfig(num_updates=12, seed=seed, sample_every=0))


def test_three_rounds_killed_after_the_first_and_resumed(sft_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "loop"
    tests = str(Path(__file__).parent)
    process = subprocess.Popen([sys.executable, "-c", RUN.format(tests=tests, out=str(out), sft=str(sft_model_dir))],
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    state_file = out / "loop.json"
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:  # kill once round 1 is finished and round 2 has begun
        state = json.loads(state_file.read_text()) if state_file.is_file() else {"rounds": []}
        if len(state["rounds"]) >= 2 or (state["rounds"] and set(state["rounds"][0]["done"]) >= set(STEPS)):
            break
        assert process.poll() is None, "the loop process ended before round 1 finished"
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state_file.read_text())
    assert set(killed_at["rounds"][0]["done"]) == set(STEPS) and len(killed_at["rounds"]) <= 2

    loop = make_loop(str(out), str(sft_model_dir))  # a fresh process would build the same loop: resume
    assert loop.rounds_done == 1
    loop.run(rounds=2)
    assert loop.prepare_round() == 3  # round 3's pairs on round 2's policy; a person labels one of them
    pair = loop.store.pairs(rounds=[3])[0]
    loop.store.record(pair.id, "a", annotator="human")
    history = loop.run()
    assert [r.round for r in history] == [1, 2, 3]
    assert history[2].human_labels == 1 and history[2].ai_labels == history[2].pairs - 1

    with PreferenceStore(out / "labels.sqlite") as store:  # provenance: every pair's round and policies
        pairs = store.pairs()
        assert {p.round for p in pairs} == {1, 2, 3}
        for p in pairs:
            producer = str(sft_model_dir) if p.round == 1 else history[p.round - 2].policy_path
            assert p.metadata["a"]["checkpoint"] == p.metadata["b"]["checkpoint"] == producer
            assert p.metadata["prompt_source"].startswith("prompt pool")
        labels = store.labels()
        assert all(lbl.round == store.get_pair(lbl.pair_id).round for lbl in labels)  # every label its round
        assert len(labels) == len(pairs)
    # round over round: the RM measured before and after on each new round; the final policy beats SFT on gold
    for result in history[1:]:
        assert {"loop/rm_gold_agreement_before", "loop/rm_gold_agreement_after",
                "loop/win_rate_vs_previous"} <= set(result.metrics)
    final = history[-1].metrics
    print("rounds:", [{k.removeprefix("loop/"): round(v, 3) for k, v in r.metrics.items()} for r in history])
    # over seeds 0-3 of the whole chain (SFT, labels, reward models, PPO; bf16 on this CPU) this recipe's final
    # policy won 0.79 / 0.59 / 0.61 / 0.59 of gold comparisons against SFT (docs/PERFORMANCE.md): 0.55 is below
    # every seed, above SFT's 0.5
    assert final["loop/gold_win_rate_vs_sft"] >= 0.55, final
    assert [r.step for r in loop.metrics.records] == [1, 2, 3]


def test_loop_settings_are_checked_and_a_changed_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policy_update"):
        LoopConfig(policy_update="reinforce")
    from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward

    first = IterativeLoop(["Where is my order #12345?"] * 4, LoopConfig(output_dir=str(tmp_path), rounds=1),
                          sft_model="sandbox", labeler=SimulatedAnnotator(), gold=gold_reward)
    first._save_state()
    with pytest.raises(ValueError, match=r"other loop settings \(rounds\)"):
        IterativeLoop(["q"], LoopConfig(output_dir=str(tmp_path), rounds=2), sft_model="sandbox",
                      labeler=SimulatedAnnotator(), gold=gold_reward)
    with pytest.raises(ValueError, match="eval_prompts="):
        IterativeLoop(["q"], LoopConfig(output_dir=str(tmp_path / "other")), sft_model="sandbox",
                      labeler=SimulatedAnnotator())
