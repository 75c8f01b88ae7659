"""PPOTrainer: the recipe — rollout → score → KL-shaped rewards → GAE → epochs of clipped minibatch updates.

One readable `step()`, numbered after "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024);
the pieces live beside it: `rollout` (steps 1–6 and the `Rollout` they fill), `core` (the math), `backbone`
(where policy, reference and value live), `control` (pause / resume / stop / settings from the notebook),
`memory` (micro-batch size, heap trimming), `precision` (bf16 / fp16 autocast, float32 where it matters),
`distributed` (what several processes reduce and agree on). Built on `accelerate`: under `accelerate launch` each
process rolls out its own prompts, gradients are averaged across processes before every optimizer step (the
replicas stay identical), and every decision — β, the rails, whitening, a non-finite gradient — is taken on all
processes' statistics at the same point, so a stop on one process stops them all at the same update.

Failure handling: before every update the trainable weights and optimizer state are kept as the last good state
(only when finite). A rail, a non-finite gradient (`PPOConfig.nonfinite_grads`) or any exception inside the update
puts that state back on every process and writes `last/` with the reason; a rail ends the run with status
"failed", another exception is raised after the checkpoint. A process that dies makes the others raise
`PeerLost` at their next collective (no checkpoint: the weights in memory are put back to the last good update).

Reward-hacking alarm: during `train()` a `RewardHackingMonitor` (`evaluation.monitors`) watches the run's log and
logs each alert as an event; at the end of an update that raised an alert of a kind in `PPOConfig.alarm_kinds`,
`PPOConfig.on_alert` decides — on the main process, whose log it is, followed by every process — whether the run goes
on, stops there, or rolls the weights back to the last checkpoint before that update and stops. With a
`RewardEnsemble` reward every update also logs the members' scores and their disagreement (`reward/...`), which the
gold-free monitors read.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from transformers import get_scheduler

from rlhf_widgets.runtime.attention import use_sdpa_math_backward
from rlhf_widgets.runtime.config import SANDBOX, ModelConfig, as_model_config
from rlhf_widgets.runtime.control import TrainingControl
from rlhf_widgets.runtime.data import prompt_list
from rlhf_widgets.runtime.length_split import length_groups
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import ModelLike, load_causal_lm, lora_config, model_name
from rlhf_widgets.runtime.precision import Precision, resolve_mixed_precision
from rlhf_widgets.runtime.quiet import progress
from rlhf_widgets.runtime.reward_protocol import RewardFunction, score_responses
from rlhf_widgets.runtime.stage_runner import FINAL, StageResult, is_quantized
from rlhf_widgets.runtime.trackers import attach_trackers
from rlhf_widgets.stages.ppo import core
from rlhf_widgets.stages.ppo.backbone import POLICY, REFERENCE, VALUE, SeparateModels, SharedBackbone
from rlhf_widgets.stages.ppo.config import PPOConfig
from rlhf_widgets.stages.ppo.distributed import PeerLost, Processes
from rlhf_widgets.stages.ppo.flops import ModelShape, lora_params, ppo_update_flops
from rlhf_widgets.stages.ppo.memory import auto_micro_batch_size, release_freed_memory
from rlhf_widgets.stages.ppo.rollout import (
    Rollout,
    TrainingStopped,
    forward_inputs,
    make_rollout,
    other_prompts,
    reference_logprob_sums,
    shape_rewards,
)
from rlhf_widgets.stages.ppo.timing import PhaseClock
from rlhf_widgets.stages.ppo.zero import ZeroEngine
from rlhf_widgets.stages.reward import as_reward_function

if TYPE_CHECKING:
    from rlhf_widgets.runtime.monitors import Alert, MonitorConfig, RewardHackingMonitor

STATE_FILE = "trainer_state.pt"
"""A checkpoint's shared state: weights, optimizer, schedule, β, counters, the number of processes, the reason"""
PROCESS_FILE = "process_state_{rank}.pt"
"""A checkpoint's per-process state: process `rank`'s prompt order and random streams (CPU, CUDA, Python), and
under DeepSpeed ZeRO its optimizer partition"""
METRICS_FILE = "metrics.jsonl"


