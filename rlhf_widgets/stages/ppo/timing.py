"""Where an update's seconds go: wall-clock seconds per named phase, logged by the trainer as `time/<phase>`.

Phases of one update (each a `time/…` metric; a phase entered several times — the rollout's chunks, every
micro-batch of every epoch — adds up):

| phase | what runs |
|---|---|
| `keep_last_good` | copying the trainable weights and optimizer state a failed update returns to |
| `generation` | tokenizing the prompts, sampling (with the old log-probs recorded), truncating at EOS |
| `policy_forward` | the old log-probs' policy forward (only with `rollout_logprobs="forward"`) |
| `reference_forward` | the reference forward (its lower layers are also the value network's trunk) |
| `value_forward` | the rollout's values |
| `reward` | decoding the responses and the reward function |
| `train_forward_backward` | every epoch's policy and value forwards and backwards, all micro-batches |
| `optimizer` | averaging gradients across processes, clipping, the AdamW step |
| `gold` | the held-out gold scores (only with `gold=`) |
| `other` | what is left of `time/rollout + time/update`: shaping rewards, GAE, freeing memory, agreements |

On CUDA each phase boundary synchronizes the device, so a phase is charged for its own kernels.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseClock:
    """Accumulates wall-clock seconds per phase: `with clock("generation"): ...`; `seconds` maps phase → total.

    Args:
        device: the device the phases compute on (CUDA is synchronized at every boundary).
        enabled: False makes every phase a no-op (nothing recorded).
    """

    def __init__(self, device: torch.device | str = "cpu", enabled: bool = True) -> None:
        self.enabled = enabled
        self._sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
        self.seconds: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.seconds = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self._sync is not None:
            self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.seconds[phase] += time.perf_counter() - start


NO_CLOCK = PhaseClock(enabled=False)
"""A clock that records nothing (the default of functions that take one)."""
