"""What a PPO update reports beside training: its metrics (TRL's PPO names) and sample table, the held-out gold
scores, and the prompt-swap check (`PPOConfig.prompt_swap_check`).

Every number is over all processes: the metrics reduced as their meaning requires (`Processes.reduce_metrics`),
the explained variance and the prompt-swap sums from global sums. A failure while measuring (the gold scorer, the
reward on swapped prompts) is raised on every process, before the update's state changes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from rlhf_widgets.runtime.reward_protocol import RewardFunction, score_responses
from rlhf_widgets.stages.ppo import core
from rlhf_widgets.stages.ppo.rollout import Rollout, other_prompts, reference_logprob_sums
from rlhf_widgets.stages.ppo.timing import PhaseClock

if TYPE_CHECKING:
    from rlhf_widgets.runtime.precision import Precision
    from rlhf_widgets.stages.ppo.distributed import Processes
    from rlhf_widgets.stages.ppo.trainer import PPOTrainer

OFF_PROMPT_NATS = 1.0
"""An answer counts as off its prompt (`reference/off_prompt_share`) when the reference finds it less than e times
as likely after its own prompt as after another (a gap below 1 nat): a reply that could answer anything."""


def gold_scores(gold: RewardFunction | None, rollout: Rollout, precision: Precision,
                processes: Processes) -> list[float] | None:
    """The held-out gold scores of the rollout's responses (None without `gold`), outside autocast; a failure on
    any process is raised on every process, before the update's state changes."""
    error, scores = None, None
    try:
        if gold is not None:
            with precision.full_precision():
                scores = score_responses(gold, rollout.prompts, rollout.texts).tolist()
    except Exception as err:  # noqa: BLE001 - raised on every process at the agreement point
        error = err
    processes.agree(error)
    return scores


def prompt_swap(trainer: PPOTrainer, rollout: Rollout, clock: PhaseClock) -> dict[str, float]:
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
    if not trainer.config.prompt_swap_check:
        return {}
    processes = trainer.processes
    swapped_prompts = other_prompts(rollout.prompts)
    error, totals = None, torch.zeros(4, dtype=torch.float64)  # a batch of one question adds nothing
    try:
        if swapped_prompts is not None:
            totals = _prompt_swap_totals(trainer, rollout, swapped_prompts, clock)
    except Exception as err:  # noqa: BLE001 - raised on every process at the agreement point
        error = err
    processes.agree(error)
    dependence, fit_sum, off_prompt, n = processes.sum(totals.to(trainer.accelerator.device)).tolist()
    if not n:
        return {}
    return {"reward/prompt_dependence": dependence / n, "reference/prompt_fit": fit_sum / n,
            "reference/off_prompt_share": off_prompt / n}


def _prompt_swap_totals(trainer: PPOTrainer, rollout: Rollout, swapped_prompts: list,
                        clock: PhaseClock) -> torch.Tensor:
    """This process's sums for `prompt_swap`: own minus swapped reward, the reference's log-prob gaps, the answers
    under `OFF_PROMPT_NATS`, and the count."""
    precision, cfg = trainer.precision, trainer.config
    with clock("reward"), precision.full_precision():
        swapped = score_responses(trainer.reward, swapped_prompts, rollout.texts)
        penalty = core.apply_missing_eos_penalty(swapped, rollout.contains_eos.cpu(), cfg.missing_eos_penalty)
    with clock("reference_forward"), precision.autocast():
        own = (rollout.ref_logprobs.float() * rollout.response_mask).sum(1)
        fit = (own - reference_logprob_sums(
            trainer.backend, trainer.tokenizer, swapped_prompts, rollout.responses, rollout.response_mask,
            temperature=trainer.temperature, forward_batch_size=cfg.rollout_batch_size)).double().cpu()
    return torch.stack([(rollout.scores.float().cpu() - penalty).sum().double(), fit.sum(),
                        (fit < OFF_PROMPT_NATS).sum().double(), fit.new_tensor(len(rollout))])


