"""PPOConfig: every PPO-RLHF knob in one place, each with the reference default.

Defaults follow "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024) and
OpenAI's lm-human-preferences, adjusted where noted for the tiny sandbox (learning rate, batch).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class PPOConfig:
    """PPO with a KL penalty against the reference (SFT) policy."""

    output_dir: str = "runs/ppo"
    """where metrics, samples and checkpoints go"""
    seed: int = 0
    """seed for prompt order, sampling and initialisation"""
    num_updates: int = 60
    """PPO updates (rollout → score → GAE → epochs of minibatch steps) to run"""
    batch_size: int = 32
    """rollouts (prompt, response) per update, per process"""
    mini_batch_size: int = 16
    """rollouts per optimizer step; batch_size must be a multiple"""
    micro_batch_size: int | None = None
    """rollouts per forward/backward inside a minibatch; gradients accumulate to one step (less memory,
    same update up to per-micro-batch loss averaging). None = auto: on a GPU, and in full mode, the whole
    minibatch; on CPU in shared-base mode as many rollouts as keep one forward's saved activations under
    ~256 MiB (estimated from the model shape and sequence length) — the whole minibatch for the sandbox
    model, 4 of 16 for a 100M-param Llama, where CPU matmuls are as fast at 4 rows as at 16 and the peak
    memory drops by ~1.2 GB"""
    ppo_epochs: int = 4
    """passes over each batch of rollouts"""
    learning_rate: float = 3e-4
    """AdamW learning rate for the policy and value adapters and the value head"""
    max_grad_norm: float = 1.0
    """gradient-norm clip per optimizer step (0 = off)"""
    max_new_tokens: int = 48
    """response length limit in tokens; longer responses are truncated and get the missing-EOS penalty"""
    temperature: float = 1.0
    """sampling temperature; log-probs are always computed from logits / temperature"""
    kl_estimator: str = "k1"
    """per-token KL estimate in the reward: "k1" (log ratio, unbiased) or "k3" (non-negative, low variance)"""
    kl_coef: float = 0.05
    """β, the KL penalty coefficient (the initial value when adaptive_kl)"""
    adaptive_kl: bool = False
    """adapt β to reach kl_target (Ziegler et al. 2019) instead of keeping it fixed"""
    kl_target: float = 6.0
    """target KL (nats per sequence) of the adaptive controller"""
    kl_horizon: int = 10000
    """horizon (episodes) of the adaptive controller"""
    gamma: float = 1.0
    """discount factor"""
    lam: float = 0.95
    """GAE λ"""
    cliprange: float = 0.2
    """policy ratio clip ε"""
    cliprange_value: float = 0.2
    """value clip around the rollout values (0 = no value clipping)"""
    vf_coef: float = 0.1
    """value loss coefficient"""
    whiten_advantages: bool = True
    """normalise advantages to mean 0 / std 1 per batch"""
    whiten_rewards: bool = False
    """normalise the KL-shaped rewards per batch (off in the reference implementations by default)"""
    missing_eos_penalty: float = 1.0
    """subtracted from the score of a response that hit max_new_tokens without EOS (0 = off)"""
    lora_r: int = 16
    """LoRA rank of the policy and value adapters (shared-base mode)"""
    lora_alpha: int = 32
    """LoRA alpha"""
    value_layers_fraction: float = 0.5
    """shared-base mode: the share of the top decoder layers that carry the value adapter (rounded up). Below
    them the value network is the frozen base, computed once per rollout (read off the reference forward), so
    each value forward/backward of the PPO epochs runs only the top layers: about half the value network's
    time and activation memory (135M benchmark: 0.67x of TRL's time instead of ~0.85x). 1.0 = the value
    adapter on every layer. On the sandbox both give the same gold score and KL (40-update runs, 4 seeds /
    thread counts each); with an earlier, weaker reward model (one labeled pair per prompt) one run at 0.5 went
    unstable in its last updates (KL 5 -> 13-40 nats) — if KL climbs late, try 1.0"""
    shared_base: bool = True
    """one base model for policy (adapter), reference (adapters off) and value (adapter + head);
    False = separate full models (plain mode)"""
    load_in_4bit: bool = False
    """quantize the shared base to 4-bit nf4 (needs shared_base)"""
    activation_checkpointing: bool | None = None
    """recompute the base model's activations in the backward pass (much less memory, ~30% more
    compute); None = on with a 4-bit base (large models), off otherwise (shared-base mode)"""
    merge_for_generation: bool | None = None
    """shared-base mode: sample from merged weights (W + the policy's LoRA delta, in a transient copy; the
    base tensors are never written) instead of running the adapter beside every linear at each generated
    token (sandbox generation ~25% faster). True needs plain LoRA (no DoRA, no LoRA bias) on float32 linears —
    not 4-bit, bf16 or fp16 — where the logits match the adapter path to rounding, and says which layer stops
    it otherwise; None = on where True would be allowed and the adapted weights take <= 64 MiB (at 135M params
    it saved no time and added the copy, +200 MB, to peak memory), and off under TF32 matmuls on CUDA"""
    rollout_logprobs: str = "generate"
    """where the rollout's policy log-probs come from: "generate" (recorded while sampling, as TRL's PPO did;
    saves one policy forward per update) or "forward" (a separate no-cache forward over the sampled batch,
    bit-for-bit the computation the training forwards repeat)"""
    rollout_batch_size: int = 32
    """rollouts per no-grad forward when computing log-probs and values"""
    sample_every: int = 5
    """log a table of sample outputs every this many updates (0 = never)"""
    samples_to_log: int = 4
    """rows in each sample table"""
    save_every: int = 0
    """checkpoint every this many updates (0 = only at the end)"""
    max_ratio: float = 10.0
    """safety rail: stop when the mean policy ratio leaves [1/max_ratio, max_ratio]"""
    min_kl: float = -1.0
    """safety rail: stop when the mean k1 KL (nats/sequence) falls below this (a negative KL means the
    estimate or the reference is wrong)"""

    def __post_init__(self) -> None:
        checks = {
            "num_updates": self.num_updates > 0,
            "batch_size": self.batch_size > 0,
            "mini_batch_size": 0 < self.mini_batch_size <= self.batch_size
            and self.batch_size % self.mini_batch_size == 0,
            "micro_batch_size": self.micro_batch_size is None
            or (0 < self.micro_batch_size <= self.mini_batch_size
                and self.mini_batch_size % self.micro_batch_size == 0),
            "ppo_epochs": self.ppo_epochs > 0,
            "learning_rate": self.learning_rate > 0 and math.isfinite(self.learning_rate),
            "max_new_tokens": self.max_new_tokens > 0,
            "temperature": self.temperature > 0,
            "kl_estimator": self.kl_estimator in ("k1", "k3"),
            "rollout_logprobs": self.rollout_logprobs in ("generate", "forward"),
            "kl_coef": self.kl_coef >= 0,
            "gamma": 0 < self.gamma <= 1,
            "lam": 0 <= self.lam <= 1,
            "cliprange": self.cliprange > 0,
            "cliprange_value": self.cliprange_value >= 0,
            "load_in_4bit": self.shared_base or not self.load_in_4bit,
            "max_ratio": self.max_ratio > 1,
            "value_layers_fraction": 0 < self.value_layers_fraction <= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            hint = {
                "mini_batch_size": f"must divide batch_size={self.batch_size}",
                "micro_batch_size": f"must divide mini_batch_size={self.mini_batch_size}",
                "kl_estimator": "must be 'k1' or 'k3'",
                "rollout_logprobs": "must be 'generate' or 'forward'",
                "temperature": "must be > 0 (log-probs divide by it)",
                "value_layers_fraction": "must be in (0, 1]",
                "load_in_4bit": "4-bit needs shared_base=True (LoRA adapters on a quantized base)",
            }.get(name, "out of range")
            raise ValueError(f"PPOConfig.{name}={getattr(self, name)!r}: {hint}")

    @property
    def use_activation_checkpointing(self) -> bool:
        return self.load_in_4bit if self.activation_checkpointing is None else self.activation_checkpointing

    def value_layers(self, n_layers: int) -> int | None:
        """Decoder layers (from the top) that carry the value adapter; None = all."""
        k = math.ceil(self.value_layers_fraction * n_layers - 1e-9)
        return None if k >= n_layers else max(k, 1)

    @property
    def num_minibatches(self) -> int:
        return self.batch_size // self.mini_batch_size

    def to_dict(self) -> dict:
        return asdict(self)
