"""Mixed precision for PPO: which compute dtype a run uses, autocast around the model forwards, fp32 where it matters.

`PPOConfig.mixed_precision` picks the dtype the forwards and backwards compute in; the weights that train (LoRA
adapters, the value head, full models with `shared_base=False`) stay float32 — the master copy the optimizer
updates — and so do the optimizer state, the value head's matmul, the log-softmax over the vocabulary and every
loss reduction (`core` casts logits to float32 first). That is a different thing from `ModelConfig.dtype`, which is
how the *frozen* base weights are stored (memory): a float32 base can compute in bf16 under autocast, and a bf16
base keeps float32 adapters.

- "bf16": `torch.autocast(device, torch.bfloat16)`. No loss scaling: bf16 has float32's exponent range.
- "fp16": autocast to float16 with a `torch.amp.GradScaler` (dynamic loss scaling: a step whose gradients
  overflow is skipped and the scale lowered, which is how the scaler finds its scale — so non-finite gradients are
  skipped and counted under fp16, never a stop).
- "auto": bf16 where the hardware computes it natively — a CUDA GPU with bf16 (Ampere and later), or a CPU with
  AVX512-BF16 or AMX-BF16 (`torch.cpu.get_capabilities()`); float32 elsewhere. Emulated bf16 is slower than fp32.
- "no": float32 everywhere (exact-equality tests pin this).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
INFERENCE_PRECISION = ("auto", "no", "bf16")
"""the settings of no-grad forwards (`inference_autocast`): fp16 without a loss scaler is for training only"""
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


CPU_BF16_ENV = "RLHF_WIDGETS_CPU_BF16"
"""Set to "0" to treat the CPU as one without native bf16: every "auto" setting (TRL stages' `bf16=None`,
`PPOConfig.mixed_precision`, sampling, reward scoring) then computes in float32 — the whole workbench's float32
switch, e.g. `RLHF_WIDGETS_CPU_BF16=0 make quickstart`."""


def cpu_has_native_bf16() -> bool:
    """This CPU has bf16 matmul instructions (x86 AVX512-BF16 / AMX-BF16, or Arm's BF16 extension), and
    `RLHF_WIDGETS_CPU_BF16` is not "0"."""
    if os.environ.get(CPU_BF16_ENV, "").strip() == "0":
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.8
    if capabilities is None:
        return False
    flags = capabilities()
    return any(flags.get(name) for name in ("avx512_bf16", "amx_bf16", "bf16"))


def cpu_precision_path() -> str:
    """One line saying which precision every "auto" setting takes on this CPU, and why: "bf16 (…)" or
    "float32 (…)" — printed by CI and the quickstart so a result says which path produced it."""
    flags = getattr(torch.cpu, "get_capabilities", dict)()
    native = [name for name in ("avx512_bf16", "amx_bf16", "bf16") if flags.get(name)]
    if os.environ.get(CPU_BF16_ENV, "").strip() == "0":
        return f"float32 ({CPU_BF16_ENV}=0{'; the CPU has ' + ', '.join(native) if native else ''})"
    if native:
        return f"bf16 autocast (the CPU computes bf16 natively: {', '.join(native)}; {CPU_BF16_ENV}=0 for float32)"
    return "float32 (the CPU has no native bf16: no avx512_bf16 or amx_bf16)"


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """`setting` ("auto", "no", "bf16", "fp16") → the one a run on `device` uses ("no", "bf16" or "fp16").

    "auto" is "bf16" on CUDA with bf16 support and on CPUs with native bf16, else "no". Raises ValueError for an
    unknown setting or for bf16 on a CUDA GPU without it.
    """
    if setting not in MIXED_PRECISION:
        raise ValueError(f"PPOConfig.mixed_precision={setting!r}: expected one of {MIXED_PRECISION}")
    cuda = device.type == "cuda"
    if setting == "auto":
        native = torch.cuda.is_bf16_supported() if cuda else device.type == "cpu" and cpu_has_native_bf16()
        return "bf16" if native else "no"
    if setting == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("PPOConfig.mixed_precision='bf16': this GPU has no bf16 (pre-Ampere); use 'fp16' (with "
                         "loss scaling) or 'no'")
    return setting


def check_inference_precision(owner: str, setting: str) -> None:
    """Raise a ValueError naming `owner` (e.g. "SamplingSettings.mixed_precision") unless `setting` is one of
    `INFERENCE_PRECISION`."""
    if setting not in INFERENCE_PRECISION:
        raise ValueError(f"{owner}={setting!r}: must be 'auto', 'no' or 'bf16'")


def inference_autocast(model: nn.Module, setting: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast for no-grad forwards of `model` (sampling, reward scoring) under a "auto" / "no" / "bf16" setting
    (`resolve_mixed_precision`); a no-op context for "no" and for a model not stored in float32 (a bf16 / fp16 /
    4-bit model computes in its own dtype)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = embeddings.weight if embeddings is not None else next(model.parameters())
    if setting == "no" or weight.dtype != torch.float32:
        return contextlib.nullcontext()
    return Precision(resolve_mixed_precision(setting, weight.device), weight.device).autocast()


class Precision:
    """The compute precision of one run on one device: `autocast()` around forwards, the fp16 loss scaler.

    Args:
        mode: "no", "bf16" or "fp16" (see `resolve_mixed_precision`).
        device: where the model computes.
    """

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in ("no", "bf16", "fp16"):
            raise ValueError(f"Precision mode must be 'no', 'bf16' or 'fp16' (resolve 'auto' first), got {mode!r}")
        self.mode, self.device_type = mode, device.type
        self.dtype = _DTYPES.get(mode, torch.float32)
        """the dtype forwards and backwards compute in"""
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
        """the fp16 loss scaler (None otherwise)"""

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the run's dtype (a no-op context in float32)."""
        if self.mode == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def full_precision(self) -> contextlib.AbstractContextManager:
        """Float32 inside an `autocast()` region (reward functions, the value head)."""
        if self.mode == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()`, scaled under fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()


class Float32Linear(nn.Linear):
    """A `nn.Linear` that computes in float32 even inside autocast (the value head: V is a regression target, and
    bf16's 8-bit mantissa would round every value the returns and advantages are built from; a reward model's score
    head, for the same reason), whatever dtype its weights are stored in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            if self.weight.dtype == torch.float32:
                return super().forward(x.float())
            # weights kept in half precision (a 4-bit model's head in its compute dtype): still a float32 matmul
            bias = None if self.bias is None else self.bias.float()
            return nn.functional.linear(x.float(), self.weight.float(), bias)

