"""PPOTrainer: rollout → score → KL-shaped rewards → GAE → epochs of clipped minibatch updates.

One readable `step()` (numbered comments follow the N+ Implementation Details of RLHF with PPO,
Huang et al. 2024). Control from the notebook goes through `TrainingControl` (pause / resume / stop /
change lr, β, temperature between updates); every change and every stop lands in the MetricsLog.
Built on `accelerate`: under `accelerate launch` each process rolls out its own prompts and gradients
are averaged across processes before every optimizer step, so the replicas stay identical.
"""

from __future__ import annotations

import ctypes
import functools
import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from rlhf_widgets.config import ModelConfig
from rlhf_widgets.data import last_user_content
from rlhf_widgets.generation import encode_prompts
from rlhf_widgets.metrics import MetricsLog
from rlhf_widgets.models import load_causal_lm
from rlhf_widgets.ppo import core
from rlhf_widgets.ppo.config import PPOConfig
from rlhf_widgets.ppo.models import SeparateModels, SharedBackbone

ScoreFn = Callable[[list, list[str]], "torch.Tensor | Sequence[float]"]
STATE_FILE = "trainer_state.pt"
CPU_ACTIVATION_BUDGET = 256 * 2**20
"""bytes of saved activations per forward that `micro_batch_size=None` aims for on CPU"""


class TrainingStopped(RuntimeError):
    """Raised inside `step()` when a safety rail trips; the message is the diagnosis."""


@dataclass
class TrainingControl:
    """Thread-safe remote control, used by the notebook's control panel while `train()` runs.

    Changes requested with `set(...)` are applied between updates and logged as events.
    """

    state: str = "idle"
    """idle | running | paused | stopped | finished | failed"""
    reason: str = ""
    """why the run stopped or failed"""
    _resume: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop: bool = False
    _pending: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._resume.set()

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def stop(self) -> None:
        """Finish the current update, save, and end the run."""
        self._stop = True
        self._resume.set()

    def set(self, **changes: float) -> None:
        """Queue changes of `learning_rate`, `kl_coef` or `temperature` for the next update."""
        allowed = {"learning_rate", "kl_coef", "temperature"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"TrainingControl.set: cannot change {sorted(unknown)}; allowed: {sorted(allowed)}")
        for name, value in changes.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainingControl.set: {name}={value!r} must be a finite number >= 0")
            if name in ("learning_rate", "temperature") and value == 0:
                raise ValueError(f"TrainingControl.set: {name} must be > 0")
        with self._lock:
            self._pending.update(changes)

    def take_pending(self) -> dict:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending


