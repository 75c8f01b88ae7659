"""`accelerate launch` runs PPO data-parallel: 2 CPU processes (gloo) stay identical replicas."""

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ppo_ddp_worker.py")


def test_two_cpu_processes_keep_identical_replicas(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    # `--multi_gpu` selects accelerate's torchrun launcher; with no GPU the processes train on CPU over gloo
    # (`--cpu` alone would start a single process)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533", str(WORKER),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["prompts"] != r1["prompts"], "each replica must roll out its own prompts"
    assert r0["state"].keys() == r1["state"].keys() and r0["state"]
    for name, tensor in r0["state"].items():
        assert torch.equal(tensor, r1["state"][name]), f"replicas diverged at {name}"
    # and training moved the weights (the LoRA B matrices start at zero)
    assert any(t.abs().sum() > 0 for n, t in r0["state"].items() if "lora_B" in n)
    assert len(r0["kl"]) == 2
