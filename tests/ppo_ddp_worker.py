"""Run by tests/test_ppo_distributed.py under `accelerate launch` with 2 CPU processes (plain data parallel over
gloo, or DeepSpeed ZeRO-2).

Each rank trains five PPO updates on the sandbox with the adaptive KL controller, and saves (per rank) its trainable
weights, the prompts it sampled, its β, its own share of every rollout (the local sequence KLs, EOS counts and
whitened advantages), its metrics before the reduction, and on rank 0 the logged metrics — so the test can check
that the replicas stayed identical while seeing different data, and that every decision was taken on both
processes' statistics.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rlhf_widgets.sandbox import gold_reward, make_prompts  # noqa: E402
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer  # noqa: E402


def main(out: Path) -> None:
    seen: list[str] = []

    def reward(prompts, responses):
        seen.extend(prompts)
        return gold_reward(prompts, responses)

    prompts = [p.text for p in make_prompts(64, seed=21)]
    cfg = PPOConfig(output_dir=str(out / "run"), num_updates=5, batch_size=4, mini_batch_size=2, num_ppo_epochs=1,
                    max_new_tokens=8, sample_every=0, adaptive_kl=True, kl_coef=0.1, kl_target=0.5, kl_horizon=50,
                    mixed_precision="no")
    trainer = PPOTrainer(prompts, cfg, reward=reward)
    shares = []
    shape = trainer._shape

    def record(rollout, kl_coef):  # this rank's share of each rollout, as shaped
        shape(rollout, kl_coef)
        # the sandbox base never ends within 8 tokens: mark rank + 1 responses as ended (read only by the report
        # from here on), so the logged count shows whether it was summed (3) or averaged (1.5)
        rollout.contains_eos[: trainer.processes.index + 1] = True
        mask = rollout.response_mask
        shares.append({"seq_kl": (rollout.kl * mask).sum(1).tolist(), "eos": int(rollout.contains_eos.sum()),
                       "adv_sum": float((rollout.advantages * mask).sum()),
                       "adv_sq_sum": float((rollout.advantages ** 2 * mask).sum()), "tokens": float(mask.sum())})
    trainer._shape = record
    local_metrics = []
    reduce_metrics = trainer.processes.reduce_metrics

    def record_metrics(metrics):  # this rank's metrics before the reduction
        local_metrics.append(dict(metrics))
        return reduce_metrics(metrics)
    trainer.processes.reduce_metrics = record_metrics
    trainer.train(show_progress=False)
    rank = trainer.processes.index
    result = {"state": clone(trainer), "prompts": list(seen), "world": trainer.processes.count,
              "kl_coef": trainer.kl_ctl.value, "shares": list(shares), "local_metrics": list(local_metrics),
              "metrics": trainer.metrics.to_dataframe().to_dict("list") if trainer.is_main else None}

    # then a NaN gradient on rank 0 in the 2nd minibatch of update 6 (the 1st has stepped): the run stops and puts
    # back the state after update 5 (weights, optimizer — under ZeRO the process's master partition); update 6 again
    backwards = {"n": 0}

    def nan_in_second_minibatch(grad):
        backwards["n"] += 1
        return grad * float("nan") if rank == 0 and backwards["n"] == 2 else grad
    hook = trainer.backend.policy_parameters[-1].register_hook(nan_in_second_minibatch)
    trainer.train(num_updates=6, show_progress=False)
    result.update(stopped_state=clone(trainer), stopped_status=trainer.control.state,
                  stopped_reason=trainer.control.reason, stopped_update=trainer.update)
    hook.remove()
    trainer.train(num_updates=6, show_progress=False)
    result.update(redone_state=clone(trainer), redone_update=trainer.update)
    torch.save(result, out / f"rank{rank}.pt")


def clone(trainer: PPOTrainer) -> dict:
    return {k: v.clone() for k, v in trainer.backend.trainable_state().items()}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
