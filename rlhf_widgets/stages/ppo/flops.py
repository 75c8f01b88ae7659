"""Model FLOPs of a PPO update, counted from the model's shape and the update's token counts (pure functions), and
the trainer's count of them (`FlopCounter`).

Counting convention (the one MFU figures use, applied to what the trainer actually runs):

- a matmul with an `in × out` weight costs 2·in·out FLOPs per token it is applied to (a multiply and an add);
  the model's matmul "parameters" are the decoder layers' linear weights (attention q/k/v/o, the MLP), the LM
  head's `hidden × vocab` and the LoRA adapters' `r·(in + out)` each. Not counted: embedding look-ups, norms,
  rotary, activations, softmax, the attention score matmuls (QKᵀ and AV: 4·seq·hidden per token and layer, a
  few % at PPO's short sequences), the value and reward heads (`hidden × 1`);
- a forward costs 2·params·tokens;
- a backward costs 2·params·tokens for the input gradients of every weight the gradient flows through, trained
  or frozen, plus 2·params·tokens for the weight gradients of the trained ones. So a trained weight costs 3× its
  forward (the usual 6·N·tokens) and a frozen weight on the gradient's path 2× — a LoRA policy on a frozen base
  still backpropagates through every base layer above its lowest adapter (with PPO's targets, "all-linear" on
  every layer, that is all of them) and through the LM head;
- activation checkpointing recomputes the checkpointed layers' forward once more in the backward;
- tokens are what is computed, padding included: a rollout of B sequences of P prompt (left-padded) + T response
  tokens runs B·(P + T) tokens through the decoder layers, B·(T + 1) through the LM head (`logits_to_keep`),
  and generating it runs B·P (prefill) + B·(T − 1) (one token per step, KV cache) through the layers and B·T
  through the LM head.

`ppo_update_flops` returns the count per phase, the same phases the trainer times (`time/…`), so a phase's
achieved FLOP/s is its FLOPs over its seconds. `FlopCounter` applies it to a trainer's updates: what stays fixed
through a run read off its models once, each update's token counts off its rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from rlhf_widgets.stages.ppo.backbone import POLICY, REFERENCE, VALUE, SharedBackbone

if TYPE_CHECKING:
    from rlhf_widgets.stages.ppo.config import PPOConfig
    from rlhf_widgets.stages.ppo.rollout import Rollout


@dataclass(frozen=True)
class ModelShape:
    """The matmul parameters of a decoder-only LM: what its FLOPs per token are made of."""

    num_layers: int
    layer_params: int
    """in·out summed over one decoder layer's linear weights (all layers alike)"""
    lm_head_params: int
    """hidden × vocab (computed whether or not it is tied to the embeddings)"""

    @property
    def params(self) -> int:
        """Every matmul parameter: the layers and the LM head."""
        return self.num_layers * self.layer_params + self.lm_head_params

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """A Llama-family config (Llama, Mistral, Qwen2, SmolLM: q/k/v/o attention with grouped KV heads, a gated
        MLP of gate/up/down, an untied or tied `hidden × vocab` LM head)."""
        hidden, layers = config.hidden_size, config.num_hidden_layers
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
        mlp = 3 * hidden * config.intermediate_size  # gate, up, down
        return cls(num_layers=layers, layer_params=attention + mlp, lm_head_params=hidden * config.vocab_size)

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelShape:
        """Read off a loaded causal LM (any architecture; PEFT-wrapped and 4-bit ones too): its linear layers'
        in·out, LoRA adapters excluded, the output embedding as the LM head, the rest split evenly over the
        decoder layers."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = base.get_output_embeddings()
        head_params = _in_out(head) if head is not None else 0
        total = sum(_in_out(m) for name, m in base.named_modules()
                    if "lora_" not in name and m is not head and _in_out(m))
        layers = base.config.num_hidden_layers
        return cls(num_layers=layers, layer_params=total // layers, lm_head_params=head_params)


def _in_out(module: nn.Module | None) -> int:
    """in·out of a linear layer (nn.Linear and its 4-bit / 8-bit subclasses: from the features, not the packed
    weight; GPT-2's Conv1D: from its weight), else 0."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0] * module.weight.shape[1]
    return 0


def lora_params(model: nn.Module, adapter: str) -> int:
    """The parameters of one LoRA adapter, all layers together — r·(in + out) per adapted weight — which is its
    matmul parameter count (an adapter's forward is x·A then ·B)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if f".{adapter}." in name and ("lora_A" in name or "lora_B" in name))


def forward(params: float, tokens: float) -> float:
    """A forward: 2·params·tokens."""
    return 2.0 * params * tokens


def forward_backward(trained: float, frozen: float, tokens: float, recompute: bool = False) -> float:
    """Forward + backward over `tokens`: 3× the forward for `trained` weights, 2× for `frozen` ones the gradient
    flows through (input gradients only); `recompute` (activation checkpointing) adds one more forward."""
    passes_trained, passes_frozen = (4, 3) if recompute else (3, 2)
    return 2.0 * tokens * (passes_trained * trained + passes_frozen * frozen)


PHASES = ("generation", "policy_forward", "reference_forward", "value_forward", "reward", "train_forward_backward")
"""The FLOP-carrying phases of an update (each also a `time/<phase>` metric); the optimizer step's FLOPs
(a few per trained parameter) are not counted."""


def ppo_update_flops(shape: ModelShape, *, batch: int, prompt_tokens: int, response_tokens: int,
                     num_ppo_epochs: int, shared_base: bool = True, policy_lora: int = 0, value_lora: int = 0,
                     reference_lora: int = 0, value_layers: int | None = None, merged_generation: bool = True,
                     policy_forward_in_rollout: bool = False, activation_checkpointing: bool = False,
                     reward_flops: float = 0.0, reference_passes: int = 1) -> dict[str, float]:
    """FLOPs of one update of our `PPOTrainer`, per phase (`PHASES`) and their `"total"`.

    Args:
        shape: the policy's `ModelShape` (policy, reference and value network share it).
        batch: B, rollouts in the update (on this process).
        prompt_tokens: P, the padded prompt length; response_tokens: T, the generated length (the longest
            response: every sequence is computed to it).
        shared_base: LoRA adapters on one frozen base (True) or full trained models (`SeparateModels`).
        policy_lora, value_lora, reference_lora: the adapters' parameter counts (`lora_params`); the value
            adapter's are on its `value_layers` only; a reference adapter is the kept SFT adapter of a 4-bit base
            (the reference and, under the value adapter, the value network run it; the policy adapter replaces it).
        value_layers: how many top layers the value network runs per forward (None: all; the rest is the trunk,
            read off the reference forward).
        merged_generation: sampling runs on merged weights (no adapter matmuls).
        policy_forward_in_rollout: the old log-probs come from a policy forward (`rollout_logprobs="forward"`)
            rather than from sampling.
        activation_checkpointing: the trained forwards are recomputed in the backward.
        reward_flops: the reward function's FLOPs for this batch, counted by the caller (0 when unknown).
        reference_passes: reference forwards of the batch — 2 with the prompt-swap check (`PPOConfig.
            prompt_swap_check`: the answers again after other prompts, of the same padded shape).
    """
    L, layer, head = shape.num_layers, shape.layer_params, shape.lm_head_params
    seq_tokens = batch * (prompt_tokens + response_tokens)  # decoder layers, each rollout/training forward
    head_tokens = batch * (response_tokens + 1)  # LM head: logits_to_keep = T + 1
    value_depth = L if value_layers is None or not shared_base else value_layers
    if not shared_base:
        policy_lora = value_lora = reference_lora = 0
    gen_lora = 0 if merged_generation else policy_lora
    flops = {
        "generation": forward(L * layer + gen_lora, batch * (prompt_tokens + response_tokens - 1))
        + forward(head, batch * response_tokens),
        "policy_forward": (forward(L * layer + policy_lora, seq_tokens) + forward(head, head_tokens)
                           if policy_forward_in_rollout else 0.0),
        "reference_forward": reference_passes * (forward(L * layer + reference_lora, seq_tokens)
                                                 + forward(head, head_tokens)),
        "value_forward": forward(value_depth * layer + value_lora + reference_lora * value_depth / L, seq_tokens),
        "reward": float(reward_flops),
    }
    ck = activation_checkpointing
    if shared_base:  # the frozen base on the gradient's path (the value's: + a reference adapter), adapters trained
        policy = (forward_backward(policy_lora, L * layer, seq_tokens, ck)
                  + forward_backward(0, head, head_tokens))
        value = forward_backward(value_lora, value_depth * layer + reference_lora * value_depth / L, seq_tokens, ck)
    else:  # every weight trained; the value network has no LM head
        policy = forward_backward(L * layer, 0, seq_tokens, ck) + forward_backward(head, 0, head_tokens)
        value = forward_backward(L * layer, 0, seq_tokens, ck)
    flops["train_forward_backward"] = num_ppo_epochs * (policy + value)
    flops["total"] = sum(flops[p] for p in PHASES)
    return flops


# ---------------------------------------------------------------- a trainer's count
class FlopCounter:
    """The model FLOPs of a `PPOTrainer`'s updates (`ppo_update_flops` of what it runs).

    Args:
        shape: the policy's `ModelShape`.
        backend: the trainer's `SharedBackbone` or `SeparateModels`; its adapters' sizes are read here, while the
            module tree is PEFT's own.
        reward: the trainer's reward function: a `RewardModel`'s FLOPs are counted from its shape and the tokens it
            scored (`reward_model_shape`), another function's are unknown and not counted.
        config: the trainer's `PPOConfig` (epochs, where the old log-probs come from).
        activation_checkpointing: whether the trained forwards are recomputed in the backward.
    """

    def __init__(self, shape: ModelShape, backend: nn.Module, reward, config: PPOConfig,
                 activation_checkpointing: bool) -> None:
        self.shape = shape
        self.backend = backend
        self.config = config
        self.activation_checkpointing = activation_checkpointing
        self.lora = ({name: lora_params(backend.peft, name) for name in (POLICY, VALUE, REFERENCE)}
                     if isinstance(backend, SharedBackbone) else {})
        """the adapters' matmul weights by role ({} for `SeparateModels`)"""
        self.reward_shape = reward_model_shape(reward)

    def count(self, rollout: Rollout, reward_tokens: int, reference_passes: int) -> dict[str, float]:
        """This process's model FLOPs of the update that made `rollout`, per phase: from the model's shape, the
        rollout's padded token counts, the adapters, the reference forwards (2 when the prompt-swap check ran) and
        the `reward_tokens` a `RewardModel` scored."""
        backend = self.backend
        shared = isinstance(backend, SharedBackbone)
        value_layers = None
        if shared and backend.value_start:
            value_layers = self.shape.num_layers - backend.value_start
        lora = self.lora
        reward = 0.0 if self.reward_shape is None else 2.0 * self.reward_shape.params * reward_tokens
        return ppo_update_flops(
            self.shape, batch=len(rollout), prompt_tokens=rollout.context_length,
            response_tokens=rollout.responses.shape[1], num_ppo_epochs=self.config.num_ppo_epochs,
            shared_base=shared, policy_lora=lora.get(POLICY, 0), value_lora=lora.get(VALUE, 0),
            reference_lora=lora.get(REFERENCE, 0), value_layers=value_layers,
            merged_generation=not shared or backend.merge_for_generation,
            policy_forward_in_rollout=self.config.rollout_logprobs == "forward",
            activation_checkpointing=self.activation_checkpointing, reward_flops=reward,
            reference_passes=reference_passes)


def token_counts(rollout: Rollout) -> dict[str, int]:
    """A rollout's `batch` (rollouts), `prompt` (padded prompt tokens) and `response` (generated tokens)."""
    return {"batch": len(rollout), "prompt": rollout.context_length, "response": rollout.responses.shape[1]}


def reward_model_shape(reward) -> ModelShape | None:
    """The matmul shape of a `RewardModel`'s model (it counts the tokens it scores), else None: a reward function's
    FLOPs are unknown and not counted."""
    model = getattr(reward, "model", None)
    if not isinstance(getattr(reward, "tokens_scored", None), int) or not isinstance(model, nn.Module):
        return None
    try:
        return ModelShape.from_model(model)
    except (AttributeError, ZeroDivisionError):
        return None
