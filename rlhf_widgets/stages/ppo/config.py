"""PPOConfig: PPO's own knobs, each with the reference default.

Defaults follow "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024) and OpenAI's
lm-human-preferences, with a learning rate and batch sized for small models. Which model, LoRA rank / alpha /
targets and 4-bit come from `ModelConfig`, the one source of model settings. Names follow TRL's last PPO
where it had the concept (`kl_coef`, `cliprange`, `cliprange_value`, `vf_coef`, `gamma`, `lam`,
`num_ppo_epochs`, `missing_eos_penalty`, `whiten_rewards`, `kl_estimator`): the KL coefficient is `kl_coef`,
not DPO/GRPO's `beta`, because it is the β of a per-token KL penalty in the reward (and `objective/kl_coef` is
the metric PPO users know). The help texts double as `python -m rlhf_widgets ppo --help`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from rlhf_widgets.runtime.config import field_help
from rlhf_widgets.runtime.monitors import ALERT_KINDS, OVEROPTIMIZATION_KINDS
from rlhf_widgets.runtime.validation import check_fields

LR_SCHEDULES = ("constant", "linear", "cosine")
ON_ALERT = ("continue", "stop", "rollback")
"""What a reward-hacking alert does to a PPO run (`PPOConfig.on_alert`)."""


@dataclass
class PPOConfig:
    """PPO with a KL penalty against the reference (SFT) policy."""

    output_dir: str = field(default="runs/ppo", metadata=field_help(
        "Where metrics, checkpoints (checkpoint-N/, last/) and the final policy (final/) go."))
    seed: int = field(default=0, metadata=field_help("Seed for prompt order, sampling and initialisation."))
    num_updates: int = field(default=60, metadata=field_help(
        "PPO updates to run (rollout → score → GAE → epochs of minibatch steps)."))
    batch_size: int = field(default=32, metadata=field_help("Rollouts (prompt, response) per update, per process."))
    mini_batch_size: int = field(default=16, metadata=field_help(
        "Rollouts per optimizer step; must divide batch_size."))
    micro_batch_size: int | None = field(default=None, metadata=field_help(
        "Rollouts per forward/backward inside a minibatch; gradients accumulate to one step (less memory, the same "
        "update up to per-micro-batch loss averaging). None = auto: the whole minibatch on GPU and for separate "
        "models; on CPU with a shared base, as many as keep one forward's saved activations, estimated from the "
        "model shape, within 256 MiB (rlhf_widgets.stages.ppo.memory.CPU_ACTIVATION_BUDGET)."))
    num_ppo_epochs: int = field(default=4, metadata=field_help("Passes over each batch of rollouts."))
    learning_rate: float = field(default=3e-4, metadata=field_help(
        "AdamW learning rate of the policy and value adapters and the value head (the schedule's peak)."))
    lr_scheduler_type: str = field(default="constant", metadata=field_help(
        "Learning-rate schedule over num_updates, stepped once per update (transformers' schedules): 'constant', "
        "'linear' (to 0 at num_updates, as TRL's PPO and the N+ recipe) or 'cosine'. Saved in checkpoints; past "
        "num_updates the rate stays at the schedule's end value."))
    warmup_updates: int = field(default=0, metadata=field_help(
        "Updates of linear warm-up from 0 at the start of the schedule."))
    max_grad_norm: float = field(default=1.0, metadata=field_help("Gradient-norm clip per optimizer step (0 = off)."))
    max_new_tokens: int = field(default=48, metadata=field_help(
        "Response length limit in tokens; longer responses are cut and get the missing-EOS penalty."))
    temperature: float = field(default=1.0, metadata=field_help(
        "Sampling temperature; log-probs are always computed from logits / temperature."))
    kl_estimator: str = field(default="k1", metadata=field_help(
        "Per-token KL estimate in the reward: 'k1' (log ratio, unbiased) or 'k3' (non-negative, lower variance)."))
    kl_coef: float = field(default=0.05, metadata=field_help(
        "β, the KL penalty coefficient (the initial value when adaptive_kl)."))
    adaptive_kl: bool = field(default=False, metadata=field_help(
        "Adapt β to reach kl_target (Ziegler et al. 2019) instead of keeping it fixed."))
    kl_target: float = field(default=6.0, metadata=field_help(
        "Target KL (nats per sequence) of the adaptive controller."))
    kl_horizon: int = field(default=10000, metadata=field_help("Horizon (episodes) of the adaptive controller."))
    gamma: float = field(default=1.0, metadata=field_help("Discount factor."))
    lam: float = field(default=0.95, metadata=field_help("GAE λ."))
    cliprange: float = field(default=0.2, metadata=field_help("Policy ratio clip ε."))
    cliprange_value: float = field(default=0.2, metadata=field_help(
        "Value clip around the rollout values (0 = no value clipping)."))
    vf_coef: float = field(default=0.1, metadata=field_help("Value loss coefficient."))
    whiten_advantages: bool = field(default=True, metadata=field_help(
        "Normalise advantages to mean 0 / std 1 per batch."))
    whiten_rewards: bool = field(default=False, metadata=field_help(
        "Normalise the KL-shaped rewards per batch (off in the reference implementations)."))
    whiten_globally: bool = field(default=True, metadata=field_help(
        "With several processes, whiten with the mean and variance of all processes' batches together (the update "
        "then does not depend on how the batch is split); False = each process's own batch (TRL's PPO)."))
    missing_eos_penalty: float = field(default=1.0, metadata=field_help(
        "Subtracted from the score of a response that hit max_new_tokens without EOS (0 = off)."))
    shared_base: bool = field(default=True, metadata=field_help(
        "One base model for policy (LoRA adapter), reference (adapters off) and value (adapter + head); LoRA "
        "rank, alpha and targets come from ModelConfig, with dropout 0. False = separate full models (~3x memory; "
        "not with a 4-bit base)."))
    value_layers_fraction: float = field(default=0.5, metadata=field_help(
        "Shared base: the share of the top decoder layers that carry the value adapter (rounded up). Below them the "
        "value network is the frozen base, computed once per rollout, so each value forward/backward runs only the "
        "top layers. 1.0 = the value adapter on every layer."))
    activation_checkpointing: bool | None = field(default=None, metadata=field_help(
        "Recompute activations in the backward pass: much less memory for one more forward per backward, about "
        "4/3 the compute of a forward and backward (Chen et al. 2016); None = on with a 4-bit base, off otherwise "
        "(shared base)."))
    fast_paths: bool = field(default=True, metadata=field_help(
        "Fast paths with the same numbers as the library code they replace: on a shared base, PEFT's (cached "
        "adapter switching, plain-LoRA forwards, merged sampling); on CPU, attention's backward from the recomputed "
        "softmax instead of the flash kernel's (runtime.attention; forwards bit-identical). False runs PEFT's "
        "and sdpa's own everywhere."))
    merge_for_generation: bool | None = field(default=None, metadata=field_help(
        "Shared base: sample from merged weights (W + the policy's LoRA delta, a transient copy) instead of the "
        "adapter beside every linear: one matmul per generated token instead of three. True needs plain LoRA on "
        "float32 linears; None = on where allowed and the copy is small (adapted weights up to 64 MiB: "
        "rlhf_widgets.stages.ppo.fastpaths.MERGE_AUTO_MAX_BYTES), off under TF32 matmuls."))
    rollout_logprobs: str = field(default="generate", metadata=field_help(
        "Where the rollout's policy log-probs come from: 'generate' (recorded while sampling, saving one policy "
        "forward) or 'forward' (a separate no-cache forward over the sampled batch)."))
    rollout_batch_size: int = field(default=32, metadata=field_help(
        "Rollouts per no-grad forward when computing log-probs and values."))
    sample_every: int | None = field(default=None, metadata=field_help(
        "Log a table of sample outputs every this many updates (0 = never); None = sized to the run: about ten "
        "tables, at least one every 5 updates."))
    samples_to_log: int = field(default=4, metadata=field_help("Rows in each sample table."))
    save_every: int = field(default=0, metadata=field_help(
        "Checkpoint every this many updates (0 = only at the end, in last/)."))
    max_ratio: float = field(default=10.0, metadata=field_help(
        "Safety rail: stop when the mean policy ratio leaves [1/max_ratio, max_ratio]."))
    min_kl: float = field(default=-1.0, metadata=field_help(
        "Safety rail: stop when the mean KL (nats per sequence, all processes) falls below this. Always measured "
        "with k1 = log π − log π_ref, whatever kl_estimator: k1's mean over sampled tokens estimates KL ≥ 0, so a "
        "clearly negative one means the reference or the log-probs are wrong (k3 is ≥ 0 per token and could never "
        "show it)."))
    prompt_swap_check: bool = field(default=False, metadata=field_help(
        "Each update, also score the policy's answers under another prompt of the batch (the next different one): the "
        "mean gap to their own prompt's score is reward/prompt_dependence, how much the reward depends on what was "
        "asked (reward_report's prompt_dependence, on the policy's own answers). Near 0, the reward model scores an "
        "answer the same whatever the question, and PPO can find one answer for every question. The reference model "
        "reads the same swap: reference/prompt_fit is the mean of log π_ref(answer | its prompt) − log π_ref(answer | "
        "that prompt), in nats, and reference/off_prompt_share the share of answers where that is under 1 nat — "
        "replies that could answer any question, which the off_prompt_answers alert watches (no gold, no reward "
        "model). One more reward pass and one more reference forward per update, so off by default (the quickstart "
        "turns it on)."))
    on_alert: str = field(default="continue", metadata=field_help(
        "What a reward-hacking alert of a kind in alert_kinds does (the monitors of rlhf_widgets.runtime.monitors "
        "watch the run's log; thresholds: PPOTrainer's monitor=), decided at the end of the update that raised it: "
        "'continue' (the alert is logged as an event and training goes on), 'stop' (the run ends after that update: "
        "status 'stopped', the reason naming the alert) or 'rollback' (the policy and value weights and the optimizer "
        "state go back to the last checkpoint before the updates the alert read — an alert at update u reads the "
        "trailing window u − window + 1 … u, so the last checkpoint at or before u − window: checkpoint-N/ with "
        "save_every, else every MonitorConfig.window updates; the run's starting state counts; kept in memory either "
        "way, up to two more copies of the trainable state and its optimizer moments — they are saved as the final "
        "policy and the run ends: status "
        "'stopped', the reason naming the update rolled back to and the alert)."))
    alert_kinds: list[str] | None = field(default=None, metadata=field_help(
        "The alert kinds on_alert acts on (the others are only logged). None = the overoptimization alerts: "
        "ensemble_disagreement and conservative_divergence (raised only with a RewardEnsemble reward), "
        "off_prompt_answers (only with prompt_swap_check) and proxy_gold_divergence (only with gold=). "
        "length_drift, kl_acceleration and entropy_collapse flag drift, which a healthy run that learns a new style "
        "can show too: they act only when listed."))
    mixed_precision: str = field(default="auto", metadata=field_help(
        "Compute dtype of the forwards and backwards: 'auto' (bf16 on CUDA GPUs with bf16 and on CPUs with native "
        "bf16 — AVX512-BF16 / AMX — else float32), 'bf16' (autocast), 'fp16' (autocast + dynamic loss scaling) or "
        "'no' (float32). Trained weights, optimizer state, the value head and the losses stay float32 "
        "(rlhf_widgets.runtime.precision); ModelConfig.dtype is how the frozen base is stored."))
    nonfinite_grads: str | None = field(default=None, metadata=field_help(
        "A minibatch whose gradient (after averaging across processes) is NaN/inf, with a finite loss: 'stop' (the "
        "step is not taken; the run stops with the last good update's weights, and a checkpoint with the reason) or "
        "'skip' (the step is not taken; counted in train/skipped_steps). None = 'skip' with fp16, whose loss scaler "
        "skips overflowing steps by design, else 'stop'."))
    collective_timeout_s: float = field(default=1800.0, metadata=field_help(
        "Seconds a process waits in a collective (all-reduce, barrier) for the others: how long the survivors wait "
        "when a process hangs (a process that dies is noticed at once). Set by the first trainer of a process."))
    peak_gflops: float | None = field(default=None, metadata=field_help(
        "This machine's peak GFLOP/s in the run's compute dtype (per process), e.g. a measured GEMM peak: each "
        "update then logs perf/flops_utilization = perf/model_flops / its seconds / the peak. None: not logged "
        "(perf/model_flops and perf/gflops are logged either way; see rlhf_widgets.stages.ppo.flops)."))
    report_to: None | str | list[str] = field(default="none", metadata=field_help(
        "Trackers that also get every metric and event, with the Hugging Face names: 'tensorboard', 'wandb', "
        "'trackio', a list of them, 'all' (those installed) or 'none'. The MetricsLog always records."))

    def __post_init__(self) -> None:

        if self.sample_every is None:
            self.sample_every = max(1, min(5, self.num_updates // 10))
        check_fields(self, {
            "num_updates": (self.num_updates > 0, "must be > 0"),
            "batch_size": (self.batch_size > 0, "must be > 0"),
            "mini_batch_size": (0 < self.mini_batch_size <= self.batch_size
                                and self.batch_size % self.mini_batch_size == 0,
                                f"must divide batch_size={self.batch_size}"),
            "micro_batch_size": (self.micro_batch_size is None
                                 or (0 < self.micro_batch_size <= self.mini_batch_size
                                     and self.mini_batch_size % self.micro_batch_size == 0),
                                 f"must divide mini_batch_size={self.mini_batch_size}"),
            "num_ppo_epochs": (self.num_ppo_epochs > 0, "must be > 0"),
            "learning_rate": (self.learning_rate > 0 and math.isfinite(self.learning_rate), "must be finite and > 0"),
            "max_new_tokens": (self.max_new_tokens > 0, "must be > 0"),
            "temperature": (self.temperature > 0, "must be > 0 (log-probs divide by it)"),
            "kl_estimator": (self.kl_estimator in ("k1", "k3"), "must be 'k1' or 'k3'"),
            "rollout_logprobs": (self.rollout_logprobs in ("generate", "forward"), "must be 'generate' or 'forward'"),
            "kl_coef": (self.kl_coef >= 0, "must be >= 0"),
            "gamma": (0 < self.gamma <= 1, "must be in (0, 1]"),
            "lam": (0 <= self.lam <= 1, "must be in [0, 1]"),
            "cliprange": (self.cliprange > 0, "must be > 0"),
            "cliprange_value": (self.cliprange_value >= 0, "must be >= 0"),
            "max_ratio": (self.max_ratio > 1, "must be > 1"),
            "value_layers_fraction": (0 < self.value_layers_fraction <= 1, "must be in (0, 1]"),
            "merge_for_generation": (self.fast_paths or not self.merge_for_generation, "True needs fast_paths=True"),
            "lr_scheduler_type": (self.lr_scheduler_type in LR_SCHEDULES, f"must be one of {LR_SCHEDULES}"),
            "warmup_updates": (0 <= self.warmup_updates < self.num_updates,
                               f"must be in [0, num_updates={self.num_updates})"),
            "mixed_precision": (self.mixed_precision in ("auto", "no", "bf16", "fp16"),
                                "must be 'auto', 'no', 'bf16' or 'fp16'"),
            "nonfinite_grads": (self.nonfinite_grads in (None, "stop", "skip")
                                and not (self.mixed_precision == "fp16" and self.nonfinite_grads == "stop"),
                                "must be None, 'stop' or 'skip'; with mixed_precision='fp16' the loss scaler skips "
                                "overflowing steps by design, so 'stop' would end the run at its first overflow: use "
                                "'skip'"),
            "collective_timeout_s": (self.collective_timeout_s > 0, "must be > 0"),
            "peak_gflops": (self.peak_gflops is None or (self.peak_gflops > 0 and math.isfinite(self.peak_gflops)),
                            "must be None or finite and > 0"),
            "on_alert": (self.on_alert in ON_ALERT, f"must be one of {ON_ALERT}"),
            "alert_kinds": (self.alert_kinds is None
                            or (len(self.alert_kinds) > 0 and all(kind in ALERT_KINDS for kind in self.alert_kinds)),
                            f"must be None or a non-empty list of {ALERT_KINDS}"),
        })

    def uses_activation_checkpointing(self, quantized: bool) -> bool:
        """`activation_checkpointing`, with None resolved: on for a 4-bit (quantized) base."""
        return quantized if self.activation_checkpointing is None else self.activation_checkpointing

    def value_layers(self, n_layers: int) -> int | None:
        """Decoder layers (from the top) that carry the value adapter; None = all."""
        k = math.ceil(self.value_layers_fraction * n_layers - 1e-9)
        return None if k >= n_layers else max(k, 1)

    @property
    def nonfinite_policy(self) -> str:
        """`nonfinite_grads` with None resolved: 'skip' under fp16, else 'stop'."""
        if self.nonfinite_grads is not None:
            return self.nonfinite_grads
        return "skip" if self.mixed_precision == "fp16" else "stop"

    @property
    def alarm_kinds(self) -> tuple[str, ...]:
        """`alert_kinds` with None resolved: the overoptimization alerts (`monitors.OVEROPTIMIZATION_KINDS`)."""
        return OVEROPTIMIZATION_KINDS if self.alert_kinds is None else tuple(self.alert_kinds)

    def to_dict(self) -> dict:
        return asdict(self)
