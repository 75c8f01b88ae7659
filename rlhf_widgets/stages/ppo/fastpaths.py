"""PEFT fast paths for PPO's shared base: the same numbers as PEFT's own code, with less Python per call.

- **Adapter switching** (`activate`): PEFT's `set_adapter` walks every module and parameter, a cost that grows
  with the model and is paid at every switch (PPO switches adapters about ten times per update); the adapter layers
  are found once and switched directly.
- **Plain-LoRA forwards** (`plain_lora`): each plain LoRA linear runs as `base(x) + s·(xAᵀ)Bᵀ` without PEFT's
  per-call adapter loop, casts and dispatch — Python overhead that small models pay at every layer of every
  forward (bit-identical logits and gradients on CPU).
- **Merged sampling** (`merged`): during `generate`, each policy-adapted linear runs on a transient `W + ΔW`
  (one matmul per generated token instead of three), the base tensors never written.

What each measured: docs/PERFORMANCE.md, "PPO's fast paths and memory, one at a time".

One switch turns them all off: `FastPaths(enabled=False)` (`PPOConfig.fast_paths=False`) runs PEFT's own
`set_adapter`, forward and adapter-path sampling — for debugging, or for a PEFT feature these paths don't know.
Layers a path can't mirror exactly (4-bit, DoRA, LoRA bias, mixed dtypes) keep PEFT's forward, and merging is
refused for them with the layer and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

HALF_STORED = "_rlhf_widgets_stored_from"
"""attribute of a frozen base linear that `FastPaths.store_frozen_in` keeps in half precision: its former dtype"""

MERGE_AUTO_MAX_BYTES = 64 << 20
"""`merge_for_generation=None` merges float32 adapted weights up to this size. Merging builds and holds a copy of
every adapted weight per rollout and saves the adapter's two small matmuls per generated token: that pays while
those calls are a large share of a small model's step, and stops paying — at the cost of the copy's memory — once
the base's own matmuls dominate (measured: docs/PERFORMANCE.md)."""


class _PlainLoRALinear(nn.Module):
    """`base(x) + s · (x Aᵀ) Bᵀ` for one plain LoRA adapter (no DoRA, no LoRA bias; eval mode: no dropout).

    When s is a power of two (the default lora_alpha = 2r, and rsLoRA at r = 4, 16, 64) the scale-and-add is one
    fused `addmm`: scaling by 2^k is exact, so it rounds as PEFT's `y + (·) * s` does; other scales take PEFT's
    own three steps. Holds the layer's own parameters: gradients land where PEFT's would. Forward hooks
    registered on the PEFT layer itself do not run while it is swapped out.
    """

    def __init__(self, layer: LoraLinear, adapter: str) -> None:
        super().__init__()
        self.base_layer = layer.get_base_layer()
        self.lora_A = layer.lora_A[adapter].weight
        self.lora_B = layer.lora_B[adapter].weight
        self._scaling, self._adapter = layer.scaling, adapter  # a plain dict: read per call, as PEFT does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        scale = self._scaling[self._adapter]
        down = torch.nn.functional.linear(x, self.lora_A)
        if abs(math.frexp(scale)[0]) != 0.5:  # not a power of two: PEFT's order of roundings
            return y + torch.nn.functional.linear(down, self.lora_B) * scale
        out = torch.addmm(y.reshape(-1, y.shape[-1]), down.reshape(-1, down.shape[-1]), self.lora_B.t(), alpha=scale)
        return out.view(y.shape)


def why_not_plain(layer: nn.Module, adapter: str) -> str | None:
    """Why `layer` can't run `adapter` as plain LoRA arithmetic (or as a merged weight); None when it can."""
    if not isinstance(layer, LoraLinear):  # bitsandbytes 4/8-bit, embeddings, convolutions
        return f"is a {type(layer).__module__}.{type(layer).__name__}, not a plain LoRA linear"
    if layer.lora_variant.get(adapter) is not None or layer.lora_bias.get(adapter):
        return "uses DoRA or a LoRA bias, which plain LoRA arithmetic (and a merged weight) leaves out"
    base = layer.get_base_layer()
    dtypes = {getattr(base, HALF_STORED, base.weight.dtype), layer.lora_A[adapter].weight.dtype,
              layer.lora_B[adapter].weight.dtype}
    if len(dtypes) > 1:
        return f"mixes dtypes {sorted(map(str, dtypes))} (PEFT casts between them)"
    return None