def update_metrics(trainer: PPOTrainer, rollout: Rollout, stats: dict[str, list[float]],
                   gold_scores: list[float] | None, mean_kl: float, kl_coef: float, lr: float, rollout_seconds: float,
                   update_seconds: float) -> dict[str, float]:
    """Step 8's metrics (TRL's PPO names), reduced across processes as their meaning requires; logs the sample
    table. `objective/kl` and `val/var_explained` are already all processes' (computed from global sums)."""
    processes, cfg = trainer.processes, trainer.config
    mask, scores, non_score = rollout.response_mask, rollout.scores, rollout.non_score_rewards
    with torch.no_grad():  # explained variance over all processes' response tokens: 1 − Var(R − V) / Var(R)
        residual = rollout.returns - rollout.values
        moments = processes.sum(torch.stack([
            mask.sum(), (rollout.returns * mask).sum(), (rollout.returns ** 2 * mask).sum(),
            (residual * mask).sum(), (residual ** 2 * mask).sum()]).double())
        n = moments[0].clamp(min=2)
        returns_var = (moments[2] - moments[1] ** 2 / n) / (n - 1)
        residual_var = (moments[4] - moments[3] ** 2 / n) / (n - 1)
        var_explained = (1 - residual_var / returns_var.clamp(min=1e-8)).item()
    grad_norms = trainer._grad_norms
    metrics = {k: sum(v) / len(v) for k, v in stats.items()}
    metrics.update({
        "objective/entropy": (-rollout.logprobs * mask).sum(1).mean().item(),
        "objective/non_score_reward": (non_score * mask).sum(1).mean().item(),
        "objective/rlhf_reward": (scores + (non_score * mask).sum(1)).mean().item(),
        "objective/scores": scores.mean().item(),
        "val/num_eos_tokens": rollout.contains_eos.sum().item(),
        "val/response_length": mask.sum(1).mean().item(),
        "train/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else math.nan,
        "time/rollout": rollout_seconds,
        "time/update": update_seconds,
    })
    # where the seconds went: the phases, and what they leave of rollout + update (`ppo.timing`)
    phases = {f"time/{phase}": seconds for phase, seconds in trainer.clock.seconds.items()
              if phase != "gold" or trainer.gold is not None}
    metrics.update(phases)
    metrics["time/other"] = rollout_seconds + update_seconds - sum(phases.values())
    # model FLOPs of this process's update (`ppo.flops`) and the FLOP/s they were done at
    flops, seconds = trainer.last_flops["total"], rollout_seconds + update_seconds
    metrics["perf/model_flops"] = flops
    metrics["perf/gflops"] = flops / seconds / 1e9
    if cfg.peak_gflops:
        metrics["perf/flops_utilization"] = flops / seconds / (cfg.peak_gflops * 1e9)
    if gold_scores is not None:
        metrics["gold/score"] = sum(gold_scores) / len(gold_scores)
    if rollout.member_scores is not None:  # (K, B): an ensemble's members, scored once in the rollout
        members = rollout.member_scores
        # their population std per response (as `RewardEnsemble.score_with_spread`), averaged over the batch
        metrics["reward/ensemble_spread"] = members.std(dim=0, unbiased=False).mean().item()
        metrics["reward/ensemble_mean"] = members.mean().item()
        metrics.update({f"reward/member_{i}": row.mean().item() for i, row in enumerate(members)})
    metrics = processes.reduce_metrics(metrics)
    metrics.update({"objective/kl": mean_kl, "objective/kl_coef": kl_coef, "val/var_explained": var_explained,
                    "lr": lr, "train/skipped_steps": trainer._skipped_steps})
    scaler = trainer.precision.scaler
    if scaler is not None:
        metrics["train/loss_scale"] = scaler.get_scale()
    if trainer.is_main and cfg.sample_every and trainer.update % cfg.sample_every == 0:
        seq_kl = (rollout.kl * mask).sum(1)
        rows = [{"prompt": rollout.prompt_texts[i], "response": rollout.texts[i], "score": scores[i].item(),
                 "kl": seq_kl[i].item(), **({"gold": gold_scores[i]} if gold_scores else {})}
                for i in range(min(cfg.samples_to_log, len(rollout)))]
        trainer.metrics.log_samples(rows, step=trainer.update, stage="ppo")
    return metrics