OFF_PROMPT_NATS = 1.0
"""An answer counts as off its prompt (`reference/off_prompt_share`) when the reference finds it less than e times
as likely after its own prompt as after another (a gap below 1 nat): a reply that could answer anything."""


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
        self.accelerator = _accelerator(config)
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
        self._checkpointing = config.uses_activation_checkpointing(quantized)
        if config.shared_base:
            self.backend = SharedBackbone(
                base, _ppo_lora(self.model_settings),
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
        # the adapters' matmul weights, for the FLOP count (read while the module tree is PEFT's own)
        self._lora_counts = ({name: lora_params(self.backend.peft, name) for name in (POLICY, VALUE, REFERENCE)}
                             if isinstance(self.backend, SharedBackbone) else {})
        self.reward = as_reward_function(reward)
        self._reward_shape = _reward_model_shape(self.reward)
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
        self._last_good: dict | None = None
        # imported here, not at the top: evaluation imports the reward stage, which imports ppo.precision (this package)
        from rlhf_widgets.runtime.monitors import MonitorConfig

        self.monitor_config = monitor or MonitorConfig()
        """the reward-hacking monitors' thresholds (`evaluation.MonitorConfig`)"""
        self.monitor: RewardHackingMonitor | None = None
        """the monitor watching the current (or last) `train()`; its `alerts` are what it raised"""
        self._rollback_points: list[tuple[int, dict]] = []  # (update, a `_keep_last_good` state) for on_alert
        self._grad_norms: list[float] = []
        self._skipped_steps = 0
        self.clock = PhaseClock(self.accelerator.device)
        """seconds per phase of the current update (`ppo.timing`), logged as `time/<phase>`"""
        self.last_flops: dict[str, float] = {}
        self.last_token_counts: dict[str, int] = {}
        """the last update's `batch` (rollouts), `prompt` (padded prompt tokens) and `response` (generated tokens)"""
        """the last update's model FLOPs per phase and in total (`ppo.flops.ppo_update_flops`)"""
        self.metrics = metrics if metrics is not None else self._run_metrics(resume_from)
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

    def _run_metrics(self, resume_from: str | Path | None) -> MetricsLog:
        """The run's log at `output_dir/metrics.jsonl`: new, or — resuming — the checkpoint's history continued.

        A checkpoint keeps a copy of the log as it was when it was written. Resuming continues the log in
        `output_dir` when it is that copy plus only events (a save, a stop); when it also holds updates after the
        checkpoint (about to be redone) or is another run's, it is kept beside as `metrics.before-resume-N.jsonl`,
        never deleted, and the checkpoint's copy continues.
        """
        path = self.output_dir / METRICS_FILE
        if not self.is_main:
            return MetricsLog(None, run_name="ppo")
        if resume_from is None:
            return MetricsLog(path, run_name="ppo")
        snapshot = Path(resume_from) / METRICS_FILE
        if snapshot.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file() and not _continues(path.read_bytes(), snapshot.read_bytes()):
                n = 1
                while (kept := path.with_name(f"metrics.before-resume-{n}.jsonl")).exists():
                    n += 1
                path.rename(kept)
            if not path.is_file():
                shutil.copyfile(snapshot, path)
        if path.is_file():
            return MetricsLog.load(path, resume=True)
        return MetricsLog(path, run_name="ppo")

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
        with clock("keep_last_good"):
            self._keep_last_good()
            self._keep_rollback_point()
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
            gold_scores = self._gold_scores(rollout)
        procs.where = f"the prompt-swap scores of update {update}"
        prompt_swap = self._prompt_swap(rollout, clock)

        # 8. adapt β (on all processes' mean KL: every process keeps the same β), step the schedule, report
        n_episodes = len(rollout) * procs.count
        self.kl_ctl.update(mean_kl, n_episodes)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.update += 1
        self.episode += n_episodes
        procs.where = f"the report of update {update}"
        update_seconds = time.perf_counter() - start - rollout_seconds
        self.last_flops = self._flops(rollout, getattr(self.reward, "tokens_scored", 0) - reward_tokens,
                                      reference_passes=2 if prompt_swap else 1)
        metrics = self._report(rollout, stats, gold_scores, mean_kl, kl_coef, lr, rollout_seconds, update_seconds)
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
        # once per update, not per minibatch: every minibatch reuses the pages the last one freed (trimming after
        # each cost 20-30% of an update at the sandbox shape, re-faulting ~130 MiB every time)
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
        pg_stats = _combined_stats(pg_parts)
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
        vf_stats = _combined_stats(vf_parts)
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

    def _gold_scores(self, rollout: Rollout) -> list[float] | None:
        """The held-out gold scores of the rollout's responses (None without `gold`), outside autocast; a failure on
        any process is raised on every process, before the update's state changes."""
        error, scores = None, None
        try:
            if self.gold is not None:
                with self.precision.full_precision():
                    scores = score_responses(self.gold, rollout.prompts, rollout.texts).tolist()
        except Exception as err:  # noqa: BLE001 - raised on every process at the agreement point
            error = err
        self.processes.agree(error)
        return scores

    def _prompt_swap(self, rollout: Rollout, clock: PhaseClock) -> dict[str, float]:
        """`PPOConfig.prompt_swap_check`: each answer is scored again after the next different prompt of its
        process's batch (`other_prompts`) — by the reward and by the reference model — and compared with its own
        prompt's score, over all processes' responses ({} when off or when a process's batch has one prompt):

        - `reward/prompt_dependence`: the mean reward under its own prompt minus under the other (the missing-EOS
          penalty cancels): how much the reward depends on what was asked;
        - `reference/prompt_fit`: the mean of log π_ref(answer | its prompt) − log π_ref(answer | the other prompt),
          in nats — the pointwise mutual information of question and answer under the reference. An answer written
          for its question is much more likely after it than after another; one answer given to every question is
          about as likely after any;
        - `reference/off_prompt_share`: the share of answers with that gap below `OFF_PROMPT_NATS`.

        A failure on any process is raised on every process, before the update's state changes."""
        if not self.config.prompt_swap_check:
            return {}
        swapped_prompts = other_prompts(rollout.prompts)
        error, totals = None, torch.zeros(4, dtype=torch.float64)  # a batch of one question adds nothing
        try:
            if swapped_prompts is not None:
                totals = self._prompt_swap_totals(rollout, swapped_prompts, clock)
        except Exception as err:  # noqa: BLE001 - raised on every process at the agreement point
            error = err
        self.processes.agree(error)
        dependence, fit_sum, off_prompt, n = self.processes.sum(totals.to(self.accelerator.device)).tolist()
        if not n:
            return {}
        return {"reward/prompt_dependence": dependence / n, "reference/prompt_fit": fit_sum / n,
                "reference/off_prompt_share": off_prompt / n}

    def _prompt_swap_totals(self, rollout: Rollout, swapped_prompts: list, clock: PhaseClock) -> torch.Tensor:
        """This process's sums for `_prompt_swap`: own minus swapped reward, the reference's log-prob gaps, the
        answers under `OFF_PROMPT_NATS`, and the count."""
        with clock("reward"), self.precision.full_precision():
            swapped = score_responses(self.reward, swapped_prompts, rollout.texts)
            penalty = core.apply_missing_eos_penalty(swapped, rollout.contains_eos.cpu(),
                                                     self.config.missing_eos_penalty)
        with clock("reference_forward"), self.precision.autocast():
            own = (rollout.ref_logprobs.float() * rollout.response_mask).sum(1)
            fit = (own - reference_logprob_sums(
                self.backend, self.tokenizer, swapped_prompts, rollout.responses, rollout.response_mask,
                temperature=self.temperature, forward_batch_size=self.config.rollout_batch_size)).double().cpu()
        return torch.stack([(rollout.scores.float().cpu() - penalty).sum().double(), fit.sum(),
                            (fit < OFF_PROMPT_NATS).sum().double(), fit.new_tensor(len(rollout))])

    def _flops(self, rollout: Rollout, reward_tokens: int, reference_passes: int) -> dict[str, float]:
        """This process's model FLOPs of the update that made `rollout`, per phase (`ppo.flops`): from the model's
        shape, the rollout's padded token counts, the adapters, the reference forwards (2 when the prompt-swap check
        ran) and — when the reward is a `RewardModel` — the tokens it scored."""
        backend = self.backend
        shared = isinstance(backend, SharedBackbone)
        value_layers = None
        if shared and backend.value_start:
            value_layers = self.model_shape.num_layers - backend.value_start
        lora = self._lora_counts
        self.last_token_counts = {"batch": len(rollout), "prompt": rollout.context_length,
                                  "response": rollout.responses.shape[1]}
        reward = 0.0 if self._reward_shape is None else 2.0 * self._reward_shape.params * reward_tokens
        return ppo_update_flops(
            self.model_shape, batch=len(rollout), prompt_tokens=rollout.context_length,
            response_tokens=rollout.responses.shape[1], num_ppo_epochs=self.config.num_ppo_epochs,
            shared_base=shared, policy_lora=lora.get(POLICY, 0), value_lora=lora.get(VALUE, 0),
            reference_lora=lora.get(REFERENCE, 0), value_layers=value_layers,
            merged_generation=not shared or backend.merge_for_generation,
            policy_forward_in_rollout=self.config.rollout_logprobs == "forward",
            activation_checkpointing=self._checkpointing, reward_flops=reward, reference_passes=reference_passes)

    def _report(self, rollout: Rollout, stats: dict[str, list[float]], gold_scores: list[float] | None,
                mean_kl: float, kl_coef: float, lr: float, rollout_seconds: float,
                update_seconds: float) -> dict[str, float]:
        """Step 8's metrics (TRL's PPO names), reduced across processes as their meaning requires; logs the sample
        table. `objective/kl` and `val/var_explained` are already all processes' (computed from global sums)."""
        mask, scores, non_score = rollout.response_mask, rollout.scores, rollout.non_score_rewards
        with torch.no_grad():  # explained variance over all processes' response tokens: 1 − Var(R − V) / Var(R)
            residual = rollout.returns - rollout.values
            moments = self.processes.sum(torch.stack([
                mask.sum(), (rollout.returns * mask).sum(), (rollout.returns ** 2 * mask).sum(),
                (residual * mask).sum(), (residual ** 2 * mask).sum()]).double())
            n = moments[0].clamp(min=2)
            returns_var = (moments[2] - moments[1] ** 2 / n) / (n - 1)
            residual_var = (moments[4] - moments[3] ** 2 / n) / (n - 1)
            var_explained = (1 - residual_var / returns_var.clamp(min=1e-8)).item()
        metrics = {k: sum(v) / len(v) for k, v in stats.items()}
        metrics.update({
            "objective/entropy": (-rollout.logprobs * mask).sum(1).mean().item(),
            "objective/non_score_reward": (non_score * mask).sum(1).mean().item(),
            "objective/rlhf_reward": (scores + (non_score * mask).sum(1)).mean().item(),
            "objective/scores": scores.mean().item(),
            "val/num_eos_tokens": rollout.contains_eos.sum().item(),
            "val/response_length": mask.sum(1).mean().item(),
            "train/grad_norm": sum(self._grad_norms) / len(self._grad_norms) if self._grad_norms else math.nan,
            "time/rollout": rollout_seconds,
            "time/update": update_seconds,
        })
        # where the seconds went: the phases, and what they leave of rollout + update (`ppo.timing`)
        phases = {f"time/{phase}": seconds for phase, seconds in self.clock.seconds.items()
                  if phase != "gold" or self.gold is not None}
        metrics.update(phases)
        metrics["time/other"] = rollout_seconds + update_seconds - sum(phases.values())
        # model FLOPs of this process's update (`ppo.flops`) and the FLOP/s they were done at
        flops, seconds = self.last_flops["total"], rollout_seconds + update_seconds
        metrics["perf/model_flops"] = flops
        metrics["perf/gflops"] = flops / seconds / 1e9
        if self.config.peak_gflops:
            metrics["perf/flops_utilization"] = flops / seconds / (self.config.peak_gflops * 1e9)
        if gold_scores is not None:
            metrics["gold/score"] = sum(gold_scores) / len(gold_scores)
        if rollout.member_scores is not None:  # (K, B): an ensemble's members, scored once in the rollout
            members = rollout.member_scores
            # their population std per response (as `RewardEnsemble.score_with_spread`), averaged over the batch
            metrics["reward/ensemble_spread"] = members.std(dim=0, unbiased=False).mean().item()
            metrics["reward/ensemble_mean"] = members.mean().item()
            metrics.update({f"reward/member_{i}": row.mean().item() for i, row in enumerate(members)})
        metrics = self.processes.reduce_metrics(metrics)
        metrics.update({"objective/kl": mean_kl, "objective/kl_coef": kl_coef, "val/var_explained": var_explained,
                        "lr": lr, "train/skipped_steps": self._skipped_steps})
        if self.precision.scaler is not None:
            metrics["train/loss_scale"] = self.precision.scaler.get_scale()
        cfg = self.config
        if self.is_main and cfg.sample_every and self.update % cfg.sample_every == 0:
            seq_kl = (rollout.kl * mask).sum(1)
            rows = [{"prompt": rollout.prompt_texts[i], "response": rollout.texts[i], "score": scores[i].item(),
                     "kl": seq_kl[i].item(), **({"gold": gold_scores[i]} if gold_scores else {})}
                    for i in range(min(cfg.samples_to_log, len(rollout)))]
            self.metrics.log_samples(rows, step=self.update, stage="ppo")
        return metrics

    # ---------------------------------------------------------------- the last good state
    def _keep_last_good(self) -> None:
        """Keep the trainable weights and optimizer state as the state a failed update returns to — only when every
        weight is finite (then the previous one stays, and the update is refused)."""
        weights = self.backend.trainable_state()
        if not all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()):
            raise TrainingStopped(f"non-finite weights before update {self.update + 1}: they were changed outside "
                                  "the trainer")
        self._last_good = {"weights": {k: v.detach().clone() for k, v in weights.items()},
                           "optimizer": None if self.zero else copy.deepcopy(self.optimizer.state_dict()),
                           "zero": self.zero.state() if self.zero else None,
                           "scaler": None if self.precision.scaler is None else self.precision.scaler.state_dict()}

    def _restore_last_good(self) -> None:
        """Put back the state kept before the failed update (weights, optimizer moments, loss scale)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self._last_good is not None:
            self._restore(self._last_good)

    def _restore(self, state: dict) -> None:
        """Put back a state `_keep_last_good` kept. The optimizer gets a copy: it keeps the tensors it is given and
        updates them in place, and a kept state may be put back again (a rollback point outlives one update)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.backend.load_trainable_state(state["weights"])
        if self.zero is not None:
            self.zero.load_state(copy.deepcopy(state["zero"]))
        else:
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        if state["scaler"] is not None:
            self.precision.scaler.load_state_dict(state["scaler"])

    # ---------------------------------------------------------------- the reward-hacking alarm
    def _keep_rollback_point(self) -> None:
        """With `on_alert="rollback"`: keep the last good state (just taken, before this update) as a point a
        rollback can return to, when this update follows a checkpoint (`save_every`; without checkpoints every
        `MonitorConfig.window` updates) or none is kept yet (the state the run started from). An alert at update u
        reads the trailing window u − window + 1 … u, so it returns to the last point at or before u − window
        (`_rollback_target`): older points than that one are dropped."""
        cfg = self.config
        if cfg.on_alert != "rollback":
            return
        every = cfg.save_every or self.monitor_config.window
        points = self._rollback_points
        if not points or self.update % every == 0:
            points.append((self.update, self._last_good))
        earliest_alert = self.update + 1
        while len(points) > 1 and points[1][0] <= earliest_alert - self.monitor_config.window:
            points.pop(0)

    def _rollback_target(self, alert_update: int) -> tuple[int, dict]:
        """The last kept point before the window of updates whose trailing mean raised an alert at `alert_update`
        (the run's first point if there is none that early)."""
        before = [point for point in self._rollback_points if point[0] <= alert_update - self.monitor_config.window]
        return before[-1] if before else self._rollback_points[0]

    def _alarm(self, raised: list[Alert]) -> Alert | None:
        """The first of `raised` (this update's alerts) of a kind `on_alert` acts on, or None — decided on the main
        process, whose log the monitor watches, and the same on every process."""
        cfg = self.config
        if cfg.on_alert == "continue":
            return None
        acting = next((alert for alert in raised if alert.kind in cfg.alarm_kinds), None) if self.is_main else None
        self.processes.where = f"the alarm of update {self.update}"
        return self.processes.broadcast(acting)

    def _act_on(self, alert: Alert) -> None:
        """End the run for `alert` as `on_alert` says: "stop" keeps this update's weights; "rollback" first puts
        back the weights and optimizer state of the rollback point (the last checkpoint before the window of updates
        that raised the alert: `_rollback_target`).
        Either way the status is "stopped" and the reason names the alert; an event ("stopped" / "rollback") says
        it in the log."""
        control = self.control
        cause = f"the {alert.kind} alert at update {alert.update}: {alert.message}"
        if self.config.on_alert == "stop":
            control.state, control.reason = "stopped", f"stopped by {cause}"
            self._event("stopped", control.reason, alert=alert.kind, alert_update=alert.update)
            return
        target, state = self._rollback_target(alert.update)
        self._restore(state)
        self._rollback_points = []  # the weights are that point's now: a later run keeps its own
        every = self.config.save_every
        source = f" (checkpoint-{target}/)" if every and target and target % every == 0 else ""
        control.state, control.reason = "stopped", f"rolled back to update {target}{source} after {cause}"
        self._event("rollback", control.reason, alert=alert.kind, alert_update=alert.update, rolled_back_to=target)

    # ---------------------------------------------------------------- the loop
    def train(self, num_updates: int | None = None, show_progress: bool = True) -> StageResult:
        """Run updates until `num_updates` (default `config.num_updates`) or a stop; then checkpoint to `last/`
        and save the policy to `final/` (the result's `model_path`). A safety stop ends the run with status
        "failed" and the reason; another exception inside an update is raised after `last/` is written with the
        reason (see the module docstring). A reward-hacking alert ends it as `config.on_alert` says (status
        "stopped", the reason naming the alert — and, for a rollback, the update whose weights `final/` and `last/`
        hold; the counters in `last/` stay those of the alert's update)."""
        total = num_updates if num_updates is not None else self.config.num_updates
        control = self.control
        control.state, control.reason = "running", ""
        bar = progress(total=total, desc="PPO", unit="update", disable=not (show_progress and self.is_main))
        bar.update(min(self.update, total))
        # the monitors read the run's log as it is written (the history too: a resumed or continued run); each
        # alert becomes an "alert" event there
        from rlhf_widgets.runtime.monitors import RewardHackingMonitor  # (see __init__)

        monitor = self.monitor = RewardHackingMonitor(self.monitor_config)
        unwatch = monitor.attach(self.metrics)
        start = time.perf_counter()
        try:
            while self.update < total:
                if control.paused:
                    control.state = "paused"
                    self._event("paused", "training paused")
                    control.wait_while_paused()
                    if not control.stop_requested:
                        control.state = "running"
                        self._event("resumed", "training resumed")
                if control.stop_requested:
                    control.state, control.reason = "stopped", "stopped by the user"
                    control.consume_stop()
                    self._event("stopped", "stopped by the user")
                    break
                self._apply(control.take_pending(self.update + 1))
                seen = len(monitor.alerts)
                try:
                    self.step()
                except (PeerLost, KeyboardInterrupt) as err:  # no checkpoint: it needs every process / is unwanted
                    self._restore_last_good()
                    control.state, control.reason = "failed", str(err) or type(err).__name__
                    self._event("error", f"update {self.update + 1} interrupted: {control.reason}; weights restored "
                                "to the last good update")
                    raise
                except Exception as err:
                    self._restore_last_good()
                    stopped = isinstance(err, TrainingStopped)
                    control.state, control.reason = "failed", str(err) if stopped else f"{type(err).__name__}: {err}"
                    self._event("stopped", f"{'safety stop' if stopped else 'update failed'}: {control.reason}; "
                                "weights restored to the last good update")
                    if stopped:
                        break
                    self.save_checkpoint(self.output_dir / "last")
                    raise
                bar.update(1)
                if self.config.save_every and self.update % self.config.save_every == 0:
                    self.save_checkpoint(self.output_dir / f"checkpoint-{self.update}")
                alert = self._alarm(monitor.alerts[seen:])
                if alert is not None:
                    self._act_on(alert)
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

    # ---------------------------------------------------------------- saving
    def save_policy(self, path: str | Path) -> Path:
        """Save the current policy (and tokenizer) into `path`: a directory `load_causal_lm` loads."""
        path = Path(path)
        if self.is_main:
            self.backend.save_policy(path)
            self.tokenizer.save_pretrained(path)
        self.processes.barrier()
        return path

    def save_checkpoint(self, path: str | Path) -> Path:
        """Save everything needed to resume exactly — in `path/trainer_state.pt` (once): trainable weights,
        optimizer, LR schedule, loss scale, β, counters, the number of processes, the run's status and reason, and
        the metrics log up to here; in `path/process_state_<rank>.pt` (one per process): that process's prompt
        order and random streams (CPU, CUDA, Python), and under ZeRO its optimizer partition — plus the policy in
        `path/policy`."""
        path = Path(path)
        self.processes.where = f"saving {path}"
        path.mkdir(parents=True, exist_ok=True)
        torch.save({
            "order": list(self._order),
            "prompt_rng": self.prompt_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
            "zero": self.zero.state() if self.zero else None,
        }, path / PROCESS_FILE.format(rank=self.processes.index))
        if self.is_main:
            torch.save({
                "trainable": self.backend.trainable_state(),
                "optimizer": None if self.zero else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": None if self.precision.scaler is None else self.precision.scaler.state_dict(),
                "kl_coef": self.kl_ctl.value,
                "temperature": self.temperature,
                "update": self.update,
                "episode": self.episode,
                "num_processes": self.processes.count,
                "status": self.control.state,
                "reason": self.control.reason,
                "config": self.config.to_dict(),
                "metrics_entries": len(self.metrics.records) + len(self.metrics.events())
                + len(self.metrics.samples()),
            }, path / STATE_FILE)
            if self.metrics.path is not None and self.metrics.path.is_file():
                shutil.copyfile(self.metrics.path, path / METRICS_FILE)
            self.backend.save_policy(path / "policy")
            self.tokenizer.save_pretrained(path / "policy")
        self.processes.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a `save_checkpoint` state written by as many processes as this run has (the metrics log is
        continued by the constructor). Each process reads the shared state and its own random streams."""
        path = Path(path)
        state = torch.load(path / STATE_FILE, weights_only=False)
        written_by, here = state.get("num_processes", 1), self.processes.count
        if written_by != here:
            raise ValueError(
                f"checkpoint {path} was written by {written_by} process(es) and this run has {here}: each process's "
                "prompt order and random streams are saved separately, so only the same count resumes exactly — "
                f"launch with `accelerate launch --num_processes {written_by} ...` (or `python` for 1)")
        own = path / PROCESS_FILE.format(rank=self.processes.index)
        if not own.is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {own.name} (process {self.processes.index}'s random "
                                    "streams): it is incomplete, or was written by an older version")
        rng = torch.load(own, weights_only=False)
        if (rng["zero"] is None) != (self.zero is None):
            raise ValueError(f"checkpoint {path} was written {'with' if rng['zero'] is not None else 'without'} "
                             "DeepSpeed ZeRO and this run is launched the other way: resume under the same launcher "
                             "config")
        self.backend.load_trainable_state(state["trainable"])
        if self.zero is not None:
            self.zero.load_state(rng["zero"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] is not None and self.precision.scaler is not None:
            self.precision.scaler.load_state_dict(state["scaler"])
        self.kl_ctl.value = state["kl_coef"]
        self.temperature = state["temperature"]
        self.update, self.episode = state["update"], state["episode"]
        self._order = rng["order"]
        self.prompt_rng.set_state(rng["prompt_rng"])
        torch.set_rng_state(rng["torch_rng"])
        if rng["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda_rng"])
        random.setstate(rng["python_rng"])
        self._event("resumed", f"resumed from {path} at update {self.update}", checkpoint=str(path))


def _combined_stats(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """The masked-mean stats of `core.ppo_policy_loss` / `ppo_value_loss` over pieces, each (stats, its token
    count), as over their union: means weighted by tokens; `ratio_var` (Bessel-corrected) by the pieces' sums of
    squares plus their means' spread (the law of total variance)."""
    total = sum(count for _, count in parts)
    if len(parts) == 1 or not total:
        return parts[0][0]
    combined = {key: sum(part[key] * count for part, count in parts) / total for key in parts[0][0]}
    if "ratio_var" in combined:
        mean = combined["ratio_mean"]
        squares = sum(part["ratio_var"] * max(count - 1, 0) + count * (part["ratio_mean"] - mean) ** 2
                      for part, count in parts)
        combined["ratio_var"] = squares / (total - 1) if total > 1 else 0.0
    return combined


