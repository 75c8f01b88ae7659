"""Run by tests/test_trl_engines.py under `accelerate launch --config_file <zero2|fsdp>.yaml` (2 CPU processes).

One tiny SFT run on the sandbox (TRL's SFTTrainer, 3 optimizer steps); every rank writes `OUT/rank<r>.pt` with the
engine accelerate ran, the logged losses, and where the result was saved.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402

from rlhf_widgets.stages.sft import SFTStageConfig, train_sft  # noqa: E402


def main(out: Path) -> None:
    config = SFTStageConfig(output_dir=str(out / "sft"), max_steps=3, per_device_train_batch_size=4,
                            sandbox_demos=32, logging_steps=1, max_length=64)
    result = train_sft(config=config)
    state = AcceleratorState()
    torch.save({"engine": str(state.distributed_type), "processes": state.num_processes,
                "loss": result.metrics.series("loss")[1] if state.is_main_process else None,
                "model_path": str(result.model_path)}, out / f"rank{state.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
