"""PPOTrainer: the recipe — rollout → score → KL-shaped rewards → GAE → epochs of clipped minibatch updates.

One readable `step()`, numbered after "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024);
the pieces live beside it: `rollout` (steps 1–6 and the `Rollout` they fill), `core` (the math), `backbone`
(where policy, reference and value live), `control` (pause / resume / stop / settings from the notebook),
`memory` (micro-batch size, heap trimming), `precision` (bf16 / fp16 autocast, float32 where it matters),
`distributed` (what several processes reduce and agree on), `flops` (the model FLOPs of an update), `timing` (its
seconds per phase). Built on `accelerate`: under `accelerate launch` each process rolls out its own prompts,
gradients are averaged across processes before every optimizer step (the replicas stay identical), and every
decision — β, the rails, whitening, a non-finite gradient — is taken on all processes' statistics at the same point,
so a stop on one process stops them all at the same update.

Around the recipe, each in its own module: `recovery` (the last good state a failed update returns to, and what a
reward-hacking alert does: continue, stop, roll back), `checkpoints` (save / resume, the metrics log continued on
resume), `stopping` (the rails' `TrainingStopped`, the user's pause / stop between updates). With a `RewardEnsemble`
reward every update also logs the members' scores and their disagreement (`reward/...`), which the gold-free
monitors read.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from transformers import get_scheduler

from rlhf_widgets.runtime.attention import use_sdpa_math_backward
from rlhf_widgets.runtime.config import SANDBOX, ModelConfig, as_model_config
from rlhf_widgets.runtime.control import TrainingControl
from rlhf_widgets.runtime.data import prompt_list
from rlhf_widgets.runtime.length_split import length_groups
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import ModelLike, load_causal_lm, model_name
from rlhf_widgets.runtime.monitors import MonitorConfig, RewardHackingMonitor
from rlhf_widgets.runtime.precision import Precision, resolve_mixed_precision
from rlhf_widgets.runtime.quiet import progress
from rlhf_widgets.runtime.reward_protocol import RewardFunction
from rlhf_widgets.runtime.stage_runner import FINAL, StageResult, is_quantized
from rlhf_widgets.runtime.trackers import attach_trackers
from rlhf_widgets.stages.ppo import checkpoints, core, recovery, reporting
from rlhf_widgets.stages.ppo.backbone import SeparateModels, SharedBackbone, ppo_lora
from rlhf_widgets.stages.ppo.config import PPOConfig
from rlhf_widgets.stages.ppo.distributed import Processes, make_accelerator
from rlhf_widgets.stages.ppo.flops import FlopCounter, ModelShape, token_counts
from rlhf_widgets.stages.ppo.memory import auto_micro_batch_size, release_freed_memory
from rlhf_widgets.stages.ppo.rollout import Rollout, forward_inputs, make_rollout, shape_rewards
from rlhf_widgets.stages.ppo.stopping import TrainingStopped, user_stop
from rlhf_widgets.stages.ppo.timing import PhaseClock
from rlhf_widgets.stages.ppo.zero import ZeroEngine
from rlhf_widgets.stages.reward import as_reward_function


class PPOTrainer:
    """PPO-RLHF from an SFT model against a reward function; see `rlhf_widgets.stages.ppo.backbone` for the roles.

    Args:
        prompts: training prompts (strings or chat messages), drawn in a shuffled order per epoch; or a source
            `data.load_prompts` reads ("sandbox", a file, a dataset, a hub id).
        config: PPO's knobs (default `PPOConfig()`).
        model: the SFT model (see `models.ModelLike`); policy and reference start from it. LoRA rank, alpha and
            targets and 4-bit come from its `ModelConfig` (a loaded model is wrapped and trained in place).
        reward: a reward function `(prompts, responses) -> scores` — a `RewardModel`, a saved reward-model
            directory, `sandbox.gold_reward`, …
        metrics: where metrics, events and samples go (default: `output_dir/metrics.jsonl`, continued on resume).
        gold: an optional held-out reward function logged as `gold/score`, never trained on (the sandbox's gold).
        resume_from: a checkpoint directory written by `save_checkpoint` (`checkpoint-N/`, `last/`), by as many
            processes as this run has.
        monitor: thresholds of the reward-hacking monitors that watch `train()` (default `MonitorConfig()`); what
            an alert does is `config.on_alert`.
    """

    def __init__(
        self,
        prompts: Sequence,
        config: PPOConfig | None = None,
        *,
        model: ModelLike = SANDBOX,
        reward: RewardFunction | str | os.PathLike,
        metrics: MetricsLog | None = None,
        gold: RewardFunction | None = None,
        resume_from: str | Path | None = None,
        monitor: MonitorConfig | None = None,
    ) -> None:
        config = config or PPOConfig()
        self.config = config
        self.accelerator = make_accelerator(config)
        self.is_main = self.accelerator.is_main_process
        self.processes = Processes(self.accelerator)
        self.precision = Precision(resolve_mixed_precision(config.mixed_precision, self.accelerator.device),
                                   self.accelerator.device)
        torch.manual_seed(config.seed)  # identical adapter init on every process
        base, self.tokenizer, self.model_settings = self._load(model)
        if config.fast_paths:
            use_sdpa_math_backward(base)  # on CPU: sdpa's forward, a cheaper backward (rlhf_widgets.runtime.attention)
        self.model_config = base.config
        self.model_shape = ModelShape.from_model(base)
        """the policy's matmul shape, for the FLOP count (`ppo.flops`)"""
        quantized = is_quantized(base)
        if config.shared_base:
            self.backend = SharedBackbone(
                base, ppo_lora(self.model_settings),
                activation_checkpointing=config.uses_activation_checkpointing(quantized),
                value_layers=config.value_layers(base.config.num_hidden_layers),
                fast_paths=config.fast_paths, merge_for_generation=config.merge_for_generation,
                # every forward of the backbone runs under the trainer's autocast (ZeRO's engine: left alone)
                autocast_dtype=(self.precision.dtype if self.precision.mode != "no"
                                and self.accelerator.distributed_type != DistributedType.DEEPSPEED else None))
        elif quantized:
            raise ValueError("PPOConfig(shared_base=False) trains full models, which a 4-bit base cannot: use "
                             "shared_base=True (LoRA adapters on the quantized base) or load without load_in_4bit")
        else:
            self.backend = SeparateModels(base)
        self.backend.value_head.to(self.accelerator.device)
        self.reward = as_reward_function(reward)
        self.flop_counter = FlopCounter(self.model_shape, self.backend, self.reward, config,
                                        activation_checkpointing=config.uses_activation_checkpointing(quantized))
        """counts each update's model FLOPs (`ppo.flops`)"""
        self.gold = gold
        self.prompts = prompt_list(prompts)
        self.output_dir = Path(config.output_dir)
        self.optimizer = torch.optim.AdamW(
            [{"params": self.backend.policy_parameters}, {"params": self.backend.value_parameters}],
            lr=config.learning_rate, eps=1e-5,
        )
        self.scheduler = get_scheduler(config.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=config.warmup_updates, num_training_steps=config.num_updates)
        self.zero: ZeroEngine | None = None
        """the DeepSpeed ZeRO engine under a DeepSpeed launch (`ppo.zero`), else None"""
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            self.zero = ZeroEngine(self.accelerator, self.backend, self.optimizer, config, self.precision.mode)
        self.kl_ctl = (
            core.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.adaptive_kl else core.FixedKLController(config.kl_coef)
        )
        self.temperature = config.temperature
        self.control = TrainingControl()
        self.update = 0
        """updates done so far"""
        self.episode = 0
        """rollouts done so far, all processes together"""
        # per-process streams: prompt order and sampling differ across data-parallel replicas
        rank_seed = config.seed + 1000 * self.accelerator.process_index
        self.prompt_rng = torch.Generator().manual_seed(rank_seed)
        torch.manual_seed(rank_seed)
        random.seed(rank_seed)
        self._order: list[int] = []
        self.last_micro_batch_size: int | None = None
        self._last_good: dict | None = None  # the state a failed update returns to (`recovery`)
        self.monitor_config = monitor or MonitorConfig()
        """the reward-hacking monitors' thresholds (`evaluation.MonitorConfig`)"""
        self.monitor: RewardHackingMonitor | None = None
        """the monitor watching the current (or last) `train()`; its `alerts` are what it raised"""
        self._rollback_points: list[tuple[int, dict]] = []  # (update, a last good state) for on_alert (`recovery`)
        self._grad_norms: list[float] = []
        self._skipped_steps = 0
        self.clock = PhaseClock(self.accelerator.device)
        """seconds per phase of the current update (`ppo.timing`), logged as `time/<phase>`"""
        self.last_flops: dict[str, float] = {}
        """the last update's model FLOPs per phase and in total (`ppo.flops.ppo_update_flops`)"""
        self.last_token_counts: dict[str, int] = {}
        """the last update's `batch` (rollouts), `prompt` (padded prompt tokens) and `response` (generated tokens)"""
        self.metrics = (metrics if metrics is not None
                        else checkpoints.run_metrics(self.output_dir, resume_from, self.is_main))
        self.trackers = attach_trackers(self.metrics, config.report_to if self.is_main else "none", run_name="ppo",
                                        config=config.to_dict(), output_dir=config.output_dir)
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    def _load(self, model: ModelLike):
        """(base model, tokenizer, ModelConfig) on this process's device; the caller's ModelConfig is not touched."""
        if isinstance(model, (str, os.PathLike, ModelConfig)):
            device = "cuda" if self.accelerator.device.type == "cuda" else "cpu"
            settings = as_model_config(model, device=device)
            # an SFT adapter is merged into its base (kept as an adapter on a quantized base: see backbone.py)
            base, tokenizer = load_causal_lm(settings)
            return base, tokenizer, settings
        base, tokenizer = load_causal_lm(model)
        return base, tokenizer, ModelConfig(model_name_or_path=model_name(model))

    # ---------------------------------------------------------------- public state
    continues_after_stop = True
    """Start after Stop continues the run (`train` picks up at the next update)."""

    @property
    def total_updates(self) -> int:
        """Updates the run plans (`config.num_updates`)."""
        return int(self.config.num_updates)

    @property
    def settings(self) -> dict[str, float]:
        """The settings the next update uses: `learning_rate`, `kl_coef` (β) and `temperature`."""
        return {"learning_rate": self.optimizer.param_groups[0]["lr"], "kl_coef": self.kl_ctl.value,
                "temperature": self.temperature}

    # ---------------------------------------------------------------- data
    def _next_prompts(self) -> list:
        batch = []
        while len(batch) < self.config.batch_size:
            if not self._order:
                self._order = torch.randperm(len(self.prompts), generator=self.prompt_rng).tolist()
            batch.append(self.prompts[self._order.pop()])
        return batch

    def _micro_batch_size(self, seq_len: int) -> int:
        """`config.micro_batch_size`, or the automatic choice (see PPOConfig.micro_batch_size)."""
        cfg = self.config
        if cfg.micro_batch_size is not None:
            return cfg.micro_batch_size
        if self.accelerator.device.type != "cpu" or not cfg.shared_base:
            return cfg.mini_batch_size  # (full mode: every micro-batch adds a pass over all weight gradients)
        return auto_micro_batch_size(self.model_config, seq_len, cfg.mini_batch_size,
                                     half_precision=self.precision.mode != "no")

    # ---------------------------------------------------------------- one update
    def step(self) -> dict[str, float]:
        """Run one PPO update and return its metrics (also logged). Raises `TrainingStopped` on a rail (on every
        process at once), `distributed.UpdateError` for an exception on another process, `PeerLost` when a
        process is gone; the caller (`train`) puts the last good state back."""
        cfg = self.config
        start = time.perf_counter()
        clock = self.clock
        clock.reset()
        with clock("keep_last_good"):  # the state a failed update (or a rollback) returns to
            recovery.keep_last_good(self)
            recovery.keep_rollback_point(self)
        update = self.update + 1
        procs = self.processes
        reward_tokens = getattr(self.reward, "tokens_scored", 0)

        # 1–4. rollout: sample from the current policy, truncate after EOS, log-probs of policy and reference,
        #      values, and reward scores (the missing-EOS penalty applied)
        procs.where = f"the rollout of update {update}"
        error, rollout = None, None
        try:
            with self.precision.autocast():
                rollout = make_rollout(
                    self.backend, self.tokenizer, self._next_prompts(), self.reward,
                    temperature=self.temperature, max_new_tokens=cfg.max_new_tokens,
                    missing_eos_penalty=cfg.missing_eos_penalty, recorded_logprobs=cfg.rollout_logprobs == "generate",
                    forward_batch_size=cfg.rollout_batch_size, device=self.accelerator.device, clock=clock,
                    reward_precision=self.precision.full_precision)  # a reward model scores in its own precision
        except TrainingStopped as err:
            error = TrainingStopped(f"{err} of update {update}")
        except Exception as err:  # noqa: BLE001 - raised on every process at the agreement point
            error = err
        procs.agree(error)
        # 5–6. KL-shaped per-token rewards (−β·KL, the score at EOS), GAE, advantage whitening
        kl_coef = self.kl_ctl.value
        self._shape(rollout, kl_coef)
        mask = rollout.response_mask
        # the mean sequence KL (of the configured estimator: it drives β) and k1's (the rail), over all processes
        totals = procs.sum(torch.stack([(rollout.kl * mask).sum(), ((rollout.logprobs - rollout.ref_logprobs)
                                                                    * mask).sum(), mask.new_tensor(len(rollout))]))
        mean_kl, mean_k1 = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()
        if mean_k1 < cfg.min_kl:
            raise TrainingStopped(f"mean k1 KL {mean_k1:.3f} < {cfg.min_kl} at update {update}: the policy is "
                                  "scored as more likely than the reference everywhere it samples — check the "
                                  "reference model and the temperature")
        rollout_seconds = time.perf_counter() - start

        # 7. PPO epochs of clipped minibatch updates (policy, then value; one optimizer step per minibatch)
        release_freed_memory()
        stats = self._ppo_epochs(rollout)
        procs.where = f"the gold scores of update {update}"
        with clock("gold"):
            gold_scores = reporting.gold_scores(self.gold, rollout, self.precision, procs)
        procs.where = f"the prompt-swap scores of update {update}"
        prompt_swap = reporting.prompt_swap(self, rollout, clock)

        # 8. adapt β (on all processes' mean KL: every process keeps the same β), step the schedule, report
        n_episodes = len(rollout) * procs.count
        self.kl_ctl.update(mean_kl, n_episodes)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.update += 1
        self.episode += n_episodes
        procs.where = f"the report of update {update}"
        update_seconds = time.perf_counter() - start - rollout_seconds
        self.last_token_counts = token_counts(rollout)
        self.last_flops = self.flop_counter.count(rollout, getattr(self.reward, "tokens_scored", 0) - reward_tokens,
                                                  reference_passes=2 if prompt_swap else 1)
        metrics = reporting.update_metrics(self, rollout, stats, gold_scores, mean_kl, kl_coef, lr, rollout_seconds,
                                           update_seconds)
        metrics.update(prompt_swap)
        metrics["eps"] = n_episodes / (time.perf_counter() - start)
        metrics["episode"] = self.episode
        if self.is_main:
            self.metrics.log(metrics, step=self.update, stage="ppo")
        return metrics

    def _shape(self, rollout: Rollout, kl_coef: float) -> None:
        """Steps 5–6 (`rollout.shape_rewards`); with `whiten_globally` and several processes the whitening uses all
        processes' statistics."""
        cfg = self.config
        across = self.processes.sum if cfg.whiten_globally and self.processes.count > 1 else None
        shape_rewards(rollout, kl_coef=kl_coef, kl_estimator=cfg.kl_estimator, gamma=cfg.gamma, lam=cfg.lam,
                      whiten_rewards=cfg.whiten_rewards, whiten_advantages=cfg.whiten_advantages, sum_across=across)

    def _ppo_epochs(self, rollout: Rollout) -> dict[str, list[float]]:
        """Step 7: `num_ppo_epochs` passes over the rollout in shuffled minibatches (gradients accumulated over
        micro-batches, averaged across processes, checked, clipped, one AdamW step each); returns per-micro-batch
        stats. A rail or an exception on any process stops every process before that minibatch's step."""
        cfg = self.config
        dev = rollout.sequences.device
        stats: dict[str, list[float]] = defaultdict(list)
        micro = self.last_micro_batch_size = self._micro_batch_size(rollout.sequences.shape[1])
        self._grad_norms, self._skipped_steps = [], 0
        update = self.update + 1
        for epoch in range(cfg.num_ppo_epochs):
            order = torch.randperm(len(rollout), generator=self.prompt_rng).tolist()
            for mb_start in range(0, len(rollout), cfg.mini_batch_size):
                minibatch = order[mb_start : mb_start + cfg.mini_batch_size]
                where = f"update {update}, epoch {epoch + 1}, minibatch {mb_start // cfg.mini_batch_size + 1}"
                self.processes.where = where
                error = None
                try:
                    for mc_start in range(0, len(minibatch), micro):
                        idx = torch.tensor(minibatch[mc_start : mc_start + micro], device=dev)
                        with self.clock("train_forward_backward"):
                            self._micro_batch(rollout, idx, len(idx) / len(minibatch), stats, update)
                except Exception as err:  # noqa: BLE001 - raised on every process at the agreement point
                    error = err
                self.processes.agree(error)
                with self.clock("optimizer"):
                    self._optimizer_step(where)
        # once per update, not per minibatch: every minibatch reuses the pages the last one freed, and trimming
        # after each would make the next fault them in again (docs/PERFORMANCE.md has the cost)
        release_freed_memory()
        return stats

    def _pieces(self, rollout: Rollout, idx: torch.Tensor) -> list[tuple[torch.Tensor, int, int]]:
        """A micro-batch's rows as (rows, first column, response width) pieces: on CPU in float32 without ZeRO (in
        bf16 autocast the smaller matmuls cost more than the padding saved: docs/PERFORMANCE.md), sorted by real
        length and cut where trimming the padding saves more than one more forward and backward costs
        (`length_split.length_groups`) — each piece runs from the first column any of its prompts uses to its
        longest response; elsewhere one piece of the whole padded width."""
        context, width = rollout.context_length, rollout.responses.shape[1]
        if (self.accelerator.device.type != "cpu" or self.precision.mode != "no" or self.zero is not None
                or len(idx) < 2):
            return [(idx, 0, width)]
        prompt_lengths = rollout.attention_mask[idx, :context].sum(1)
        response_lengths = rollout.response_mask[idx].sum(1).clamp(min=1)
        groups = length_groups((prompt_lengths + response_lengths).tolist())
        return [(idx[group], context - int(prompt_lengths[group].max()), int(response_lengths[group].max()))
                for group in (torch.tensor(g, device=idx.device) for g in groups)]

    def _micro_batch(self, rollout: Rollout, idx: torch.Tensor, weight: float, stats: dict[str, list[float]],
                     update: int) -> None:
        """Forward and backward of one micro-batch (policy loss, then value loss), run as `_pieces`: each piece's
        loss weighted by its share of the micro-batch's response tokens, so the losses, their gradients and the
        stats are the whole micro-batch's (masked means over its tokens); its stats appended to `stats`."""
        cfg = self.config
        context = rollout.context_length
        pieces = self._pieces(rollout, idx)
        tokens = rollout.response_mask[idx].sum().item()
        views = []
        for rows, first, width in pieces:
            inputs = forward_inputs(rollout.sequences[rows, first : context + width],
                                    rollout.attention_mask[rows, first : context + width])
            mask = rollout.response_mask[rows, :width]
            count = mask.sum().item()
            views.append((rows, first, width, inputs, mask, count, count / tokens if tokens else 1 / len(pieces)))
        # the policy: every piece's loss, checked as one, then one backward of their weighted sum
        pg_loss, pg_parts, entropy = 0.0, [], 0.0
        for rows, _, width, inputs, mask, count, share in views:
            with self.precision.autocast():
                logits = self.backend.policy_logits(**inputs, logits_to_keep=width + 1)[:, :-1]
            new_logprobs = core.logprobs_from_logits(logits, rollout.responses[rows, :width], self.temperature)
            loss, part = core.ppo_policy_loss(new_logprobs, rollout.logprobs[rows, :width],
                                              rollout.advantages[rows, :width], mask, cfg.cliprange)
            pg_loss = pg_loss + share * loss
            pg_parts.append((part, count))
            with torch.no_grad():
                entropy += share * core.masked_mean(core.entropy_from_logits(logits.detach() / self.temperature),
                                                    mask).item()
            del logits, new_logprobs
        pg_stats = core.combined_stats(pg_parts)
        ratio = pg_stats["ratio_mean"]
        if not math.isfinite(pg_loss.item()) or not (1 / cfg.max_ratio < ratio < cfg.max_ratio):
            raise TrainingStopped(f"policy ratio {ratio:.3g} / loss {pg_loss.item():.3g} at update {update}: the "
                                  "update diverged — lower the learning rate")
        # the policy's backward now, freeing its graph before the value forward — except under ZeRO, whose engine
        # reduces the gradients once per backward: there one backward of both losses
        policy_term = weight * pg_loss
        if self.zero is None:
            self.precision.backward(policy_term)
            policy_term = None
        vf_loss, vf_parts = 0.0, []
        for rows, first, width, inputs, mask, count, share in views:
            trunk = None if rollout.value_trunk is None else rollout.value_trunk[rows, first : context + width]
            with self.precision.autocast():
                new_values = self.backend.values(**inputs, trunk=trunk)[:, context - first - 1 : -1]
            loss, part = core.ppo_value_loss(new_values.float(), rollout.values[rows, :width],
                                             rollout.returns[rows, :width], mask, cfg.cliprange_value)
            vf_loss = vf_loss + share * loss
            vf_parts.append((part, count))
        if not math.isfinite(vf_loss.item()):
            raise TrainingStopped(f"non-finite value loss at update {update}")
        vf_stats = core.combined_stats(vf_parts)
        value_term = weight * cfg.vf_coef * vf_loss
        if self.zero is None:
            self.precision.backward(value_term)
        else:
            self.zero.backward(policy_term + value_term)
        for k, v in {"policy/approxkl_avg": pg_stats["approx_kl"], "policy/clipfrac_avg": pg_stats["clipfrac"],
                     "loss/policy_avg": pg_loss.item(), "loss/value_avg": vf_loss.item(),
                     "val/clipfrac_avg": vf_stats["clipfrac"], "val/ratio": pg_stats["ratio_mean"],
                     "val/ratio_var": pg_stats["ratio_var"], "policy/entropy_avg": entropy}.items():
            stats[k].append(float(v))

    def _optimizer_step(self, where: str) -> None:
        """Average the gradients across processes, then — on every process alike, since they now hold the same
        gradients — check they are finite, clip and step. A non-finite gradient never reaches the weights: the
        step is skipped (counted) or the run stops (`PPOConfig.nonfinite_grads`). Under ZeRO the engine does all
        of it (`ppo.zero`)."""
        cfg = self.config
        if self.zero is not None:
            norm = self.zero.step(where)
            if math.isfinite(norm):
                self._grad_norms.append(norm)
            else:
                self._skipped_steps += 1
            return
        params = [p for p in self._trainable() if p.grad is not None]
        bad = self._sync_gradients(params)
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf).item()
        if math.isfinite(norm):
            self._grad_norms.append(norm)
        else:
            self._skipped_steps += 1
            if cfg.nonfinite_policy == "stop":
                self.optimizer.zero_grad(set_to_none=True)
                seen = f" (non-finite on process {', '.join(map(str, bad))} before averaging)" if bad else ""
                raise TrainingStopped(f"non-finite gradient (norm {norm}) with a finite loss at {where}{seen}: the "
                                      "step was not taken — lower the learning rate, or use mixed_precision='no' "
                                      "if it comes from fp16/bf16 overflow")
        if scaler is not None:  # skips the step itself when unscale_ found inf/NaN, and lowers the scale
            scaler.step(self.optimizer)
            scaler.update()
        elif math.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- the loop
    def train(self, num_updates: int | None = None, show_progress: bool = True) -> StageResult:
        """Run updates until `num_updates` (default `config.num_updates`) or a stop; then checkpoint to `last/`
        and save the policy to `final/` (the result's `model_path`). A safety stop ends the run with status
        "failed" and the reason; another exception inside an update is raised after `last/` is written with the
        reason (see `recovery`). A reward-hacking alert ends it as `config.on_alert` says (status
        "stopped", the reason naming the alert — and, for a rollback, the update whose weights `final/` and `last/`
        hold; the counters in `last/` stay those of the alert's update)."""
        total = num_updates if num_updates is not None else self.config.num_updates
        control = self.control
        control.state, control.reason = "running", ""
        bar = progress(total=total, desc="PPO", unit="update", disable=not (show_progress and self.is_main))
        bar.update(min(self.update, total))
        # the monitors read the run's log as it is written (the history too: a resumed or continued run); each
        # alert becomes an "alert" event there
        monitor = self.monitor = RewardHackingMonitor(self.monitor_config)
        unwatch = monitor.attach(self.metrics)
        start = time.perf_counter()
        try:
            while self.update < total:
                if user_stop(control, self._event):  # (a pause is waited out in there)
                    break
                self._apply(control.take_pending(self.update + 1))
                seen = len(monitor.alerts)
                try:
                    self.step()
                except (KeyboardInterrupt, Exception) as err:  # the last good state back (`recovery`)
                    if recovery.failed_update(self, err):
                        break  # a safety stop: status "failed", the run ends here
                    raise
                bar.update(1)
                if self.config.save_every and self.update % self.config.save_every == 0:
                    self.save_checkpoint(self.output_dir / f"checkpoint-{self.update}")
                alert = recovery.acting_alert(self, monitor.alerts[seen:])
                if alert is not None:
                    recovery.act_on(self, alert)
                    break
            else:
                control.state = "finished"
        except BaseException as err:
            if control.state != "failed":
                control.state, control.reason = "failed", repr(err)
                self._event("error", f"training failed: {err!r}")
            raise
        finally:
            bar.close()
            unwatch()
        seconds = time.perf_counter() - start
        self.save_checkpoint(self.output_dir / "last")
        final = self.save_policy(self.output_dir / FINAL)
        self._event("saved", f"PPO policy saved to {final}")
        return StageResult(stage="ppo", model_path=final, metrics=self.metrics, train_seconds=seconds,
                           status=control.state, reason=control.reason)

    def start(self, num_updates: int | None = None) -> threading.Thread:
        """Train in a background thread so the notebook's widgets stay responsive; returns the thread."""
        thread = threading.Thread(target=self.train, kwargs={"num_updates": num_updates, "show_progress": False},
                                  daemon=True, name="rlhf-widgets-ppo")
        self.control.state = "running"
        thread.start()
        return thread

    def _apply(self, changes: dict) -> None:
        for name, value in changes.items():
            old = self.settings[name]
            if name == "learning_rate":  # the schedule continues from the new rate
                scale = value / old if old > 0 else 1.0
                self.scheduler.base_lrs = [base * scale if old > 0 else value for base in self.scheduler.base_lrs]
                for group in self.optimizer.param_groups:
                    group["lr"] = value
            elif name == "kl_coef":
                self.kl_ctl.value = value
            else:
                self.temperature = value
            self._event("setting", f"{name} changed {old:g} → {value:g}", name=name, old=old, new=value)

    def _event(self, kind: str, message: str, **data) -> None:
        if self.is_main:
            self.metrics.log_event(kind, message, step=self.update, stage="ppo", **data)

    # ---------------------------------------------------------------- data parallel
    def _trainable(self) -> list[torch.nn.Parameter]:
        return self.backend.policy_parameters + self.backend.value_parameters

    def _sync_gradients(self, params: list[torch.nn.Parameter]) -> list[int]:
        """Average gradients across processes (one flat all-reduce) so every replica takes the same step; returns
        the processes whose own gradient was non-finite before averaging (one slot per process rides along)."""
        procs = self.processes
        if procs.count == 1:
            return []
        flags = torch.zeros(procs.count, device=self.accelerator.device)
        flat = torch.cat([p.grad.flatten() for p in params])
        flags[procs.index] = float(not torch.isfinite(flat).all())
        summed = procs.sum(torch.cat([flat, flags.to(flat.dtype)]))
        offset = 0
        for p in params:
            p.grad.copy_(summed[offset : offset + p.numel()].view_as(p.grad) / procs.count)
            offset += p.numel()
        return summed[offset:].nonzero().flatten().tolist()

    # ---------------------------------------------------------------- saving (`checkpoints`)
    def save_policy(self, path: str | Path) -> Path:
        """Save the current policy (and tokenizer) into `path`: a directory `load_causal_lm` loads."""
        return checkpoints.save_policy(self, path)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Save everything needed to resume exactly into `path` (see `checkpoints.save_checkpoint`)."""
        return checkpoints.save_checkpoint(self, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a `save_checkpoint` state written by as many processes as this run has (the metrics log is
        continued by the constructor)."""
        checkpoints.load_checkpoint(self, path)


def train_ppo(
    prompts: Sequence,
    config: PPOConfig | None = None,
    *,
    model: ModelLike = SANDBOX,
    reward: RewardFunction | str | os.PathLike,
    metrics: MetricsLog | None = None,
    gold: RewardFunction | None = None,
    resume_from: str | Path | None = None,
    monitor: MonitorConfig | None = None,
) -> StageResult:
    """PPO in one call, the same shape as every other stage: `PPOTrainer(...).train()`."""
    trainer = PPOTrainer(prompts, config, model=model, reward=reward, metrics=metrics, gold=gold,
                         resume_from=resume_from, monitor=monitor)
    return trainer.train()
