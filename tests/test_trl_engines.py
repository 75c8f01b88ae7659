"""The TRL stages under DeepSpeed ZeRO-2 and FSDP 2 through `accelerate`, with the shipped configs: the engine
runs (2 CPU processes over gloo), trains, and the stage's result loads (tests/trl_engine_worker.py, SFT)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf_widgets.accelerate_configs import config_path
from rlhf_widgets.models import load_causal_lm

WORKER = Path(__file__).with_name("trl_engine_worker.py")


@pytest.mark.parametrize(("name", "engine", "port"), [("zero2", "DistributedType.DEEPSPEED", 29551),
                                                      ("fsdp", "DistributedType.FSDP", 29552)])
def test_sft_trains_under_the_engine_and_saves_a_loadable_model(tmp_path: Path, name: str, engine: str,
                                                                port: int) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(name)),
           "--num_processes", "2", "--main_process_port", str(port), str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["engine"] == r1["engine"] == engine and r0["processes"] == 2
    assert len(r0["loss"]) == 3 and all(torch.isfinite(torch.tensor(r0["loss"])))
    trained, _ = load_causal_lm(r0["model_path"])
    base, _ = load_causal_lm("sandbox")
    moved = [n for n, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert moved and all(torch.isfinite(p).all() for p in trained.state_dict().values())
