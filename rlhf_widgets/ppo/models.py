"""Where PPO's four roles live: policy, reference, value and (optionally) reward.

`SharedBackbone` — the memory-lean default: ONE base model (optionally 4-bit) with LoRA adapters.
    policy    = adapter "policy"                     (trainable)
    reference = the same model with adapters disabled (`with peft.disable_adapter()`), or a frozen
                copy of the SFT adapter ("reference") when the SFT model itself is an adapter
    value     = adapter "value" + a scalar head on the last hidden state (trainable). The value adapter
                may sit on the top `value_layers` decoder layers only (PPOConfig.value_layers_fraction, by
                default 0.5: the top half): below them the value network is the frozen base, so that "trunk"
                is computed once per rollout (`value_trunk`) and every value forward/backward of the PPO
                epochs runs the top layers alone — at half the layers, about half the value network's cost
                and memory.
    Sampling may run on merged weights (`merge_for_generation`, on by default for small float32 bases): a
    transient `W + ΔW` per adapted linear, swapped in for the rollout only. The other forwards of an adapter
    (policy, value, an SFT reference adapter) swap each plain LoRA linear for `_PlainLoRALinear`: the same
    arithmetic as PEFT's forward, without its per-call Python — about a quarter of a sandbox policy forward.
`SeparateModels` — plain mode: full trainable policy, a frozen reference copy, a separate value
    network. Simple and exact, at ~3x the memory.

Both expose the same calls, so the trainer does not know which one it drives. All forwards take
explicit position ids derived from the attention mask (left padding), and the models stay in eval
mode (dropout off) even while training — except, with activation checkpointing, during forwards
that build a graph (HF checkpoints only in train mode; Llama and our LoRA adapters have no dropout,
so train mode changes nothing else). `logits_to_keep=n` computes the LM head on the last n
positions only (the response), which saves a (batch × prompt × vocab) tensor per forward.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager, nullcontext

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

POLICY, VALUE, REFERENCE = "policy", "value", "reference"
MERGE_AUTO_MAX_BYTES = 64 << 20  # merge_for_generation=None merges float32 adapted weights up to this size


def _value_head(hidden_size: int, device: torch.device) -> nn.Linear:
    head = nn.Linear(hidden_size, 1, device=device, dtype=torch.float32)
    nn.init.zeros_(head.weight)  # V ≡ 0 at the start; the first updates fit it to the returns
    nn.init.zeros_(head.bias)
    return head


class _TrainMode:
    """Context manager: `module.train()` inside, back to `eval()` after."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.module.train()

    def __exit__(self, *exc: object) -> None:
        self.module.eval()


@contextmanager
def _run_layers(stack: nn.Module, layers: slice, final_norm: bool):
    """Let a decoder stack (`model.model` of a Llama-style causal LM) run only `layers[layers]`, and skip its
    final norm unless `final_norm`: its forward then maps the hidden state entering the first of those layers
    (passed as `inputs_embeds`) to the one leaving the last — mask and rotary positions are built as usual."""
    all_layers, norm = stack.layers, stack.norm
    stack.layers = nn.ModuleList(list(all_layers)[layers])
    if not final_norm:
        stack.norm = nn.Identity()
    try:
        yield
    finally:
        stack.layers, stack.norm = all_layers, norm


def _on_layers(lora: LoraConfig, stack: nn.Module, layers: range) -> LoraConfig:
    """`lora` restricted to some decoder layers (PEFT's `layers_to_transform` needs explicit module names)."""
    targets = lora.target_modules
    if targets == "all-linear":  # the linear layers of a decoder block (PEFT's wrappers hold the original)
        names = [n.removesuffix(".base_layer") for n, m in stack.layers[0].named_modules()
                 if isinstance(m, nn.Linear) and "lora_" not in n]
        targets = sorted({n.rsplit(".", 1)[-1] for n in names})
    elif isinstance(targets, str):
        raise ValueError(f"value_layers: cannot restrict target_modules={targets!r} (a regex) to some layers; "
                         "give a list of module names, or value_layers=None")
    return dataclasses.replace(lora, target_modules=list(targets), layers_to_transform=list(layers))