class FastPaths:
    """The fast paths of one multi-adapter `PeftModel` (see the module docstring).

    Args:
        peft: the model carrying the adapters.
        trainable: parameters that train, whichever adapter is active (PEFT's switch would freeze the inactive
            adapter's); `frozen`: adapter parameters that never train (an SFT reference adapter).
        merge_adapter: the adapter `merged()` samples from.
        enabled: False runs PEFT's own switch, forward and sampling everywhere.
        merge_for_generation: True / False / None = auto (on where exact and the copy takes ≤
            `MERGE_AUTO_MAX_BYTES`, off under TF32 matmuls on CUDA, which would round ΔW away).
    """

    def __init__(self, peft: PeftModel, trainable: Sequence[nn.Parameter], frozen: Sequence[nn.Parameter],
                 merge_adapter: str, enabled: bool = True, merge_for_generation: bool | None = None) -> None:
        self.peft, self.enabled, self.merge_adapter = peft, enabled, merge_adapter
        self._trainable, self._frozen = list(trainable), list(frozen)
        self._tuner_layers = [m for m in peft.modules() if isinstance(m, BaseTunerLayer)]
        self._merge_linears = self._adapted_linears(merge_adapter)
        self._plain: dict[str, list] = {}  # adapter -> [(parent, name, LoRA layer, _PlainLoRALinear)], built lazily
        self._active: str | None = None
        why_not = self._why_not_mergeable()
        if not enabled:
            if merge_for_generation:
                raise ValueError("merge_for_generation=True needs the fast paths on (fast_paths=True)")
            merge_for_generation = False
        elif merge_for_generation is None:
            device = next(peft.parameters()).device
            tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
            size = sum(layer.get_base_layer().weight.nbytes for *_, layer in self._merge_linears)
            merge_for_generation = why_not is None and not tf32 and size <= MERGE_AUTO_MAX_BYTES
        elif merge_for_generation and why_not is not None:
            raise ValueError(f"merge_for_generation=True: {why_not}")
        self.merge_for_generation = merge_for_generation

    def _adapted_linears(self, adapter: str) -> list[tuple[str, nn.Module, str, LoraLayer]]:
        """(qualified name, parent, attribute name, LoRA layer) of every layer that carries `adapter`."""
        return [(f"{qualname}.{name}".lstrip("."), parent, name, child)
                for qualname, parent in self.peft.named_modules() for name, child in parent.named_children()
                if isinstance(child, LoraLayer) and adapter in child.lora_A]

    def _why_not_mergeable(self) -> str | None:
        """Why sampling can't run exactly on merged weights (None: it can) — plain LoRA on float32 linears only."""
        if not self._merge_linears:
            return f"no layer carries the {self.merge_adapter!r} adapter"
        for qualname, _, _, layer in self._merge_linears:
            if isinstance(layer, LoraLinear) and layer.get_base_layer().weight.dtype != torch.float32:
                dtype = layer.get_base_layer().weight.dtype
                return f"needs float32 base weights (not 4-bit, bf16 or fp16); {qualname} holds {dtype}"
            why = why_not_plain(layer, self.merge_adapter)
            if why is not None:
                return f"{qualname} {why}"
        return None

    # ---------------------------------------------------------------- half-precision frozen base
    def store_frozen_in(self, dtype: torch.dtype) -> int:
        """Keep the frozen float32 base linears in `dtype` (bf16 / fp16) for a run whose every forward autocasts to
        it: autocast casts a float32 weight that does not require grad afresh at every use (~40 times per PPO
        update, every generated token included), and the cast gives the same `dtype` tensor each time, so storing
        it once computes the same numbers without the repeated casts and in half the memory (2 bytes a weight
        instead of 4; measured: docs/PERFORMANCE.md). Only where sampling does not merge
        (a merged `W + ΔW` needs the float32 `W`) and never for a weight shared with the input embeddings (a tied
        LM head), the LoRA adapters or anything that trains; the adapters are saved alone, so a saved policy is
        unaffected. Returns the number of linears converted (0 with the fast paths off or while merging)."""
        if not self.enabled or self.merge_for_generation:
            return 0
        embeddings = self.peft.get_input_embeddings()
        tied = {embeddings.weight.data_ptr()} if embeddings is not None else set()
        adapter_params = {id(p) for p in self._trainable + self._frozen}  # every adapter's A and B weights
        converted = 0
        for module in self.peft.modules():
            if (type(module) is not nn.Linear or id(module.weight) in adapter_params
                    or module.weight.dtype != torch.float32 or module.weight.data_ptr() in tied):
                continue
            setattr(module, HALF_STORED, module.weight.dtype)
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
            converted += 1
        if converted:
            # a loaded weight may be a view of the checkpoint's memory-mapped file, which any one of them keeps
            # mapped (with every page read so far resident): copy out the few left in float32 (embeddings, norms)
            # so the mapping of the converted ones goes
            for param in self.peft.parameters():
                if id(param) not in adapter_params and param.dtype == torch.float32:
                    param.data = param.data.clone()
        return converted

    # ---------------------------------------------------------------- adapter switching
    def activate(self, adapter: str | list[str]) -> None:
        """Make `adapter` (or several, whose deltas add up) the one forwards run, keeping exactly the trainable set
        trainable."""
        if adapter == self._active:
            return
        self._active = adapter
        if self.enabled:  # switch the cached adapter layers (each leaves only its active adapter requiring grad)
            for layer in self._tuner_layers:
                layer.set_adapter(adapter)
            self.peft.base_model.active_adapter = adapter
        else:
            self.peft.set_adapter(adapter)
        for p in self._trainable:
            p.requires_grad_(True)
        for p in self._frozen:
            p.requires_grad_(False)

    def forget_active(self) -> None:
        """Call after anything that re-enables adapters (PEFT's `disable_adapter` resets requires_grad flags):
        the next `activate` redoes the switch."""
        self._active = None

    # ---------------------------------------------------------------- plain-LoRA forwards
    @contextmanager
    def plain_lora(self, adapter: str | list[str]) -> Iterator[None]:
        """Run `adapter`'s plain LoRA linears as `_PlainLoRALinear` for the forwards inside; layers it can't cover
        keep PEFT's forward. Off in train mode, which is how forwards that build a graph run under activation
        checkpointing: a checkpointed layer recomputes its forward during backward, after the swap is undone."""
        if not self.enabled or self.peft.training or not isinstance(adapter, str):  # several adapters: PEFT's
            yield
            return
        if adapter not in self._plain:
            self._plain[adapter] = [(parent, name, layer, _PlainLoRALinear(layer, adapter))
                                    for _, parent, name, layer in self._adapted_linears(adapter)
                                    if why_not_plain(layer, adapter) is None]
        swapped = []
        try:
            for parent, name, layer, plain in self._plain[adapter]:
                if (getattr(parent, name) is not layer  # already swapped out (e.g. a forward inside generate)
                        or layer.disable_adapters or layer.merged or why_not_plain(layer, adapter) is not None):
                    continue
                swapped.append((parent, name, layer, plain))  # listed before changed: restorable
                setattr(parent, name, plain)
            yield
        finally:
            for parent, name, layer, plain in swapped:
                if getattr(parent, name) is plain:
                    setattr(parent, name, layer)

    # ---------------------------------------------------------------- merged sampling
    @contextmanager
    def merged(self) -> Iterator[None]:
        """Sample from merged weights when `merge_for_generation`: each adapted linear is swapped out of its parent
        for its base layer holding a fresh `W + ΔW` (the base tensor is never written, so the reference and the
        value trunk stay bit-exact). In float32 the logits match the adapter path to rounding."""
        if not self.merge_for_generation:
            yield
            return
        swapped = []
        try:
            with torch.no_grad():
                for _, parent, name, layer in self._merge_linears:
                    if getattr(parent, name) is not layer:  # swapped out by another context: leave it be
                        continue
                    base = layer.get_base_layer()
                    merged = nn.Parameter(base.weight + layer.get_delta_weight(self.merge_adapter), requires_grad=False)
                    swapped.append((parent, name, layer, base, base.weight))  # listed before changed: restorable
                    base.weight = merged
                    setattr(parent, name, base)
            yield
        finally:
            for parent, name, layer, base, original in swapped:
                base.weight = original
                if getattr(parent, name) is base:
                    setattr(parent, name, layer)
