"""PPO's faults across 2 CPU processes (gloo, `accelerate launch`): a dead process, resume, rails and NaN gradients
on one process, an exception on one process. Two launches for the whole module (tests/ppo_fault_worker.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ppo_fault_worker.py")
MONITOR_S = 10
"""The launcher checks its workers this often: longer than the survivor needs to notice a dead peer by itself."""


def launch(*args: str, port: int) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "--monitor_interval", str(MONITOR_S), str(WORKER), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return proc, time.perf_counter() - start


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    killed_out = tmp_path_factory.mktemp("killed")
    killed, _ = launch("killed", str(killed_out), port=29541)
    out = tmp_path_factory.mktemp("scenarios")
    proc, _ = launch("scenarios", str(out), str(killed_out), port=29542)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = {p.stem: torch.load(p, weights_only=False) for p in out.glob("*_rank*.pt")}
    return {"killed": killed, "killed_out": killed_out, "out": out, **results}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values())


def test_a_dead_process_makes_the_survivor_exit_with_a_clear_error_at_once(runs: dict) -> None:
    killed, out = runs["killed"], runs["killed_out"]
    assert killed.returncode != 0
    killed_at = float((out / "killed_at.txt").read_text())
    noticed_at, error, state = (out / "survivor_rank0.txt").read_text().split("\n", 2)
    # rank 0 noticed by itself (the launcher only looks every MONITOR_S seconds) and said where it was
    assert float(noticed_at) - killed_at < MONITOR_S / 2
    assert error.startswith("PeerLost: process 0 of 2:") and "update 3" in error, error
    assert "resume from the last checkpoint" in error and state == "failed"
    for update in (1, 2):
        files = {p.name for p in (out / "run" / f"checkpoint-{update}").iterdir()}
        assert {"trainer_state.pt", "process_state_0.pt", "process_state_1.pt"} <= files


def test_resume_with_two_processes_reproduces_the_uninterrupted_run(runs: dict) -> None:
    full, resumed = runs["uninterrupted_rank0"]["metrics"], runs["resumed_rank0"]["metrics"]
    assert full["step"] == resumed["step"] == [1, 2, 3]
    keys = [k for k in full if k.startswith(("objective/", "loss/", "policy/", "val/"))]
    assert "objective/kl" in keys and "loss/value_avg" in keys
    for key in keys:
        assert resumed[key] == pytest.approx(full[key], rel=1e-5, abs=1e-7), key
    for rank in (0, 1):
        assert same_weights(runs[f"resumed_rank{rank}"]["state"], runs[f"uninterrupted_rank{rank}"]["state"])


def test_a_rail_on_one_process_stops_both_at_the_same_update(runs: dict) -> None:
    r0, r1 = runs["rail_rank0"], runs["rail_rank1"]
    for r in (r0, r1):
        assert r["status"] == "failed" and r["update"] == 1
        assert r["reason"].startswith("non-finite") and "scores" in r["reason"]
        assert r["reason"].endswith("in the rollout of update 2 (on process 1 of 2)")
    assert same_weights(r0["state"], r1["state"]) and finite(r0["state"])


def test_a_nan_gradient_on_one_process_is_caught_on_both(runs: dict) -> None:
    for rank in (0, 1):
        run = runs[f"nan_stop_rank{rank}"]
        assert run["status"] == "failed" and run["update"] == 1
        assert "non-finite gradient" in run["reason"] and "non-finite on process 0 before averaging" in run["reason"]
        assert same_weights(run["state"], run["after_first"])  # the last good update's weights, finite
        assert finite(run["state"])
    last = runs["out"] / "nan_stop" / "last" / "trainer_state.pt"
    saved = torch.load(last, weights_only=False)
    assert saved["status"] == "failed" and "non-finite gradient" in saved["reason"] and saved["update"] == 1
    assert finite(saved["trainable"])


def test_a_skipped_nan_gradient_is_counted_and_the_run_goes_on(runs: dict) -> None:
    r0, r1 = runs["nan_skip_rank0"], runs["nan_skip_rank1"]
    assert r0["status"] == r1["status"] == "finished" and r0["update"] == 3
    assert r0["metrics"]["train/skipped_steps"] == [0, 1, 0]
    assert same_weights(r0["state"], r1["state"]) and finite(r0["state"])


def test_an_exception_on_one_process_stops_both_and_checkpoints_the_reason(runs: dict) -> None:
    for rank in (0, 1):
        run = runs[f"error_rank{rank}"]
        assert run["raised"] == ("UpdateError: ValueError: the reward service is down (on process 1 of 2)")
        assert run["status"] == "failed" and run["update"] == 1
        assert same_weights(run["state"], run["after_first"])
    saved = torch.load(runs["out"] / "error" / "last" / "trainer_state.pt", weights_only=False)
    assert saved["reason"] == "UpdateError: ValueError: the reward service is down (on process 1 of 2)"


def test_resuming_with_another_process_count_is_refused(runs: dict, tmp_path: Path) -> None:
    sys.path.insert(0, str(WORKER.parent))
    from ppo_fault_worker import PROMPTS, Reward, config

    from rlhf_widgets.stages.ppo import PPOTrainer

    with pytest.raises(ValueError, match=r"written by 2 process\(es\) and this run has 1.*--num_processes 2"):
        PPOTrainer(PROMPTS, config(tmp_path), reward=Reward(),
                   resume_from=runs["killed_out"] / "run" / "checkpoint-2")