class _PlainLoRALinear(nn.Module):
    """`base(x) + s · (x Aᵀ) Bᵀ` for one plain LoRA adapter (no DoRA, no LoRA bias; eval mode: no dropout): PEFT's
    `lora.Linear.forward`, without its per-call Python (adapter loop, dtype casts, dispatch through the
    lora_A / lora_B / dropout modules). When s is a power of two (the default lora_alpha = 2r, and rsLoRA at
    r = 4, 16, 64) the scale-and-add is one fused `addmm`: scaling by 2^k is exact, so it rounds as PEFT's
    `y + (·) * s` does; other scales take PEFT's own three steps. On the sandbox model a policy forward takes
    0.10 s instead of 0.13 s and its backward 0.12 s instead of 0.13 s, to the same logits and gradients
    (bit-identical on this CPU). Holds the layer's own parameters: gradients land where PEFT's would. Forward
    hooks registered on the PEFT layer itself do not run while it is swapped out."""

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


def _why_not_plain(layer: nn.Module, adapter: str) -> str | None:
    """Why `layer` can't run `adapter` as `_PlainLoRALinear` (or as a merged weight); None when it can."""
    if not isinstance(layer, LoraLinear):  # bitsandbytes 4/8-bit, embeddings, convolutions
        return f"is a {type(layer).__module__}.{type(layer).__name__}, not a plain LoRA linear"
    if layer.lora_variant.get(adapter) is not None or layer.lora_bias.get(adapter):
        return "uses DoRA or a LoRA bias, which plain LoRA arithmetic (and a merged weight) leaves out"
    dtypes = {layer.get_base_layer().weight.dtype, layer.lora_A[adapter].weight.dtype,
              layer.lora_B[adapter].weight.dtype}
    if len(dtypes) > 1:
        return f"mixes dtypes {sorted(map(str, dtypes))} (PEFT casts between them)"
    return None


