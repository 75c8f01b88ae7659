"""Memory on CPU: the automatic micro-batch size, and handing freed heap pages back to the OS between phases."""

from __future__ import annotations

import ctypes
import functools

CPU_ACTIVATION_BUDGET = 256 * 2**20
"""bytes of saved activations per forward that the automatic micro-batch size aims for on CPU"""


def auto_micro_batch_size(model_config, seq_len: int, mini_batch_size: int, half_precision: bool = False) -> int:
    """Rollouts per forward/backward on CPU: as many as keep one forward's saved activations under
    `CPU_ACTIVATION_BUDGET`, estimated from the model shape, and dividing `mini_batch_size`.

    `half_precision`: the forwards run under bf16/fp16 autocast, which saves the matmuls' inputs and the MLP's
    activations in 2 bytes (the residual stream and the norms stay float32), so more rollouts fit the same budget."""
    hidden = model_config.hidden_size
    mlp = getattr(model_config, "intermediate_size", None) or 4 * hidden
    # tensors a decoder block keeps for backward, per token: ~12 of hidden size, ~4 of MLP size; float32, or under
    # autocast ~half the hidden-size ones and all MLP-size ones in 2 bytes
    hidden_bytes, mlp_bytes = (3, 2) if half_precision else (4, 4)
    per_row = seq_len * model_config.num_hidden_layers * (12 * hidden * hidden_bytes + 4 * mlp * mlp_bytes)
    fit = max(1, min(mini_batch_size, CPU_ACTIVATION_BUDGET // per_row))
    return max(d for d in range(1, fit + 1) if mini_batch_size % d == 0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent elsewhere (macOS, musl)
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the OS (glibc `malloc_trim(0)`; no-op elsewhere).

    glibc keeps freed CPU tensor memory mapped for reuse, and between PPO phases (generation, the rollout
    forwards, the minibatches' graphs) the sizes differ enough that the kept pages pile up and RSS grows well above
    the working set. Called between phases — before and after an update's PPO epochs, not between minibatches,
    which reuse each other's pages: each call walks the heap and every page it returns is faulted back in by the
    next allocation that needs it (what both measured: docs/PERFORMANCE.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
