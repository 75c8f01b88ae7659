"""Run by tests/test_ppo_faults.py under `accelerate launch` with 2 CPU processes (gloo).

    python ppo_fault_worker.py killed OUT     # rank 1 is SIGKILLed inside update 3 (checkpoints after 1 and 2)
    python ppo_fault_worker.py scenarios OUT KILLED_OUT
        uninterrupted   3 updates, the same run as `killed` would have been
        resumed         from KILLED_OUT's checkpoint-2 to update 3
        rail            the reward is NaN on rank 1 only, in update 2 (a rail on one process)
        nan_stop        a NaN gradient on rank 0 only, in update 2 (nonfinite_grads='stop')
        nan_skip        the same with nonfinite_grads='skip' (the run goes on)
        error           the reward function raises on rank 1 only, in update 2

Each scenario saves, per rank, `OUT/<scenario>_rank<r>.pt`: the trainable state, status and reason, the update
reached, and on rank 0 the logged metrics. `killed` writes `OUT/killed_at.txt` (rank 1, just before dying) and
`OUT/survivor_rank0.txt` (the error rank 0 exits with, and when).
"""

import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rlhf_widgets.sandbox import gold_reward, make_prompts  # noqa: E402
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer  # noqa: E402

PROMPTS = [p.text for p in make_prompts(64, seed=21)]


def config(out: Path, **changes) -> PPOConfig:
    """The tiny shape: batch 4, one minibatch, one epoch, 8 new tokens, float32 (exact comparisons)."""
    base = dict(output_dir=str(out), num_updates=3, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                max_new_tokens=8, sample_every=0, mixed_precision="no", save_every=1, collective_timeout_s=60)
    return PPOConfig(**{**base, **changes})


class Reward:
    """gold_reward, with a fault on one rank in one update (`fault(rank, update)` runs before scoring)."""

    def __init__(self, fault=None) -> None:
        self.calls, self.fault = 0, fault

    def __call__(self, prompts, responses):
        self.calls += 1
        rank = int(os.environ.get("RANK", "0"))
        if self.fault is not None:
            scores = self.fault(rank, self.calls)
            if scores is not None:
                return scores * len(prompts)
        return gold_reward(prompts, responses)


def save(out: Path, name: str, trainer: PPOTrainer, **extra) -> None:
    rank = trainer.processes.index
    torch.save({"state": {k: v.clone() for k, v in trainer.backend.trainable_state().items()},
                "status": trainer.control.state, "reason": trainer.control.reason, "update": trainer.update,
                "kl_coef": trainer.kl_ctl.value,
                "metrics": trainer.metrics.to_dataframe().to_dict("list") if trainer.is_main else None, **extra},
               out / f"{name}_rank{rank}.pt")


def killed(out: Path) -> None:
    def die(rank, call):
        if rank == 1 and call == 3:
            (out / "killed_at.txt").write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = PPOTrainer(PROMPTS, config(out / "run"), reward=Reward(die))
    try:
        trainer.train(show_progress=False)
    except BaseException as err:
        (out / f"survivor_rank{trainer.processes.index}.txt").write_text(
            f"{time.time()}\n{type(err).__name__}: {err}\n{trainer.control.state}")
        raise


def nan_gradient_on_rank0_in_update(trainer: PPOTrainer, update: int) -> None:
    """A hook that turns one policy weight's gradient into NaN on rank 0 during `update` (the loss stays finite)."""
    weight = trainer.backend.policy_parameters[0]
    weight.register_hook(lambda g: g * float("nan") if trainer.processes.index == 0 and trainer.update == update - 1
                         else g)


def scenarios(out: Path, killed_out: Path) -> None:
    trainer = PPOTrainer(PROMPTS, config(out / "uninterrupted"), reward=Reward())
    trainer.train(show_progress=False)
    save(out, "uninterrupted", trainer)

    trainer = PPOTrainer(PROMPTS, config(out / "resumed"), reward=Reward(),
                         resume_from=killed_out / "run" / "checkpoint-2")
    trainer.train(show_progress=False)
    save(out, "resumed", trainer)

    trainer = PPOTrainer(PROMPTS, config(out / "rail"), reward=Reward(
        lambda rank, call: [float("nan")] if rank == 1 and call == 2 else None))
    trainer.train(show_progress=False)
    save(out, "rail", trainer)

    for policy in ("stop", "skip"):
        trainer = PPOTrainer(PROMPTS, config(out / f"nan_{policy}", nonfinite_grads=policy), reward=Reward())
        trainer.train(num_updates=1, show_progress=False)
        after_first = {k: v.clone() for k, v in trainer.backend.trainable_state().items()}
        nan_gradient_on_rank0_in_update(trainer, 2)
        trainer.train(show_progress=False)
        save(out, f"nan_{policy}", trainer, after_first=after_first)

    def fail(rank, call):
        if rank == 1 and call == 2:
            raise ValueError("the reward service is down")

    trainer = PPOTrainer(PROMPTS, config(out / "error"), reward=Reward(fail))
    trainer.train(num_updates=1, show_progress=False)
    after_first = {k: v.clone() for k, v in trainer.backend.trainable_state().items()}
    try:
        trainer.train(show_progress=False)
        raised = None
    except Exception as err:  # noqa: BLE001 - recorded for the test
        raised = f"{type(err).__name__}: {err}"
    save(out, "error", trainer, after_first=after_first, raised=raised)


if __name__ == "__main__":
    if sys.argv[1] == "killed":
        killed(Path(sys.argv[2]))
    else:
        scenarios(Path(sys.argv[2]), Path(sys.argv[3]))
