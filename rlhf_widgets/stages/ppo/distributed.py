"""PPO across processes: every decision taken on statistics of all processes, stops agreed at one point.

Under `accelerate launch` each process rolls out its own prompts. Anything that decides what happens next — the
adaptive KL coefficient, the safety rails, advantage whitening (`PPOConfig.whiten_globally`), whether a gradient is
finite — is computed from all processes' numbers, so every process takes the same decision at the same update.
A failure seen by one process (a rail, a non-finite value, an exception in the reward function) is raised at the
next agreement point on every process, with the diagnosis of the process that saw it; a process that dies makes the
next collective fail on the others, which `Processes` turns into a `PeerLost` error naming where it happened (the
wait is bounded by `PPOConfig.collective_timeout_s`).

With one process every reduction is the identity and an agreement re-raises the local error as it is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, gather_object

from rlhf_widgets.stages.ppo.stopping import TrainingStopped

if TYPE_CHECKING:
    from rlhf_widgets.stages.ppo.config import PPOConfig

SUMMED_METRICS = frozenset({"val/num_eos_tokens"})
"""Metrics that count things per process: summed over processes (the rest are means: averaged, or — `time/…` —
the slowest process's)."""


def make_accelerator(config: PPOConfig) -> Accelerator:
    """The run's `Accelerator`: CUDA with NCCL when there is a GPU, else CPU processes over gloo (a DeepSpeed launch
    without a GPU needs gloo named explicitly). `collective_timeout_s` bounds every collective's wait. An FSDP
    launch is refused (see the message)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ValueError("PPO under FSDP: FSDP shards the parameters themselves, which PPO's shared base (adapter "
                         "switches, module swaps, generate) cannot run on; launch PPO with DeepSpeed ZeRO-2 "
                         "(rlhf_widgets/accelerate_configs/zero2.yaml) or plain data parallel (--multi_gpu). FSDP "
                         "is for the TRL stages")
    cuda = torch.cuda.is_available()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    backend = "nccl" if cuda else "gloo" if launched else None
    handler = InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=config.collective_timeout_s))
    engine = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return Accelerator(cpu=not cuda and not engine, kwargs_handlers=[handler])


class PeerLost(RuntimeError):
    """A collective operation failed: another process has died or cannot be reached."""


class UpdateError(RuntimeError):
    """An exception raised on one process inside an update, re-raised on every process at the agreement point."""


class Processes:
    """The processes of one run (`accelerate`'s), with the reductions and agreements PPO needs.

    Args:
        accelerator: the run's `Accelerator`.
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.count = accelerator.num_processes
        """number of processes"""
        self.index = accelerator.process_index
        """this process's rank"""
        self.where = "setup"
        """the phase the next collective belongs to (named by `PeerLost`)"""

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, dist.DistError) as err:
            raise PeerLost(
                f"process {self.index} of {self.count}: {what} failed during {self.where}: another process has "
                f"died or cannot be reached ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                "The weights in memory are the last good update's; resume from the last checkpoint with the same "
                "number of processes") from err

    # ---------------------------------------------------------------- reductions
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over every process (a new tensor; the input itself with one process)."""
        if self.count == 1:
            return tensor
        out = tensor.detach().clone()
        with self._collective("an all-reduce"):
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor`'s elementwise maximum over every process."""
        if self.count == 1:
            return tensor
        out = tensor.detach().clone()
        with self._collective("an all-reduce"):
            dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def reduce_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Each metric reduced as its meaning requires: counts (`SUMMED_METRICS`) summed, times (`time/…`) the
        slowest process's, everything else (per-rollout and per-token means of equal-sized batches) averaged."""
        if self.count == 1:
            return dict(metrics)
        keys = sorted(metrics)
        device = self.accelerator.device
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
        summed = self.sum(values).tolist()
        slowest = self.max(values).tolist()
        return {k: summed[i] if k in SUMMED_METRICS else slowest[i] if k.startswith("time/")
                else summed[i] / self.count for i, k in enumerate(keys)}

    # ---------------------------------------------------------------- agreement
    def agree(self, error: BaseException | None) -> None:
        """An agreement point: every process calls it with the exception it caught since the last one (or None).

        When any process has one, every process raises: a `TrainingStopped` with the diagnosis of the lowest-ranked
        process that stopped (naming that process when there are several), or an `UpdateError` for any other
        exception (chained to the original on the process that raised it). One process: the error itself.
        """
        if self.count == 1:
            if error is not None:
                raise error
            return
        flag = torch.tensor([0.0 if error is None else 1.0], device=self.accelerator.device)
        if self.max(flag).item() == 0:
            return
        mine = None if error is None else (isinstance(error, TrainingStopped), f"{type(error).__name__}: {error}",
                                           str(error))
        with self._collective("gathering a stop's reason"):
            seen = gather_object([mine])
        rank, (stopped, described, message) = next((r, s) for r, s in enumerate(seen) if s is not None)
        where = f"(on process {rank} of {self.count})"
        if stopped:
            raise TrainingStopped(f"{message} {where}") from (error if rank == self.index else None)
        raise UpdateError(f"{described} {where}") from (error if rank == self.index else None)

    def broadcast(self, obj: Any) -> Any:
        """The main process's `obj` (picklable) on every process: a decision taken where the metrics log lives,
        followed by all. One process: `obj` itself."""
        if self.count == 1:
            return obj
        with self._collective("a broadcast"):
            return broadcast_object_list([obj], from_process=0)[0]

    def barrier(self) -> None:
        """Wait for every process."""
        if self.count > 1:
            with self._collective("a barrier"):
                self.accelerator.wait_for_everyone()
