"""Where PPO's roles live: policy, reference and value (the reward is a separate reward function).

`SharedBackbone` — the memory-lean default: ONE base model (optionally 4-bit) with LoRA adapters.
    policy    = adapter "policy"                     (trainable)
    reference = the same model with adapters disabled (`with peft.disable_adapter()`). An SFT model saved as a
                LoRA adapter is merged into the base first; on a quantized base, where it cannot be, the SFT
                adapter stays as a frozen "reference" adapter, the policy starts as a copy of it, and the value
                network runs on it too (adapters "reference" + "value"), so the critic always sees the SFT model
    value     = adapter "value" + a scalar head on the last hidden state (trainable). The value adapter
                may sit on the top `value_layers` decoder layers only (PPOConfig.value_layers_fraction, by
                default the top half): below them the value network is the frozen base, so that "trunk" is
                computed once per rollout (`value_trunk`) and every value forward/backward of the PPO epochs
                runs the top layers alone. Whether the split forward equals the full one is checked on the
                model itself when the backbone is built (a stack whose embedding adds positions to
                `inputs_embeds`, as GPT-2's does, fails it); where it does not, the value adapter covers every
                layer and a warning says so.
    The PEFT fast paths (adapter switching, plain-LoRA forwards, merged sampling) live in `fastpaths`.
`SeparateModels` — full trainable policy, a frozen reference copy, a separate value network. Simple and
    exact, at ~3x the memory.

Both expose the same calls, so the trainer does not know which one it drives. All forwards take explicit
position ids derived from the attention mask (left padding), and the models stay in eval mode (dropout off)
even while training — except, with activation checkpointing, during forwards that build a graph (HF
checkpoints only in train mode; PPO's adapters have no dropout). `logits_to_keep=n` computes the LM head on the
last n positions only (the response), which saves a (batch × prompt × vocab) tensor per forward.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import PreTrainedModel

from rlhf_widgets.runtime.config import ModelConfig, as_model_config
from rlhf_widgets.runtime.models import decoder_layout, lora_config
from rlhf_widgets.runtime.precision import Float32Linear
from rlhf_widgets.stages.ppo.fastpaths import FastPaths

POLICY, VALUE, REFERENCE = "policy", "value", "reference"


def ppo_lora(settings: ModelConfig) -> LoraConfig:
    """PPO's adapters: the LoRA rank, alpha and targets of `settings`, with dropout 0 — the rollout's and the
    update's forwards must compute the same function."""
    if settings.lora_dropout:
        warnings.warn(f"ModelConfig.lora_dropout={settings.lora_dropout} is not used for PPO's adapters: they run "
                      "without dropout, so the rollout's log-probs and the update's describe the same policy",
                      stacklevel=3)
    lora = lora_config(as_model_config(settings, use_peft=True))
    lora.lora_dropout = 0.0
    return lora


def _value_head(hidden_size: int, device: torch.device) -> nn.Linear:
    head = Float32Linear(hidden_size, 1, device=device, dtype=torch.float32)  # float32 even under autocast
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
    """Let a decoder stack run only `layers[layers]`, and skip its final norm unless `final_norm`: its forward then
    maps the hidden state entering the first of those layers (passed as `inputs_embeds`) to the one leaving the
    last — mask and rotary positions are built as usual. A config's per-layer `layer_types` (sliding / full
    attention, indexed by position inside the forward) is sliced alongside, so each layer keeps its own type."""
    layers_attr, norm_attr = decoder_layout(stack)
    all_layers, norm = getattr(stack, layers_attr), getattr(stack, norm_attr)
    config = getattr(stack, "config", None)
    layer_types = getattr(config, "layer_types", None)
    setattr(stack, layers_attr, nn.ModuleList(list(all_layers)[layers]))
    if layer_types is not None:
        config.layer_types = list(layer_types)[layers]
    if not final_norm:
        setattr(stack, norm_attr, nn.Identity())
    try:
        yield
    finally:
        setattr(stack, layers_attr, all_layers)
        setattr(stack, norm_attr, norm)
        if layer_types is not None:
            config.layer_types = layer_types


@torch.no_grad()
def split_forward_error(stack: nn.Module, start: int, vocab_size: int, tokens: int = 12) -> float:
    """Largest |full − split| of the stack's last hidden state on a probe batch (left padding included), where
    "split" runs layers [0, start) and then [start, …) from that hidden state, as the value network does."""
    device = next(stack.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, tokens), generator=generator).to(device)
    mask = torch.ones_like(ids)
    mask[1, : tokens // 3] = 0  # a left-padded row
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"attention_mask": mask, "position_ids": position_ids, "use_cache": False}
    full = stack(input_ids=ids, **inputs).last_hidden_state
    with _run_layers(stack, slice(0, start), final_norm=False):
        trunk = stack(input_ids=ids, **inputs).last_hidden_state
    with _run_layers(stack, slice(start, None), final_norm=True):
        split = stack(inputs_embeds=trunk, **inputs).last_hidden_state
    real = mask.bool()
    return (full[real].float() - split[real].float()).abs().max().item()