def _accelerator(config: PPOConfig) -> Accelerator:
    """The run's `Accelerator`: CUDA with NCCL when there is a GPU, else CPU processes over gloo (a DeepSpeed launch
    without a GPU needs gloo named explicitly). `collective_timeout_s` bounds every collective's wait. An FSDP
    launch is refused (see the message)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ValueError("PPO under FSDP: FSDP shards the parameters themselves, which PPO's shared base (adapter "
                         "switches, module swaps, generate) cannot run on; launch PPO with DeepSpeed ZeRO-2 "
                         "(rlhf_widgets/accelerate_configs/zero2.yaml) or plain data parallel (--multi_gpu). FSDP "
                         "is for the TRL stages")
    cuda = torch.cuda.is_available()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    backend = "nccl" if cuda else "gloo" if launched else None
    handler = InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=config.collective_timeout_s))
    engine = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return Accelerator(cpu=not cuda and not engine, kwargs_handlers=[handler])


def _continues(log: bytes, snapshot: bytes) -> bool:
    """`log` is `snapshot` followed by events only (no metric records logged after it)."""
    if not log.startswith(snapshot):
        return False
    for line in log[len(snapshot):].splitlines():
        try:
            if json.loads(line).get("kind") == "metrics":
                return False
        except json.JSONDecodeError:  # a half-written last line (a crash mid-write): MetricsLog.load cuts it
            continue
    return True


def _reward_model_shape(reward) -> ModelShape | None:
    """The matmul shape of a `RewardModel`'s model (it counts the tokens it scores), else None: a reward function's
    FLOPs are unknown and not counted."""
    model = getattr(reward, "model", None)
    if not isinstance(getattr(reward, "tokens_scored", None), int) or not isinstance(model, torch.nn.Module):
        return None
    try:
        return ModelShape.from_model(model)
    except (AttributeError, ZeroDivisionError):
        return None


def _ppo_lora(settings: ModelConfig):
    """PPO's adapters: the LoRA rank, alpha and targets of `settings`, with dropout 0 — the rollout's and the
    update's forwards must compute the same function."""
    if settings.lora_dropout:
        warnings.warn(f"ModelConfig.lora_dropout={settings.lora_dropout} is not used for PPO's adapters: they run "
                      "without dropout, so the rollout's log-probs and the update's describe the same policy",
                      stacklevel=3)
    lora = lora_config(as_model_config(settings, use_peft=True))
    lora.lora_dropout = 0.0
    return lora


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