class SharedBackbone(nn.Module):
    """One base model with "policy" and "value" LoRA adapters (see module docstring).

    `value_layers`: how many of the top decoder layers carry the value adapter (None = all of them).
    """

    def __init__(self, base: PreTrainedModel | PeftModel, lora: LoraConfig,
                 activation_checkpointing: bool = False, value_layers: int | None = None,
                 merge_for_generation: bool | None = None) -> None:
        super().__init__()
        # the decoder stack without the LM head (PEFT wraps the model in place: it stays this module)
        self._stack = stack = base.get_base_model().base_model if isinstance(base, PeftModel) else base.base_model
        n_layers = len(stack.layers)
        if value_layers is not None and not 0 < value_layers <= n_layers:
            raise ValueError(f"SharedBackbone: value_layers={value_layers} must be in 1..{n_layers} (the model's "
                             "decoder layers)")
        self.value_start = 0 if value_layers is None else n_layers - value_layers
        value_lora = lora if self.value_start == 0 else _on_layers(lora, stack, range(self.value_start, n_layers))
        if isinstance(base, PeftModel):  # the SFT model is itself an adapter: it becomes policy init + reference
            sft_adapter = base.active_adapter
            sft_state = {k: v.clone() for k, v in base.state_dict().items() if f".{sft_adapter}." in k}
            base.add_adapter(REFERENCE, base.peft_config[sft_adapter])
            base.add_adapter(POLICY, base.peft_config[sft_adapter])
            for name in (REFERENCE, POLICY):
                renamed = {k.replace(f".{sft_adapter}.", f".{name}."): v for k, v in sft_state.items()}
                base.load_state_dict(renamed, strict=False)
            base.delete_adapter(sft_adapter)
            base.add_adapter(VALUE, value_lora)
            self.peft, self.has_reference_adapter = base, True
        else:
            if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
                base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
            self.peft = get_peft_model(base, lora, adapter_name=POLICY)
            self.peft.add_adapter(VALUE, value_lora)
            self.has_reference_adapter = False
        self.checkpointing = activation_checkpointing
        if activation_checkpointing:
            self.peft.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.peft.eval()
        device = next(self.peft.parameters()).device
        self.value_head = _value_head(self.peft.get_base_model().config.hidden_size, device)
        # what PPO changes, by state-dict name — held here, so reading or restoring it does not depend on which
        # layers a forward (merged generation, plain LoRA) has swapped into the module tree at that moment
        self._trainable_named = {n: p for n, p in self.peft.named_parameters()
                                 if f".{POLICY}." in n or f".{VALUE}." in n}
        self._policy_params = [p for n, p in self._trainable_named.items() if f".{POLICY}." in n]
        self._value_params = [p for n, p in self._trainable_named.items() if f".{VALUE}." in n]
        self._value_params += list(self.value_head.parameters())
        self._frozen_adapter_params = [p for n, p in self.peft.named_parameters() if f".{REFERENCE}." in n]
        for p in self.peft.parameters():
            p.requires_grad_(False)
        self._tuner_layers = [m for m in self.peft.modules() if isinstance(m, BaseTunerLayer)]
        self._policy_linears = self._adapted_linears(POLICY)
        self._plain: dict[str, list] = {}  # adapter -> [(parent, name, LoRA layer, _PlainLoRALinear)], built lazily
        why_not = self._why_not_mergeable()
        if merge_for_generation is None:  # auto: where it is exact to rounding and the copy is cheap
            tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32  # would round ΔW away
            merge_for_generation = why_not is None and not tf32 and sum(
                layer.get_base_layer().weight.nbytes for *_, layer in self._policy_linears) <= MERGE_AUTO_MAX_BYTES
        elif merge_for_generation and why_not is not None:
            raise ValueError(f"merge_for_generation=True: {why_not}")
        self.merge_for_generation = merge_for_generation
        self._active: str | None = None
        self._activate(POLICY)

    def _adapted_linears(self, adapter: str) -> list[tuple[str, nn.Module, str, LoraLayer]]:
        """(qualified name, parent, attribute name, LoRA layer) of every layer that carries `adapter`."""
        return [(f"{qualname}.{name}".lstrip("."), parent, name, child)
                for qualname, parent in self.peft.named_modules() for name, child in parent.named_children()
                if isinstance(child, LoraLayer) and adapter in child.lora_A]

    def _why_not_mergeable(self) -> str | None:
        """Why sampling can't run exactly on merged weights (None: it can) — plain LoRA on float32 linears only."""
        if not self._policy_linears:
            return "no layer carries the policy adapter"
        for qualname, _, _, layer in self._policy_linears:
            if isinstance(layer, LoraLinear) and layer.get_base_layer().weight.dtype != torch.float32:
                dtype = layer.get_base_layer().weight.dtype
                return f"needs float32 base weights (not 4-bit, bf16 or fp16); {qualname} holds {dtype}"
            why = _why_not_plain(layer, POLICY)
            if why is not None:
                return f"{qualname} {why}"
        return None

    @contextmanager
    def _plain_lora(self, adapter: str):
        """Run `adapter`'s plain LoRA linears as `_PlainLoRALinear` (see there) for the forwards inside; layers
        it can't cover (4-bit, DoRA, mixed dtypes) keep PEFT's forward. Off in train mode, which is how forwards
        that build a graph run under activation checkpointing (`_graph_mode`): a checkpointed layer recomputes its
        forward during backward, after the swap is undone — and LoRA dropout would be live."""
        if self.peft.training:
            yield
            return
        if adapter not in self._plain:
            self._plain[adapter] = [(parent, name, layer, _PlainLoRALinear(layer, adapter))
                                    for _, parent, name, layer in self._adapted_linears(adapter)
                                    if _why_not_plain(layer, adapter) is None]
        swapped = []
        try:
            for parent, name, layer, plain in self._plain[adapter]:
                if (getattr(parent, name) is not layer  # already swapped out (e.g. a forward inside generate)
                        or layer.disable_adapters or layer.merged or _why_not_plain(layer, adapter) is not None):
                    continue
                swapped.append((parent, name, layer, plain))  # listed before changed: restorable
                setattr(parent, name, plain)
            yield
        finally:
            for parent, name, layer, plain in swapped:
                if getattr(parent, name) is plain:
                    setattr(parent, name, layer)

    def _activate(self, adapter: str) -> None:
        if adapter == self._active:
            return
        # What PeftModel.set_adapter does, minus its walks over every module and parameter (~5% of a sandbox
        # update, which switches adapters ~10 times): switch the cached adapter layers, then put back exactly our
        # trainable set (each layer's set_adapter leaves only the active adapter's weights requiring grad)
        self._active = adapter
        for layer in self._tuner_layers:
            layer.set_adapter(adapter)
        self.peft.base_model.active_adapter = adapter
        for p in self._policy_params + self._value_params:
            p.requires_grad_(True)
        for p in self._frozen_adapter_params:
            p.requires_grad_(False)

    @property
    def policy_parameters(self) -> list[nn.Parameter]:
        return self._policy_params

    @property
    def value_parameters(self) -> list[nn.Parameter]:
        return self._value_params

    def generate(self, **kwargs) -> torch.Tensor:
        self._activate(POLICY)
        with self._merged_policy() if self.merge_for_generation else nullcontext():
            return self.peft.generate(**kwargs)

    @contextmanager
    def _merged_policy(self):
        """Sample from merged weights: each policy-adapted linear is swapped out of its parent for its base layer
        holding a fresh `W + ΔW` (the base tensor is never written, so the reference and the value trunk stay
        bit-exact). In float32 the logits match the adapter path to rounding, and a generated token costs one
        matmul per linear instead of three plus PEFT's per-layer Python (~25% of the sandbox's generation
        time), for a transient copy of the adapted weights."""
        swapped = []
        try:
            with torch.no_grad():
                for _, parent, name, layer in self._policy_linears:
                    if getattr(parent, name) is not layer:  # swapped out by another context: leave it be
                        continue
                    base = layer.get_base_layer()
                    merged = nn.Parameter(base.weight + layer.get_delta_weight(POLICY), requires_grad=False)
                    swapped.append((parent, name, layer, base, base.weight))  # listed before changed: restorable
                    base.weight = merged
                    setattr(parent, name, base)
            yield
        finally:
            for parent, name, layer, base, original in swapped:
                base.weight = original
                if getattr(parent, name) is base:
                    setattr(parent, name, layer)

    def _graph_mode(self):
        """Train mode while a graph is built with checkpointing on (HF checkpoints only then), else a no-op."""
        if not (self.checkpointing and torch.is_grad_enabled()):
            return nullcontext()
        return _TrainMode(self.peft)

    def policy_logits(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0) -> torch.Tensor:
        self._activate(POLICY)
        with self._graph_mode(), self._plain_lora(POLICY):
            return self.peft(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False, logits_to_keep=logits_to_keep).logits

    @torch.no_grad()
    def reference_logits(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0,
                         return_trunk: bool = False):
        """Reference logits; with `return_trunk`, `(logits, value_trunk(...))` — read off the same forward
        when the reference is the plain base (its lower layers are exactly the value network's trunk)."""
        if self.has_reference_adapter:
            self._activate(REFERENCE)
            ctx = self._plain_lora(REFERENCE)
        else:
            ctx = self.peft.disable_adapter()
        captured: list[torch.Tensor] = []
        hook = None
        if return_trunk and self.value_start and not self.has_reference_adapter:
            hook = self._stack.layers[self.value_start - 1].register_forward_hook(
                lambda _module, _args, output: captured.append(output[0] if isinstance(output, tuple) else output))
        try:
            with ctx:
                logits = self.peft(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False, logits_to_keep=logits_to_keep).logits
        finally:
            if hook is not None:
                hook.remove()
        self._active = None  # re-enabling adapters resets requires_grad flags: the next _activate redoes ours
        if not return_trunk:
            return logits
        trunk = captured[0] if captured else self.value_trunk(input_ids, attention_mask, position_ids)
        return logits, trunk

    @torch.no_grad()
    def value_trunk(self, input_ids, attention_mask, position_ids) -> torch.Tensor | None:
        """The hidden state entering the first value-adapted layer (frozen base below it), or None when the
        value adapter covers every layer. Constant while PPO trains: compute it once per rollout."""
        if self.value_start == 0:
            return None
        self._activate(VALUE)  # no value LoRA below value_start: these layers are the plain base
        stack = self._stack
        with _run_layers(stack, slice(0, self.value_start), final_norm=False):
            trunk = stack(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        return trunk

    def values(self, input_ids, attention_mask, position_ids, trunk: torch.Tensor | None = None) -> torch.Tensor:
        """V(s) at every position, (B, T). `trunk` (from `value_trunk`) skips the frozen lower layers."""
        if self.value_start and trunk is None:
            trunk = self.value_trunk(input_ids, attention_mask, position_ids)
        self._activate(VALUE)
        stack = self._stack
        with self._graph_mode(), self._plain_lora(VALUE):
            if trunk is None:
                hidden = stack(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
            else:
                with _run_layers(stack, slice(self.value_start, None), final_norm=True):
                    hidden = stack(inputs_embeds=trunk, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False).last_hidden_state
        return self.value_head(hidden.float()).squeeze(-1)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Adapter + value-head weights: everything PPO changes (what checkpoints hold)."""
        state = {f"peft.{k}": p.detach() for k, p in self._trainable_named.items()}
        state.update({f"value_head.{k}": v for k, v in self.value_head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `trainable_state()`'s weights in place; a state for other adapters (another LoRA rank, target
        modules or value_layers_fraction) is refused, naming a weight it lacks or has extra, before any is written."""
        ours = {f"peft.{k}" for k in self._trainable_named}
        given = {k for k in state if k.startswith("peft.")}
        if given != ours:
            lacks, extra = sorted(ours - given), sorted(given - ours)
            raise ValueError(f"this trainable state does not fit the model's adapters: it lacks {len(lacks)} "
                             f"weight(s){' such as ' + lacks[0] if lacks else ''} and has {len(extra)} extra"
                             f"{' such as ' + extra[0] if extra else ''} — was it saved with other LoRA / value "
                             "settings?")
        for k, p in self._trainable_named.items():
            if state[f"peft.{k}"].shape != p.shape:
                raise ValueError(f"trainable state: {k} has shape {tuple(state[f'peft.{k}'].shape)}, the model's "
                                 f"{tuple(p.shape)} — was it saved with another LoRA rank?")
        with torch.no_grad():
            for k, p in self._trainable_named.items():
                p.copy_(state[f"peft.{k}"])
        self.value_head.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("value_head.")})

    def save_policy(self, path) -> None:
        """Save the policy adapter (PEFT format under `path/policy`) — reload with `load_causal_lm(path/'policy')`."""
        self.peft.save_pretrained(path, selected_adapters=[POLICY])


