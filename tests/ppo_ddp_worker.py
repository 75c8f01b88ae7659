"""Run by tests/test_ppo_distributed.py under `accelerate launch --cpu --num_processes 2`.

Each rank trains two PPO updates on the sandbox and saves its trainable weights and the prompts it
sampled, so the test can check the replicas stayed identical while seeing different data.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rlhf_widgets.ppo import PPOConfig, PPOTrainer  # noqa: E402
from rlhf_widgets.sandbox import gold_reward, make_prompts  # noqa: E402


def main(out: Path) -> None:
    seen: list[str] = []

    def reward(prompts, responses):
        seen.extend(prompts)
        return gold_reward(prompts, responses)

    prompts = [p.text for p in make_prompts(64, seed=21)]
    cfg = PPOConfig(output_dir=str(out / "run"), num_updates=2, batch_size=4, mini_batch_size=2, num_ppo_epochs=1,
                    max_new_tokens=12, sample_every=0)
    trainer = PPOTrainer(prompts, cfg, reward=reward)
    trainer.train(show_progress=False)
    rank = trainer.accelerator.process_index
    torch.save({"state": trainer.backend.trainable_state(), "prompts": seen,
                "world": trainer.accelerator.num_processes,
                "kl": trainer.metrics.series("objective/kl")[1] if trainer.is_main else None},
               out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
