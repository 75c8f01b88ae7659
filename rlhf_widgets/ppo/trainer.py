"""PPOTrainer: the recipe — rollout → score → KL-shaped rewards → GAE → epochs of clipped minibatch updates.

One readable `step()`, numbered after "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024);
the pieces live beside it: `rollout` (steps 1–6 and the `Rollout` they fill), `core` (the math), `backbone`
(where policy, reference and value live), `control` (pause / resume / stop / settings from the notebook),
`memory` (micro-batch size, heap trimming). Built on `accelerate`: under `accelerate launch` each process rolls
out its own prompts and gradients are averaged across processes before every optimizer step, so the replicas
stay identical.
"""

from __future__ import annotations

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
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rlhf_widgets.config import SANDBOX, ModelConfig, as_model_config
from rlhf_widgets.data import prompt_list
from rlhf_widgets.metrics import MetricsLog
from rlhf_widgets.models import ModelLike, load_causal_lm, lora_config, model_name
from rlhf_widgets.ppo import core
from rlhf_widgets.ppo.backbone import SeparateModels, SharedBackbone
from rlhf_widgets.ppo.config import PPOConfig
from rlhf_widgets.ppo.control import TrainingControl
from rlhf_widgets.ppo.memory import auto_micro_batch_size, release_freed_memory
from rlhf_widgets.ppo.rollout import Rollout, TrainingStopped, forward_inputs, make_rollout, shape_rewards
from rlhf_widgets.rewards import RewardFunction, as_reward_function, score_responses
from rlhf_widgets.stages import FINAL, StageResult, is_quantized
from rlhf_widgets.trackers import attach_trackers

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"