class SeparateModels(nn.Module):
    """Plain mode: full policy, frozen reference copy, separate value network."""

    def __init__(self, base: PreTrainedModel) -> None:
        super().__init__()
        self.policy = base.eval()
        self.reference = copy.deepcopy(base).eval().requires_grad_(False)
        self.value_body = copy.deepcopy(base.base_model).eval()
        self.value_head = _value_head(base.config.hidden_size, next(base.parameters()).device)

    @property
    def policy_parameters(self) -> list[nn.Parameter]:
        return list(self.policy.parameters())

    @property
    def value_parameters(self) -> list[nn.Parameter]:
        return list(self.value_body.parameters()) + list(self.value_head.parameters())

    def generate(self, **kwargs) -> torch.Tensor:
        return self.policy.generate(**kwargs)

    def policy_logits(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0) -> torch.Tensor:
        return self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False, logits_to_keep=logits_to_keep).logits

    @torch.no_grad()
    def reference_logits(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0,
                         return_trunk: bool = False):
        logits = self.reference(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False, logits_to_keep=logits_to_keep).logits
        return (logits, None) if return_trunk else logits

    def value_trunk(self, input_ids, attention_mask, position_ids) -> None:
        return None  # the whole value network trains

    def values(self, input_ids, attention_mask, position_ids, trunk: None = None) -> torch.Tensor:
        hidden = self.value_body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False).last_hidden_state
        return self.value_head(hidden.float()).squeeze(-1)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"policy.{k}": v for k, v in self.policy.state_dict().items()}
        state.update({f"value_body.{k}": v for k, v in self.value_body.state_dict().items()})
        state.update({f"value_head.{k}": v for k, v in self.value_head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, module in (("policy.", self.policy), ("value_body.", self.value_body),
                               ("value_head.", self.value_head)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def save_policy(self, path) -> None:
        self.policy.save_pretrained(path)
