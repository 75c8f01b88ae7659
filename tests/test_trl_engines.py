"""The TRL stages (and PPO) under DeepSpeed ZeRO-2 and FSDP 2 through `accelerate`, with the shipped configs.

ZeRO-2 runs on CPU (2 processes over gloo): SFT trains under the engine and its result loads
(tests/trl_engine_worker.py). accelerate runs FSDP only across accelerators, so on CPU the FSDP launch is refused
with a message (a CPU run would silently train each process alone) and the FSDP run itself is a GPU test.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf_widgets.accelerate_configs import config_path
from rlhf_widgets.runtime.models import load_causal_lm

WORKER = Path(__file__).with_name("trl_engine_worker.py")


def launch_sft(out: Path, name: str, processes: int, port: int) -> tuple[dict, ...]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path(name)),
           "--num_processes", str(processes), "--main_process_port", str(port), str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tuple(torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(processes))


def check_trained(ranks: tuple[dict, ...], engine: str) -> None:
    assert {r["engine"] for r in ranks} == {engine} and ranks[0]["processes"] == len(ranks)
    assert len(ranks[0]["loss"]) == 3 and all(torch.isfinite(torch.tensor(ranks[0]["loss"])))
    trained, _ = load_causal_lm(ranks[0]["model_path"])
    base, _ = load_causal_lm("sandbox")
    moved = [n for n, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert moved and all(torch.isfinite(p).all() for p in trained.state_dict().values())


def test_sft_trains_under_zero2_on_cpu_and_saves_a_loadable_model(tmp_path: Path) -> None:
    check_trained(launch_sft(tmp_path, "zero2", 2, 29551), "DistributedType.DEEPSPEED")


def test_fsdp_without_a_gpu_is_refused_with_the_alternatives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("with CUDA, FSDP runs (test_sft_trains_under_fsdp_on_gpus)")
    from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer
    from rlhf_widgets.stages.sft import SFTStageConfig

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp.yaml` sets
    with pytest.raises(ValueError, match=r"FSDP through accelerate needs GPUs.*zero2\.yaml"):
        SFTStageConfig(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"PPO under FSDP.*zero2\.yaml"):
        PPOTrainer(["hi"], PPOConfig(output_dir=str(tmp_path)), reward=lambda p, r: [0.0] * len(p))


@pytest.mark.gpu
def test_sft_trains_under_fsdp_on_gpus(tmp_path: Path) -> None:
    check_trained(launch_sft(tmp_path, "fsdp", min(2, torch.cuda.device_count()), 29552), "DistributedType.FSDP")
