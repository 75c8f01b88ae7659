"""PPO under DeepSpeed ZeRO stage 1 or 2, through `accelerate` (`accelerate launch --config_file zero2.yaml`).

ZeRO-2 shards the optimizer state and the gradients of what trains across processes; every process still holds
the whole model, so PPO's forwards (the shared base's adapter switches, generation) run unchanged. The engine
owns what the plain path does by hand: averaging gradients (reduce-scatter into each process's partition),
clipping (`gradient_clipping` = `PPOConfig.max_grad_norm`), the optimizer step on the partition, and skipping a
step whose gradient norm is not finite (DeepSpeed's own overflow check, counted in `engine.skipped_steps`).
`ZeroEngine` adapts it to the trainer: the DeepSpeed config from `PPOConfig`, backward, the step with the
non-finite policy, and the per-process state (the process's float32 master partition and its AdamW moments) for
the last good state and checkpoints.

Not supported, each refused with the reason: ZeRO-3 (it shards the parameters themselves, which the shared base's
module swaps and `generate` cannot see through), DeepSpeed's own fp16/bf16 (PPO autocasts itself,
`PPOConfig.mixed_precision`, so the engine keeps float32 weights), and micro-batches inside a minibatch (one
backward per optimizer step: `micro_batch_size` None or = `mini_batch_size`). That one backward is of the policy and
value losses together — the engine reduces the gradients once per backward, and a second backward in the same step
would go unreduced — so under ZeRO the policy's graph is kept through the value forward (more activation memory
than the plain path, which frees it first).
"""

from __future__ import annotations

import copy
import math

import torch
from accelerate import Accelerator

from rlhf_widgets.stages.ppo.config import PPOConfig
from rlhf_widgets.stages.ppo.stopping import TrainingStopped


class ZeroEngine:
    """The DeepSpeed engine around PPO's trainable module, prepared by `accelerate`.

    Args:
        accelerator: an `Accelerator` whose state is DeepSpeed (an `accelerate launch` with a DeepSpeed config).
        module: what trains (the backbone: adapters + value head, or the separate models).
        optimizer: the trainer's AdamW (DeepSpeed wraps it and shards its state).
        config: PPO's settings (micro-batch, clipping, the precision setting checked).
        precision_mode: the resolved `PPOConfig.mixed_precision` ("no" or "bf16"; fp16 is refused).
    """

    def __init__(self, accelerator: Accelerator, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 config: PPOConfig, precision_mode: str) -> None:
        plugin = accelerator.state.deepspeed_plugin
        ds = plugin.deepspeed_config
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2):
            raise ValueError(f"PPO under DeepSpeed ZeRO-{stage}: stage 3 shards the parameters themselves, which PPO's "
                             "shared base (adapter switches, module swaps, generate) cannot run on — use ZeRO-2 "
                             "(rlhf_widgets/accelerate_configs/zero2.yaml)")
        if any(ds.get(half, {}).get("enabled") in (True, "true") for half in ("fp16", "bf16")):
            raise ValueError("PPO under DeepSpeed: launch with --mixed_precision no (the config's mixed_precision: "
                             "'no'); PPO autocasts itself (PPOConfig.mixed_precision) and the engine keeps float32 "
                             "master weights")
        if precision_mode == "fp16":
            raise ValueError("PPOConfig.mixed_precision='fp16' under DeepSpeed: the engine would need its own loss "
                             "scaler; use 'bf16' or 'no'")
        if config.micro_batch_size not in (None, config.mini_batch_size):
            raise ValueError(f"PPOConfig.micro_batch_size={config.micro_batch_size} under DeepSpeed: one backward per "
                             "optimizer step here — leave it None or equal to mini_batch_size, and make "
                             "mini_batch_size smaller to save memory")
        ds.update({
            "train_micro_batch_size_per_gpu": config.mini_batch_size,
            "gradient_accumulation_steps": 1,
            "train_batch_size": config.mini_batch_size * accelerator.num_processes,
            "gradient_clipping": config.max_grad_norm or 0.0,
            "zero_allow_untested_optimizer": True,  # torch's AdamW: DeepSpeed shards its state like its own Adam's
        })
        plugin.gradient_accumulation_steps = 1
        self.engine, _ = accelerator.prepare(module, optimizer)
        self.optimizer = optimizer
        """the trainer's AdamW, now holding this process's flat partitions as its parameters"""
        self.zero = self.engine.optimizer
        """DeepSpeed's ZeRO optimizer (the float32 master partitions live here)"""
        self.nonfinite_policy = config.nonfinite_policy

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()` through the engine (its gradient hooks reduce into the partitions) — once per step, of
        the whole loss; `loss` is already weighted for the minibatch, so no division by accumulation steps."""
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, where: str) -> float:
        """The optimizer step of one minibatch; returns the gradient norm (before clipping), NaN when the step was
        skipped for a non-finite gradient — or, with `nonfinite_grads='stop'`, raises `TrainingStopped` before
        stepping (the gradient is checked on every process's partition, and the flag all-reduced)."""
        if self.nonfinite_policy == "stop" and self.zero.has_overflow(partition_gradients=True):
            self.zero.zero_grad()
            raise TrainingStopped(f"non-finite gradient with a finite loss at {where}: the step was not taken — lower "
                                  "the learning rate, or use mixed_precision='no' if it comes from bf16 overflow")
        skipped = self.engine.skipped_steps
        self.engine.step()
        if self.engine.skipped_steps != skipped:
            return math.nan
        norm = self.engine.get_global_grad_norm()
        return math.nan if norm is None else float(norm)

    # ---------------------------------------------------------------- per-process state
    def state(self) -> dict:
        """This process's share of the optimizer: its float32 master partitions and their AdamW state (copies)."""
        return {"master": [p.detach().clone() for p in self.zero.single_partition_of_fp32_groups],
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state(self, state: dict) -> None:
        """Put back a `state()` — after the module's own weights were put back (every process holds them all)."""
        with torch.no_grad():
            for partition, saved in zip(self.zero.single_partition_of_fp32_groups, state["master"], strict=True):
                partition.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.zero.zero_grad()