class SampledLogprobs(LogitsProcessor):
    """Keeps the log-prob under softmax(logits / T) of every token `generate` samples: the rollout's "old"
    log-probs without a second policy forward over the batch (TRL's PPO read them from its generation
    logits too), computed by the same `core.logprobs_from_logits` as the training forwards.

    Called once per generated token with that step's logits; the token sampled from them is only known at
    the next call (or, for the last one, from the output), so one (B, V) step is held at a time. It returns
    the logits unchanged and runs before the temperature warper, so the distribution it records is the
    one sampled from.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self._pending: torch.Tensor | None = None
        self._picked: list[torch.Tensor] = []

    def _pick(self, tokens: torch.Tensor) -> torch.Tensor:
        return core.logprobs_from_logits(self._pending.unsqueeze(1), tokens.unsqueeze(1), self.temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._picked.append(self._pick(input_ids[:, -1]))
        self._pending = scores.detach().clone()  # later processors may work in place
        return scores

    def logprobs(self, responses: torch.Tensor) -> torch.Tensor:
        """(B, T_new) sampled tokens → (B, T_new) their log-probs."""
        if self._pending is None or len(self._picked) + 1 != responses.shape[1]:
            raise RuntimeError(f"SampledLogprobs saw {len(self._picked) + int(self._pending is not None)} "
                               f"generation steps for {responses.shape[1]} response tokens")
        return torch.cat([*self._picked, self._pick(responses[:, -1])], dim=1)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent elsewhere (macOS, musl)
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the OS (glibc `malloc_trim(0)`; no-op elsewhere).

    glibc keeps freed CPU tensor memory mapped for reuse, and between PPO phases (generation, the rollout
    forwards, each minibatch's graph) the sizes differ enough that the kept pages pile up: at the 100M-param
    benchmark shape RSS grew ~1.5 GB above the working set. Called between phases; it costs milliseconds.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _score_to_tensor(scores) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        return scores.detach().float().cpu()
    return torch.tensor(scores, dtype=torch.float)


class PPOTrainer:
    """PPO-RLHF on one (optionally 4-bit) base model; see `rlhf_widgets.ppo.models` for the roles.

    Args:
        config: the PPO knobs.
        policy: the SFT model (directory, hub id, or a `ModelConfig`); policy and reference start from it.
        reward: a `RewardModel`, or any `score(prompts, responses) -> (N,)` callable.
        prompts: training prompts (strings or chat messages).
        metrics: where metrics, events and samples go (default: `output_dir/metrics.jsonl`).
        gold: optional `gold(prompt, response) -> float` logged as `gold/score` (sandbox only; never trained on).
        resume_from: a checkpoint directory written by `save_checkpoint`.
    """

    def __init__(
        self,
        config: PPOConfig,
        policy: str | ModelConfig,
        reward,
        prompts: Sequence,
        metrics: MetricsLog | None = None,
        gold: Callable[[str, str], float] | None = None,
        resume_from: str | Path | None = None,
    ) -> None:
        if len(prompts) == 0:
            raise ValueError("PPOTrainer: no prompts given")
        self.config = config
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.is_main = self.accelerator.is_main_process
        torch.manual_seed(config.seed)  # identical adapter init on every process
        model_cfg = ModelConfig(model_name_or_path=policy) if isinstance(policy, str) else policy
        model_cfg.load_in_4bit = config.load_in_4bit
        model_cfg.use_peft = config.load_in_4bit or model_cfg.use_peft
        model_cfg.device = "cuda" if self.accelerator.device.type == "cuda" else "cpu"
        base, self.tokenizer = load_causal_lm(model_cfg, merge_adapter=not config.shared_base)
        self.model_config = base.config
        if config.shared_base:
            lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                              target_modules="all-linear", task_type="CAUSAL_LM")
            self.backend = SharedBackbone(base, lora, activation_checkpointing=config.use_activation_checkpointing,
                                          value_layers=config.value_layers(base.config.num_hidden_layers),
                                          merge_for_generation=config.merge_for_generation)
        else:
            self.backend = SeparateModels(base)
        self.backend.value_head.to(self.accelerator.device)
        self.score_fn = reward.score if hasattr(reward, "score") else reward
        self.gold = gold
        self.prompts = list(prompts)
        out = Path(config.output_dir)
        self.output_dir = out
        if metrics is None:
            metrics = MetricsLog(out / "metrics.jsonl" if self.is_main else None, run_name="ppo")
        self.metrics = metrics
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
        self.episode = 0
        # per-process streams: prompt order and sampling differ across data-parallel replicas
        rank_seed = config.seed + 1000 * self.accelerator.process_index
        self.prompt_rng = torch.Generator().manual_seed(rank_seed)
        torch.manual_seed(rank_seed)
        random.seed(rank_seed)
        self._order: list[int] = []
        self.last_micro_batch_size: int | None = None
        self._last_good: dict[str, torch.Tensor] | None = None
        if resume_from is not None:
            self.load_checkpoint(resume_from)

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
        c = self.model_config
        hidden = c.hidden_size
        mlp = getattr(c, "intermediate_size", None) or 4 * hidden
        # fp32 tensors a Llama-style block keeps for backward, per token: ~12 of hidden size, ~4 of MLP size
        per_row = seq_len * c.num_hidden_layers * (12 * hidden + 4 * mlp) * 4
        fit = max(1, min(cfg.mini_batch_size, CPU_ACTIVATION_BUDGET // per_row))
        return max(d for d in range(1, fit + 1) if cfg.mini_batch_size % d == 0)

    def _forward_inputs(self, seq: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        # position ids from the mask: left padding must not shift positions of the real tokens
        return {"input_ids": seq, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}

    # ---------------------------------------------------------------- one update
    def step(self) -> dict[str, float]:
        """Run one PPO update and return its metrics (also logged)."""
        cfg, dev, tok = self.config, self.accelerator.device, self.tokenizer
        start = time.perf_counter()
        self._last_good = {k: v.detach().clone() for k, v in self.backend.trainable_state().items()}

        # 1. rollout: sample responses from the current policy (left-padded queries, stop at EOS)
        prompts = self._next_prompts()
        query = encode_prompts(tok, prompts, dev)
        q_ids, q_mask = query["input_ids"], query["attention_mask"]
        context = q_ids.shape[1]
        sampled = SampledLogprobs(self.temperature) if cfg.rollout_logprobs == "generate" else None
        with torch.no_grad():
            out = self.backend.generate(
                input_ids=q_ids, attention_mask=q_mask, do_sample=True, temperature=self.temperature,
                top_k=0, top_p=1.0, max_new_tokens=cfg.max_new_tokens,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                logits_processor=LogitsProcessorList([sampled] if sampled else []),
            )
        responses = out[:, context:]
        # 2. truncate after the first EOS; the mask covers the response up to and including it
        is_eos = responses == tok.eos_token_id
        contains_eos = is_eos.any(dim=1)
        last = torch.where(contains_eos, is_eos.int().argmax(dim=1), responses.shape[1] - 1)
        positions = torch.arange(responses.shape[1], device=dev).unsqueeze(0)
        r_mask = (positions <= last.unsqueeze(1)).long()
        rollout_logprobs = sampled.logprobs(responses) if sampled else None
        responses = torch.where(r_mask.bool(), responses, torch.full_like(responses, tok.pad_token_id))
        seq = torch.cat([q_ids, responses], dim=1)
        mask = torch.cat([q_mask, r_mask], dim=1)
        resp_mask = r_mask.float()
        keep = responses.shape[1] + 1  # LM head on positions context-1 … end: the ones that predict the response
        del out, sampled

        # 3. log-probs of policy (from the sampling step, or one more forward) and reference, and values —
        #    logits / temperature, in chunks
        logprobs, ref_logprobs, values, trunks = [], [], [], []
        with torch.no_grad():
            for i in range(0, len(seq), cfg.rollout_batch_size):
                inputs = self._forward_inputs(seq[i : i + cfg.rollout_batch_size], mask[i : i + cfg.rollout_batch_size])
                labels = responses[i : i + cfg.rollout_batch_size]
                if rollout_logprobs is None:
                    logits = self.backend.policy_logits(**inputs, logits_to_keep=keep)[:, :-1]
                    logprobs.append(core.logprobs_from_logits(logits, labels, self.temperature))
                    del logits
                # + the frozen lower layers of the value network (None when the value adapter spans them all)
                ref, trunk = self.backend.reference_logits(**inputs, logits_to_keep=keep, return_trunk=True)
                ref_logprobs.append(core.logprobs_from_logits(ref[:, :-1], labels, self.temperature))
                del ref
                trunks.append(trunk)
                values.append(self.backend.values(**inputs, trunk=trunk)[:, context - 1 : -1])
        logprobs = torch.cat(logprobs) if rollout_logprobs is None else rollout_logprobs
        ref_logprobs, values = torch.cat(ref_logprobs), torch.cat(values)
        trunks = torch.cat(trunks) if trunks[0] is not None else None

        # 4. score the decoded responses; penalise those cut off before EOS
        texts = [tok.decode(r[m.bool()], skip_special_tokens=True).strip()
                 for r, m in zip(responses, r_mask, strict=True)]
        prompt_texts = [last_user_content(p) if not isinstance(p, str) else p for p in prompts]
        scores = _score_to_tensor(self.score_fn(prompts, texts)).to(dev)
        if cfg.missing_eos_penalty:
            scores = core.apply_missing_eos_penalty(scores, contains_eos, cfg.missing_eos_penalty)
        for name, t in (("log-probs", logprobs), ("reference log-probs", ref_logprobs), ("values", values),
                        ("reward scores", scores)):
            if not torch.isfinite(t).all():
                raise TrainingStopped(f"non-finite {name} in the rollout of update {self.update + 1}")

        # 5. KL-shaped per-token rewards: −β·KL everywhere, the score at the EOS slot
        kl_coef = self.kl_ctl.value
        rewards, non_score, kl = core.compute_rewards(scores, logprobs, ref_logprobs, resp_mask, kl_coef,
                                                      kind=cfg.kl_estimator)
        if cfg.whiten_rewards:
            rewards = core.masked_whiten(rewards, resp_mask, shift_mean=False)
        # 6. GAE (γ=1, λ=0.95) and advantage whitening
        advantages, returns = core.gae(rewards, values, resp_mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = core.masked_whiten(advantages, resp_mask)
        mean_kl = (kl * resp_mask).sum(1).mean()
        if mean_kl.item() < cfg.min_kl:
            raise TrainingStopped(f"mean KL {mean_kl.item():.3f} < {cfg.min_kl} at update {self.update + 1}: the "
                                  "policy is scored as more likely than the reference everywhere it samples — "
                                  "check the reference model and the temperature")

        # 7. PPO epochs of clipped minibatch updates (policy, then value; one optimizer step)
        release_freed_memory()
        stats: dict[str, list[float]] = defaultdict(list)
        micro = self.last_micro_batch_size = self._micro_batch_size(seq.shape[1])
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(seq), generator=self.prompt_rng).tolist()
            for mb_start in range(0, len(seq), cfg.mini_batch_size):
                minibatch = order[mb_start : mb_start + cfg.mini_batch_size]
                # micro-batches accumulate gradients: the same step, less activation/logit memory
                for mc_start in range(0, len(minibatch), micro):
                    idx = torch.tensor(minibatch[mc_start : mc_start + micro], device=dev)
                    weight = len(idx) / len(minibatch)
                    inputs = self._forward_inputs(seq[idx], mask[idx])
                    logits = self.backend.policy_logits(**inputs, logits_to_keep=keep)[:, :-1]
                    new_logprobs = core.logprobs_from_logits(logits, responses[idx], self.temperature)
                    pg_loss, pg_stats = core.ppo_policy_loss(new_logprobs, logprobs[idx], advantages[idx],
                                                             resp_mask[idx], cfg.cliprange)
                    ratio = pg_stats["ratio_mean"]
                    if not math.isfinite(pg_loss.item()) or not (1 / cfg.max_ratio < ratio < cfg.max_ratio):
                        raise TrainingStopped(f"policy ratio {ratio:.3g} / loss {pg_loss.item():.3g} at update "
                                              f"{self.update + 1}: the update diverged — lower the learning rate")
                    (weight * pg_loss).backward()
                    with torch.no_grad():
                        entropy = core.masked_mean(core.entropy_from_logits(logits.detach() / self.temperature),
                                                   resp_mask[idx])
                    del logits, new_logprobs
                    new_values = self.backend.values(**inputs, trunk=None if trunks is None else trunks[idx])
                    new_values = new_values[:, context - 1 : -1]
                    vf_loss, vf_stats = core.ppo_value_loss(new_values, values[idx], returns[idx], resp_mask[idx],
                                                            cfg.cliprange_value)
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

        # 8. adapt β and report
        n_episodes = len(seq) * self.accelerator.num_processes
        self.kl_ctl.update(mean_kl.item(), n_episodes)
        self.update += 1
        self.episode += n_episodes
        with torch.no_grad():
            returns_var = core.masked_var(returns, resp_mask)
            var_explained = 1 - core.masked_var(returns - values, resp_mask) / returns_var.clamp(min=1e-8)
        metrics = {k: sum(v) / len(v) for k, v in stats.items()}
        metrics.update({
            "objective/kl": mean_kl.item(),
            "objective/entropy": (-logprobs * resp_mask).sum(1).mean().item(),
            "objective/non_score_reward": (non_score * resp_mask).sum(1).mean().item(),
            "objective/rlhf_reward": (scores + (non_score * resp_mask).sum(1)).mean().item(),
            "objective/scores": scores.mean().item(),
            "objective/kl_coef": kl_coef,
            "val/num_eos_tokens": contains_eos.sum().item(),
            "val/var_explained": var_explained.item(),
            "val/response_length": resp_mask.sum(1).mean().item(),
            "lr": self.optimizer.param_groups[0]["lr"],
        })
        gold_scores = None
        if self.gold is not None:
            gold_scores = [self.gold(p, t) for p, t in zip(prompt_texts, texts, strict=True)]
            metrics["gold/score"] = sum(gold_scores) / len(gold_scores)
        metrics = self._average_across_processes(metrics)
        metrics["eps"] = n_episodes / (time.perf_counter() - start)
        metrics["episode"] = self.episode
        if self.is_main:
            self.metrics.log(metrics, step=self.update, stage="ppo")
            if cfg.sample_every and self.update % cfg.sample_every == 0:
                seq_kl = (kl * resp_mask).sum(1)
                rows = [{"prompt": prompt_texts[i], "response": texts[i], "score": scores[i].item(),
                         "kl": seq_kl[i].item(), **({"gold": gold_scores[i]} if gold_scores else {})}
                        for i in range(min(cfg.samples_to_log, len(texts)))]
                self.metrics.log_samples(rows, step=self.update)
        return metrics

    # ---------------------------------------------------------------- the loop
    def train(self, num_updates: int | None = None, show_progress: bool = True) -> MetricsLog:
        """Run updates until `num_updates` (default `config.num_updates`) or a stop; checkpoint at the end."""
        total = num_updates if num_updates is not None else self.config.num_updates
        control = self.control
        control.state = "running"
        bar = tqdm(total=total, initial=min(self.update, total), desc="PPO",
                   disable=not (show_progress and self.is_main))
        try:
            while self.update < total:
                if not control._resume.is_set():
                    control.state = "paused"
                    self._event("paused", "training paused")
                    control._resume.wait()
                    if not control._stop:
                        control.state = "running"
                        self._event("resumed", "training resumed")
                if control._stop:
                    control.state, control.reason = "stopped", "stopped by the user"
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
        self.save_checkpoint(self.output_dir / "last")
        return self.metrics

    def start(self, num_updates: int | None = None) -> threading.Thread:
        """Train in a background thread so the notebook's widgets stay responsive; returns the thread."""
        thread = threading.Thread(target=self.train, kwargs={"num_updates": num_updates, "show_progress": False},
                                  daemon=True, name="rlhf-widgets-ppo")
        self.control.state = "running"
        thread.start()
        return thread

    def _apply(self, changes: dict) -> None:
        for name, value in changes.items():
            if name == "learning_rate":
                old = self.optimizer.param_groups[0]["lr"]
                for group in self.optimizer.param_groups:
                    group["lr"] = value
            elif name == "kl_coef":
                old, self.kl_ctl.value = self.kl_ctl.value, value
            else:
                old, self.temperature = self.temperature, value
            self._event("setting", f"{name} changed {old:g} → {value:g}", name=name, old=old, new=value)

    def _event(self, kind: str, message: str, **data) -> None:
        if self.is_main:
            self.metrics.log_event(kind, message, step=self.update, **data)

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

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str | Path) -> Path:
        """Save everything needed to resume exactly: trainable weights, optimizer, β, RNG streams, counters."""
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
            }, path / STATE_FILE)
            self.backend.save_policy(path)
            self.tokenizer.save_pretrained(path)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = torch.load(Path(path) / STATE_FILE, weights_only=False)
        self.backend.load_trainable_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.temperature = state["temperature"]
        self.update, self.episode, self._order = state["update"], state["episode"], state["order"]
        self.prompt_rng.set_state(state["prompt_rng"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self._event("resumed", f"resumed from {path} at update {self.update}")