def _on_layers(lora: LoraConfig, stack: nn.Module, layers: range) -> LoraConfig:
    """`lora` restricted to some decoder layers (PEFT's `layers_to_transform` needs explicit module names)."""
    targets = lora.target_modules
    blocks = getattr(stack, decoder_layout(stack)[0])
    if targets == "all-linear":  # the linear layers of a decoder block (PEFT's wrappers hold the original)
        names = [n.removesuffix(".base_layer") for n, m in blocks[0].named_modules()
                 if isinstance(m, nn.Linear) and "lora_" not in n]
        targets = sorted({n.rsplit(".", 1)[-1] for n in names})
    elif isinstance(targets, str):
        raise ValueError(f"value_layers_fraction < 1 cannot restrict lora_target_modules={targets!r} (a regex) to "
                         "some layers; give ModelConfig.lora_target_modules as a list of module names, or set "
                         "value_layers_fraction=1.0")
    return dataclasses.replace(lora, target_modules=list(targets), layers_to_transform=list(layers))


class SharedBackbone(nn.Module):
    """One base model with "policy" and "value" LoRA adapters (see module docstring).

    Args:
        base: the SFT model (a plain model, or a `PeftModel` when the SFT model is an adapter).
        lora: the adapters' LoRA config (rank, alpha, targets from `ModelConfig`; dropout 0).
        activation_checkpointing: recompute activations in backward.
        value_layers: how many of the top decoder layers carry the value adapter (None = all of them).
        fast_paths, merge_for_generation: see `fastpaths.FastPaths`.
        autocast_dtype: the half precision every forward will autocast to (None: float32, or forwards not all
            autocast): the frozen base linears are then stored in it (`FastPaths.store_frozen_in`).
    """

    def __init__(self, base: PreTrainedModel | PeftModel, lora: LoraConfig,
                 activation_checkpointing: bool = False, value_layers: int | None = None,
                 fast_paths: bool = True, merge_for_generation: bool | None = None,
                 autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        # the decoder stack without the LM head (PEFT wraps the model in place: it stays this module)
        self._stack = stack = base.get_base_model().base_model if isinstance(base, PeftModel) else base.base_model
        n_layers = len(getattr(stack, decoder_layout(stack)[0]))
        if value_layers is not None and not 0 < value_layers <= n_layers:
            raise ValueError(f"SharedBackbone: value_layers={value_layers} must be in 1..{n_layers} (the model's "
                             "decoder layers)")
        self.value_start = 0 if value_layers is None else n_layers - value_layers
        if self.value_start:
            vocab = (base.get_base_model() if isinstance(base, PeftModel) else base).config.vocab_size
            error = split_forward_error(stack, self.value_start, vocab)
            if not error <= 1e-3:
                warnings.warn(f"{type(stack).__name__}: the value network's split forward (layers below "
                              f"{self.value_start} computed once, the top ones per update) differs from the full "
                              f"forward by {error:.3g}"
                              " on this model, so the value adapter covers every layer (value_layers_fraction=1.0; "
                              "exact, at the full value network's cost)", stacklevel=3)
                self.value_start = 0
        value_lora = lora if self.value_start == 0 else _on_layers(lora, stack, range(self.value_start, n_layers))
        if isinstance(base, PeftModel):  # a quantized SFT adapter: the policy's start, the reference, the critic's base
            sft_adapter = base.active_adapter
            sft_config = dataclasses.replace(base.peft_config[sft_adapter], lora_dropout=0.0)
            sft_state = {k: v.clone() for k, v in base.state_dict().items() if f".{sft_adapter}." in k}
            base.add_adapter(REFERENCE, sft_config)
            base.add_adapter(POLICY, sft_config)
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
            self.peft.get_base_model().activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        # the critic sees the SFT model: with an SFT reference adapter, the value adapter runs on top of it
        self.value_adapters: str | list[str] = [REFERENCE, VALUE] if self.has_reference_adapter else VALUE
        self.peft.eval()
        device = next(self.peft.parameters()).device
        self.value_head = _value_head(self.peft.get_base_model().config.hidden_size, device)
        # what PPO changes, by state-dict name — held here, so reading or restoring it does not depend on which
        # layers a fast path has swapped into the module tree at that moment
        self._trainable_named = {n: p for n, p in self.peft.named_parameters()
                                 if f".{POLICY}." in n or f".{VALUE}." in n}
        self._policy_params = [p for n, p in self._trainable_named.items() if f".{POLICY}." in n]
        self._value_params = [p for n, p in self._trainable_named.items() if f".{VALUE}." in n]
        frozen = [p for n, p in self.peft.named_parameters() if f".{REFERENCE}." in n]
        for p in self.peft.parameters():
            p.requires_grad_(False)
        self.fast = FastPaths(self.peft, self._policy_params + self._value_params, frozen, merge_adapter=POLICY,
                              enabled=fast_paths, merge_for_generation=merge_for_generation)
        if autocast_dtype is not None:
            self.fast.store_frozen_in(autocast_dtype)
        self._value_params += list(self.value_head.parameters())
        self.fast.activate(POLICY)

    @property
    def sampling_model(self) -> nn.Module:
        """The model whose `generate` samples the policy (its generation_config is the one sampling uses)."""
        return self.peft

    @property
    def merge_for_generation(self) -> bool:
        """Whether sampling runs on merged weights (see `FastPaths`)."""
        return self.fast.merge_for_generation

    @property
    def policy_parameters(self) -> list[nn.Parameter]:
        return self._policy_params

    @property
    def value_parameters(self) -> list[nn.Parameter]:
        return self._value_params

    def generate(self, **kwargs) -> torch.Tensor:
        self.fast.activate(POLICY)
        with self.fast.merged():
            return self.peft.generate(**kwargs)

    def _graph_mode(self):
        """Train mode while a graph is built with checkpointing on (HF checkpoints only then), else a no-op."""
        if not (self.checkpointing and torch.is_grad_enabled()):
            return nullcontext()
        return _TrainMode(self.peft)

    def policy_logits(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0) -> torch.Tensor:
        self.fast.activate(POLICY)
        with self._graph_mode(), self.fast.plain_lora(POLICY):
            return self.peft(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False, logits_to_keep=logits_to_keep).logits

    @torch.no_grad()
    def reference_logits(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0,
                         return_trunk: bool = False):
        """Reference logits; with `return_trunk`, `(logits, value_trunk(...))` — read off the same forward (the
        reference's lower layers are exactly the value network's trunk)."""
        if self.has_reference_adapter:
            self.fast.activate(REFERENCE)
            ctx = self.fast.plain_lora(REFERENCE)
        else:
            ctx = self.peft.disable_adapter()
        captured: list[torch.Tensor] = []
        hook = None
        if return_trunk and self.value_start:  # below value_start the value network is exactly the reference
            blocks = getattr(self._stack, decoder_layout(self._stack)[0])
            hook = blocks[self.value_start - 1].register_forward_hook(
                lambda _module, _args, output: captured.append(output[0] if isinstance(output, tuple) else output))
        try:
            with ctx:
                logits = self.peft(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False, logits_to_keep=logits_to_keep).logits
        finally:
            if hook is not None:
                hook.remove()
        self.fast.forget_active()  # re-enabling adapters resets requires_grad flags: the next activate redoes ours
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
        self.fast.activate(self.value_adapters)  # no value LoRA below value_start: the base (+ an SFT adapter)
        stack = self._stack
        with _run_layers(stack, slice(0, self.value_start), final_norm=False):
            trunk = stack(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        return trunk

    def values(self, input_ids, attention_mask, position_ids, trunk: torch.Tensor | None = None) -> torch.Tensor:
        """V(s) at every position, (B, T). `trunk` (from `value_trunk`) skips the frozen lower layers."""
        if self.value_start and trunk is None:
            trunk = self.value_trunk(input_ids, attention_mask, position_ids)
        self.fast.activate(self.value_adapters)
        stack = self._stack
        with self._graph_mode(), self.fast.plain_lora(self.value_adapters):
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

    def save_policy(self, path: str | Path) -> Path:
        """Save the policy adapter (PEFT format, recording its base) into `path`; `load_causal_lm(path)` loads it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        try:  # PEFT writes a non-default adapter into a sub-folder named after it
            self.peft.save_pretrained(staging, selected_adapters=[POLICY])
            if path.exists():
                shutil.rmtree(path)
            (staging / POLICY).rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path


class SeparateModels(nn.Module):
    """Full policy, frozen reference copy, separate value network."""

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

    @property
    def sampling_model(self) -> nn.Module:
        """The model whose `generate` samples the policy."""
        return self.policy

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

    def save_policy(self, path: str | Path) -> Path:
        """Save the full policy into `path`; `load_causal_lm(path)` loads it."""
        self.policy.save_pretrained(path)
        return Path(path)
