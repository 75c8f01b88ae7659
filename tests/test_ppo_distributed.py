"""`accelerate launch` runs PPO data-parallel: 2 CPU processes (gloo) stay identical replicas, and every decision
is taken on both processes' statistics (one launch for the module: tests/ppo_ddp_worker.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf_widgets.accelerate_configs import config_path
from rlhf_widgets.stages.ppo import core

WORKER = Path(__file__).with_name("ppo_ddp_worker.py")


def launch(out: Path, *launcher: str) -> tuple[dict, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tuple(torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    # `--multi_gpu` selects accelerate's torchrun launcher; with no GPU the processes train on CPU over gloo
    # (`--cpu` alone would start a single process)
    return launch(tmp_path_factory.mktemp("ddp"), "--multi_gpu", "--main_process_port", "29533")


@pytest.fixture(scope="module")
def zero2_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The same run under DeepSpeed ZeRO-2 (the shipped config; the engine on CPU over gloo)."""
    return launch(tmp_path_factory.mktemp("zero2"), "--config_file", str(config_path("zero2")),
                  "--main_process_port", "29534")


def test_two_cpu_processes_keep_identical_replicas(ranks: tuple[dict, dict]) -> None:
    r0, r1 = ranks
    assert r0["world"] == r1["world"] == 2
    assert r0["prompts"] != r1["prompts"], "each replica must roll out its own prompts"
    assert r0["state"].keys() == r1["state"].keys() and r0["state"]
    for name, tensor in r0["state"].items():
        assert torch.equal(tensor, r1["state"][name]), f"replicas diverged at {name}"
    # and training moved the weights (the LoRA B matrices start at zero)
    assert any(t.abs().sum() > 0 for n, t in r0["state"].items() if "lora_B" in n)
    assert r0["metrics"]["step"] == [1, 2, 3, 4, 5]


def test_adaptive_kl_moves_beta_identically_on_every_process(ranks: tuple[dict, dict]) -> None:
    """β after 5 updates is the same on both processes, and is the controller replayed on the mean KL of both
    processes' rollouts — which differs from either process's own mean (so per-process β would drift apart)."""
    r0, r1 = ranks
    assert r0["kl_coef"] == r1["kl_coef"] != 0.1
    replay = core.AdaptiveKLController(0.1, target=0.5, horizon=50)
    for s0, s1 in zip(r0["shares"], r1["shares"], strict=True):
        both = s0["seq_kl"] + s1["seq_kl"]
        replay.update(sum(both) / len(both), len(both))
    assert r0["kl_coef"] == pytest.approx(replay.value, rel=1e-6)
    logged = r0["metrics"]["objective/kl"]
    local = [sum(s["seq_kl"]) / len(s["seq_kl"]) for s in r0["shares"]]
    assert logged == pytest.approx([sum(s0["seq_kl"] + s1["seq_kl"]) / 8 for s0, s1 in
                                    zip(r0["shares"], r1["shares"], strict=True)], abs=1e-5)
    assert any(abs(a - b) > 1e-4 for a, b in zip(logged, local, strict=True))


def test_advantages_are_whitened_with_both_processes_statistics(ranks: tuple[dict, dict]) -> None:
    for s0, s1 in zip(*(r["shares"] for r in ranks), strict=True):
        n = s0["tokens"] + s1["tokens"]
        mean = (s0["adv_sum"] + s1["adv_sum"]) / n
        var = (s0["adv_sq_sum"] + s1["adv_sq_sum"] - n * mean**2) / (n - 1)
        assert mean == pytest.approx(0.0, abs=1e-5) and var == pytest.approx(1.0, abs=1e-3)
    assert any(abs(s["adv_sum"] / s["tokens"]) > 1e-3 for s in ranks[0]["shares"])  # not whitened per process


def test_metrics_are_reduced_by_meaning(ranks: tuple[dict, dict]) -> None:
    """Counts summed, times the slowest process's, means averaged — from each process's own numbers."""
    r0, r1 = ranks
    logged = r0["metrics"]
    for key, reduce in (("val/num_eos_tokens", sum), ("time/rollout", max), ("time/update", max),
                        ("objective/scores", lambda v: sum(v) / 2), ("loss/value_avg", lambda v: sum(v) / 2)):
        expected = [reduce([a[key], b[key]]) for a, b in zip(r0["local_metrics"], r1["local_metrics"], strict=True)]
        assert logged[key] == pytest.approx(expected, rel=1e-9), key
    assert any(a["time/rollout"] != b["time/rollout"]
               for a, b in zip(r0["local_metrics"], r1["local_metrics"], strict=True))
    assert logged["episode"] == [8, 16, 24, 32, 40]
    eos = [s0["eos"] + s1["eos"] for s0, s1 in zip(r0["shares"], r1["shares"], strict=True)]
    assert logged["val/num_eos_tokens"] == eos == [3] * 5  # 1 + 2 marked ended (see the worker)


def test_zero2_takes_the_same_steps_as_plain_data_parallel(ranks: tuple[dict, dict],
                                                           zero2_ranks: tuple[dict, dict]) -> None:
    """Under DeepSpeed ZeRO-2 (optimizer state and gradients sharded, the engine steps) the replicas stay identical
    and end where the plain data-parallel run does — the same prompts, β and weights up to float reduction order."""
    z0, z1 = zero2_ranks
    for name, tensor in z0["state"].items():
        assert torch.equal(tensor, z1["state"][name]), f"ZeRO-2 replicas diverged at {name}"
    plain = ranks[0]
    assert z0["prompts"] == plain["prompts"]
    assert z0["kl_coef"] == pytest.approx(plain["kl_coef"], rel=1e-6)
    for name, tensor in plain["state"].items():
        torch.testing.assert_close(z0["state"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert z0["metrics"]["objective/kl"] == pytest.approx(plain["metrics"]["objective/kl"], rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("engine", ["plain", "zero2"])
def test_a_nan_gradient_after_a_step_puts_back_the_last_good_state(engine: str, ranks: tuple[dict, dict],
                                                                   zero2_ranks: tuple[dict, dict]) -> None:
    """A NaN gradient on one process in the 2nd minibatch of update 6, after the 1st has stepped: both processes
    stop with update 5's weights (and optimizer state: under ZeRO each process's master partition and moments), so
    redoing update 6 afterwards gives the same weights under ZeRO-2 as under plain data parallel."""
    runs = ranks if engine == "plain" else zero2_ranks
    for run in runs:
        assert run["stopped_status"] == "failed" and run["stopped_update"] == 5
        assert "non-finite gradient" in run["stopped_reason"]
        assert "update 6, epoch 1, minibatch 2" in run["stopped_reason"]
        assert all(torch.equal(run["stopped_state"][k], v) for k, v in run["state"].items())
        assert run["redone_update"] == 6
    assert all(torch.equal(runs[0]["redone_state"][k], v) for k, v in runs[1]["redone_state"].items())
    if engine == "zero2":
        for name, tensor in ranks[0]["redone_state"].items():
            torch.testing.assert_close(runs[0]["redone_state"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