class PPOTrainer:
    """PPO-RLHF from an SFT model against a reward function; see `rlhf_widgets.ppo.backbone` for the roles.

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
        resume_from: a checkpoint directory written by `save_checkpoint` (`checkpoint-N/`, `last/`).
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
    ) -> None:
        config = config or PPOConfig()
        self.config = config
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.is_main = self.accelerator.is_main_process
        torch.manual_seed(config.seed)  # identical adapter init on every process
        base, self.tokenizer, self.model_settings = self._load(model)
        self.model_config = base.config
        quantized = is_quantized(base)
        if config.shared_base:
            self.backend = SharedBackbone(
                base, _ppo_lora(self.model_settings),
                activation_checkpointing=config.uses_activation_checkpointing(quantized),
                value_layers=config.value_layers(base.config.num_hidden_layers),
                fast_paths=config.fast_paths, merge_for_generation=config.merge_for_generation)
        elif quantized:
            raise ValueError("PPOConfig(shared_base=False) trains full models, which a 4-bit base cannot: use "
                             "shared_base=True (LoRA adapters on the quantized base) or load without load_in_4bit")
        else:
            self.backend = SeparateModels(base)
        self.backend.value_head.to(self.accelerator.device)
        self.reward = as_reward_function(reward)
        self.gold = gold
        self.prompts = prompt_list(prompts)
        self.output_dir = Path(config.output_dir)
        self.optimizer = torch.optim.AdamW(
            [{"params": self.backend.policy_parameters}, {"params": self.backend.value_parameters}],
            lr=config.learning_rate, eps=1e-5,
        )
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
        self._last_good: dict[str, torch.Tensor] | None = None
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
            # a shared base keeps an SFT adapter as an adapter: it becomes the policy's start and the reference
            base, tokenizer = load_causal_lm(settings, merge_adapter=not self.config.shared_base)
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
        return auto_micro_batch_size(self.model_config, seq_len, cfg.mini_batch_size)

    # ---------------------------------------------------------------- one update
    def step(self) -> dict[str, float]:
        """Run one PPO update and return its metrics (also logged)."""
        cfg = self.config
        start = time.perf_counter()
        self._last_good = {k: v.detach().clone() for k, v in self.backend.trainable_state().items()}

        # 1–4. rollout: sample from the current policy, truncate after EOS, log-probs of policy and reference,
        #      values, and reward scores (the missing-EOS penalty applied)
        try:
            rollout = make_rollout(
                self.backend, self.tokenizer, self._next_prompts(), self.reward, temperature=self.temperature,
                max_new_tokens=cfg.max_new_tokens, missing_eos_penalty=cfg.missing_eos_penalty,
                recorded_logprobs=cfg.rollout_logprobs == "generate", forward_batch_size=cfg.rollout_batch_size,
                device=self.accelerator.device)
        except TrainingStopped as err:
            raise TrainingStopped(f"{err} of update {self.update + 1}") from None
        # 5–6. KL-shaped per-token rewards (−β·KL, the score at EOS), GAE, advantage whitening
        kl_coef = self.kl_ctl.value
        shape_rewards(rollout, kl_coef=kl_coef, kl_estimator=cfg.kl_estimator, gamma=cfg.gamma, lam=cfg.lam,
                      whiten_rewards=cfg.whiten_rewards, whiten_advantages=cfg.whiten_advantages)
        mask = rollout.response_mask
        mean_kl = (rollout.kl * mask).sum(1).mean().item()
        mean_k1 = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1).mean().item()
        if mean_k1 < cfg.min_kl:
            raise TrainingStopped(f"mean k1 KL {mean_k1:.3f} < {cfg.min_kl} at update {self.update + 1}: the "
                                  "policy is scored as more likely than the reference everywhere it samples — "
                                  "check the reference model and the temperature")
        rollout_seconds = time.perf_counter() - start

        # 7. PPO epochs of clipped minibatch updates (policy, then value; one optimizer step per minibatch)
        release_freed_memory()
        stats = self._ppo_epochs(rollout)

        # 8. adapt β and report
        n_episodes = len(rollout) * self.accelerator.num_processes
        self.kl_ctl.update(mean_kl, n_episodes)
        self.update += 1
        self.episode += n_episodes
        metrics = self._report(rollout, stats, mean_kl, kl_coef)
        metrics["time/rollout"] = rollout_seconds
        metrics["time/update"] = time.perf_counter() - start - rollout_seconds
        metrics["eps"] = n_episodes / (time.perf_counter() - start)
        metrics["episode"] = self.episode
        if self.is_main:
            self.metrics.log(metrics, step=self.update, stage="ppo")
        return metrics

    def _ppo_epochs(self, rollout: Rollout) -> dict[str, list[float]]:
        """Step 7: `num_ppo_epochs` passes over the rollout in shuffled minibatches (gradients accumulated over
        micro-batches, averaged across processes, clipped, one AdamW step each); returns per-micro-batch stats."""
        cfg = self.config
        dev = rollout.sequences.device
        context, keep = rollout.context_length, rollout.responses.shape[1] + 1
        stats: dict[str, list[float]] = defaultdict(list)
        micro = self.last_micro_batch_size = self._micro_batch_size(rollout.sequences.shape[1])
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(len(rollout), generator=self.prompt_rng).tolist()
            for mb_start in range(0, len(rollout), cfg.mini_batch_size):
                minibatch = order[mb_start : mb_start + cfg.mini_batch_size]
                for mc_start in range(0, len(minibatch), micro):
                    idx = torch.tensor(minibatch[mc_start : mc_start + micro], device=dev)
                    weight = len(idx) / len(minibatch)
                    inputs = forward_inputs(rollout.sequences[idx], rollout.attention_mask[idx])
                    resp_mask = rollout.response_mask[idx]
                    logits = self.backend.policy_logits(**inputs, logits_to_keep=keep)[:, :-1]
                    new_logprobs = core.logprobs_from_logits(logits, rollout.responses[idx], self.temperature)
                    pg_loss, pg_stats = core.ppo_policy_loss(new_logprobs, rollout.logprobs[idx],
                                                             rollout.advantages[idx], resp_mask, cfg.cliprange)
                    ratio = pg_stats["ratio_mean"]
                    if not math.isfinite(pg_loss.item()) or not (1 / cfg.max_ratio < ratio < cfg.max_ratio):
                        raise TrainingStopped(f"policy ratio {ratio:.3g} / loss {pg_loss.item():.3g} at update "
                                              f"{self.update + 1}: the update diverged — lower the learning rate")
                    (weight * pg_loss).backward()
                    with torch.no_grad():
                        entropy = core.masked_mean(core.entropy_from_logits(logits.detach() / self.temperature),
                                                   resp_mask)
                    del logits, new_logprobs
                    trunk = None if rollout.value_trunk is None else rollout.value_trunk[idx]
                    new_values = self.backend.values(**inputs, trunk=trunk)[:, context - 1 : -1]
                    vf_loss, vf_stats = core.ppo_value_loss(new_values, rollout.values[idx], rollout.returns[idx],
                                                            resp_mask, cfg.cliprange_value)
                    if not math.isfinite(vf_loss.item()):
                        raise TrainingStopped(f"non-finite value loss at update {self.update + 1}")
                    (weight * cfg.vf_coef * vf_loss).backward()
                    for k, v in {"policy/approxkl_avg": pg_stats["approx_kl"],
                                 "policy/clipfrac_avg": pg_stats["clipfrac"], "loss/policy_avg": pg_loss.item(),
                                 "loss/value_avg": vf_loss.item(), "val/clipfrac_avg": vf_stats["clipfrac"],
                                 "val/ratio": pg_stats["ratio_mean"], "val/ratio_var": pg_stats["ratio_var"],
                                 "policy/entropy_avg": entropy.item()}.items():
                        stats[k].append(float(v))
                self._sync_gradients()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self._trainable(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                release_freed_memory()
        return stats

    def _report(self, rollout: Rollout, stats: dict[str, list[float]], mean_kl: float,
                kl_coef: float) -> dict[str, float]:
        """Step 8's metrics (TRL's PPO names), averaged across processes; logs the sample table."""
        mask, scores, non_score = rollout.response_mask, rollout.scores, rollout.non_score_rewards
        with torch.no_grad():
            returns_var = core.masked_var(rollout.returns, mask)
            residual_var = core.masked_var(rollout.returns - rollout.values, mask)
            var_explained = 1 - residual_var / returns_var.clamp(min=1e-8)
        metrics = {k: sum(v) / len(v) for k, v in stats.items()}
        metrics.update({
            "objective/kl": mean_kl,
            "objective/entropy": (-rollout.logprobs * mask).sum(1).mean().item(),
            "objective/non_score_reward": (non_score * mask).sum(1).mean().item(),
            "objective/rlhf_reward": (scores + (non_score * mask).sum(1)).mean().item(),
            "objective/scores": scores.mean().item(),
            "objective/kl_coef": kl_coef,
            "val/num_eos_tokens": rollout.contains_eos.sum().item(),
            "val/var_explained": var_explained.item(),
            "val/response_length": mask.sum(1).mean().item(),
            "lr": self.optimizer.param_groups[0]["lr"],
        })
        gold_scores = None
        if self.gold is not None:
            gold_scores = score_responses(self.gold, rollout.prompts, rollout.texts).tolist()
            metrics["gold/score"] = sum(gold_scores) / len(gold_scores)
        metrics = self._average_across_processes(metrics)
        cfg = self.config
        if self.is_main and cfg.sample_every and self.update % cfg.sample_every == 0:
            seq_kl = (rollout.kl * mask).sum(1)
            rows = [{"prompt": rollout.prompt_texts[i], "response": rollout.texts[i], "score": scores[i].item(),
                     "kl": seq_kl[i].item(), **({"gold": gold_scores[i]} if gold_scores else {})}
                    for i in range(min(cfg.samples_to_log, len(rollout)))]
            self.metrics.log_samples(rows, step=self.update, stage="ppo")
        return metrics

    # ---------------------------------------------------------------- the loop
    def train(self, num_updates: int | None = None, show_progress: bool = True) -> StageResult:
        """Run updates until `num_updates` (default `config.num_updates`) or a stop; then checkpoint to `last/`
        and save the policy to `final/` (the result's `model_path`)."""
        total = num_updates if num_updates is not None else self.config.num_updates
        control = self.control
        control.state, control.reason = "running", ""
        bar = tqdm(total=total, initial=min(self.update, total), desc="PPO",
                   disable=not (show_progress and self.is_main))
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
                self._apply(control.take_pending())
                try:
                    self.step()
                except TrainingStopped as err:
                    self.backend.load_trainable_state(self._last_good)
                    self.optimizer.zero_grad(set_to_none=True)
                    control.state, control.reason = "failed", str(err)
                    self._event("stopped", f"safety stop: {err}; weights restored to the last good update")
                    break
                bar.update(1)
                if self.config.save_every and self.update % self.config.save_every == 0:
                    self.save_checkpoint(self.output_dir / f"checkpoint-{self.update}")
            else:
                control.state = "finished"
        except BaseException as err:
            control.state, control.reason = "failed", repr(err)
            self._event("error", f"training failed: {err!r}")
            raise
        finally:
            bar.close()
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
            if name == "learning_rate":
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

    def _sync_gradients(self) -> None:
        """Average gradients across processes (one flat all-reduce) so every replica takes the same step."""
        if self.accelerator.num_processes == 1:
            return
        params = [p for p in self._trainable() if p.grad is not None]
        flat = torch.cat([p.grad.flatten() for p in params])
        flat = self.accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def _average_across_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], device=self.accelerator.device, dtype=torch.float64)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist(), strict=True))

    # ---------------------------------------------------------------- saving
    def save_policy(self, path: str | Path) -> Path:
        """Save the current policy (and tokenizer) into `path`: a directory `load_causal_lm` loads."""
        path = Path(path)
        if self.is_main:
            self.backend.save_policy(path)
            self.tokenizer.save_pretrained(path)
        self.accelerator.wait_for_everyone()
        return path

    def save_checkpoint(self, path: str | Path) -> Path:
        """Save everything needed to resume exactly — trainable weights, optimizer, β, RNG streams, counters, and
        the metrics log up to here — plus the policy in `path/policy`."""
        path = Path(path)
        if self.is_main:
            path.mkdir(parents=True, exist_ok=True)
            torch.save({
                "trainable": self.backend.trainable_state(),
                "optimizer": self.optimizer.state_dict(),
                "kl_coef": self.kl_ctl.value,
                "temperature": self.temperature,
                "update": self.update,
                "episode": self.episode,
                "order": list(self._order),
                "prompt_rng": self.prompt_rng.get_state(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "config": self.config.to_dict(),
                "metrics_entries": len(self.metrics.records) + len(self.metrics.events())
                + len(self.metrics.samples()),
            }, path / STATE_FILE)
            if self.metrics.path is not None and self.metrics.path.is_file():
                shutil.copyfile(self.metrics.path, path / METRICS_FILE)
            self.backend.save_policy(path / "policy")
            self.tokenizer.save_pretrained(path / "policy")
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a `save_checkpoint` state (the metrics log is continued by the constructor)."""
        state = torch.load(Path(path) / STATE_FILE, weights_only=False)
        self.backend.load_trainable_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.temperature = state["temperature"]
        self.update, self.episode, self._order = state["update"], state["episode"], state["order"]
        self.prompt_rng.set_state(state["prompt_rng"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self._event("resumed", f"resumed from {path} at update {self.update}", checkpoint=str(path))


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
) -> StageResult:
    """PPO in one call, the same shape as every other stage: `PPOTrainer(...).train()`."""
    trainer = PPOTrainer(prompts, config, model=model, reward=reward, metrics=metrics, gold=gold,
                         resume_from=resume_from)
    return trainer.train()
