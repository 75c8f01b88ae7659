"""PPO's checkpoints: saving the policy, saving and resuming a run exactly, and the metrics log continued on resume.

A checkpoint directory (`checkpoint-N/`, `last/`) holds `trainer_state.pt` (written once: trainable weights,
optimizer, schedule, loss scale, β, counters, the number of processes, the run's status and reason), one
`process_state_<rank>.pt` per process (its prompt order and random streams, and under DeepSpeed ZeRO its optimizer
partition), a copy of the metrics log as it was when the checkpoint was written, and the policy in `policy/`.
Only as many processes as wrote a checkpoint resume it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlhf_widgets.runtime.metrics import MetricsLog

if TYPE_CHECKING:
    from rlhf_widgets.stages.ppo.trainer import PPOTrainer

STATE_FILE = "trainer_state.pt"
"""A checkpoint's shared state: weights, optimizer, schedule, β, counters, the number of processes, the reason"""
PROCESS_FILE = "process_state_{rank}.pt"
"""A checkpoint's per-process state: process `rank`'s prompt order and random streams (CPU, CUDA, Python), and
under DeepSpeed ZeRO its optimizer partition"""
METRICS_FILE = "metrics.jsonl"


def run_metrics(output_dir: Path, resume_from: str | Path | None, is_main: bool) -> MetricsLog:
    """The run's log at `output_dir/metrics.jsonl`: new, or — resuming — the checkpoint's history continued (only the
    main process keeps a log; the others get one in memory).

    A checkpoint keeps a copy of the log as it was when it was written. Resuming continues the log in
    `output_dir` when it is that copy plus only events (a save, a stop); when it also holds updates after the
    checkpoint (about to be redone) or is another run's, it is kept beside as `metrics.before-resume-N.jsonl`,
    never deleted, and the checkpoint's copy continues.
    """
    path = output_dir / METRICS_FILE
    if not is_main:
        return MetricsLog(None, run_name="ppo")
    if resume_from is None:
        return MetricsLog(path, run_name="ppo")
    snapshot = Path(resume_from) / METRICS_FILE
    if snapshot.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and not continues(path.read_bytes(), snapshot.read_bytes()):
            n = 1
            while (kept := path.with_name(f"metrics.before-resume-{n}.jsonl")).exists():
                n += 1
            path.rename(kept)
        if not path.is_file():
            shutil.copyfile(snapshot, path)
    if path.is_file():
        return MetricsLog.load(path, resume=True)
    return MetricsLog(path, run_name="ppo")


def continues(log: bytes, snapshot: bytes) -> bool:
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


def save_policy(trainer: PPOTrainer, path: str | Path) -> Path:
    """Save the trainer's current policy (and tokenizer) into `path`: a directory `load_causal_lm` loads."""
    path = Path(path)
    if trainer.is_main:
        trainer.backend.save_policy(path)
        trainer.tokenizer.save_pretrained(path)
    trainer.processes.barrier()
    return path


def save_checkpoint(trainer: PPOTrainer, path: str | Path) -> Path:
    """Save everything needed to resume `trainer` exactly — in `path/trainer_state.pt` (once): trainable weights,
    optimizer, LR schedule, loss scale, β, counters, the number of processes, the run's status and reason, and the
    metrics log up to here; in `path/process_state_<rank>.pt` (one per process): that process's prompt order and
    random streams (CPU, CUDA, Python), and under ZeRO its optimizer partition — plus the policy in `path/policy`."""
    path = Path(path)
    trainer.processes.where = f"saving {path}"
    path.mkdir(parents=True, exist_ok=True)
    torch.save({
        "order": list(trainer._order),
        "prompt_rng": trainer.prompt_rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python_rng": random.getstate(),
        "zero": trainer.zero.state() if trainer.zero else None,
    }, path / PROCESS_FILE.format(rank=trainer.processes.index))
    if trainer.is_main:
        metrics = trainer.metrics
        torch.save({
            "trainable": trainer.backend.trainable_state(),
            "optimizer": None if trainer.zero else trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": None if trainer.precision.scaler is None else trainer.precision.scaler.state_dict(),
            "kl_coef": trainer.kl_ctl.value,
            "temperature": trainer.temperature,
            "update": trainer.update,
            "episode": trainer.episode,
            "num_processes": trainer.processes.count,
            "status": trainer.control.state,
            "reason": trainer.control.reason,
            "config": trainer.config.to_dict(),
            "metrics_entries": len(metrics.records) + len(metrics.events()) + len(metrics.samples()),
        }, path / STATE_FILE)
        if metrics.path is not None and metrics.path.is_file():
            shutil.copyfile(metrics.path, path / METRICS_FILE)
        trainer.backend.save_policy(path / "policy")
        trainer.tokenizer.save_pretrained(path / "policy")
    trainer.processes.barrier()
    return path


def load_checkpoint(trainer: PPOTrainer, path: str | Path) -> None:
    """Restore into `trainer` a `save_checkpoint` state written by as many processes as it has (the metrics log is
    continued by `run_metrics`). Each process reads the shared state and its own random streams."""
    path = Path(path)
    state = torch.load(path / STATE_FILE, weights_only=False)
    written_by, here = state.get("num_processes", 1), trainer.processes.count
    if written_by != here:
        raise ValueError(
            f"checkpoint {path} was written by {written_by} process(es) and this run has {here}: each process's "
            "prompt order and random streams are saved separately, so only the same count resumes exactly — "
            f"launch with `accelerate launch --num_processes {written_by} ...` (or `python` for 1)")
    own = path / PROCESS_FILE.format(rank=trainer.processes.index)
    if not own.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {own.name} (process {trainer.processes.index}'s random "
                                "streams): it is incomplete, or was written by an older version")
    rng = torch.load(own, weights_only=False)
    zero = trainer.zero
    if (rng["zero"] is None) != (zero is None):
        raise ValueError(f"checkpoint {path} was written {'with' if rng['zero'] is not None else 'without'} "
                         "DeepSpeed ZeRO and this run is launched the other way: resume under the same launcher "
                         "config")
    trainer.backend.load_trainable_state(state["trainable"])
    if zero is not None:
        zero.load_state(rng["zero"])
    else:
        trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    scaler = trainer.precision.scaler
    if state["scaler"] is not None and scaler is not None:
        scaler.load_state_dict(state["scaler"])
    trainer.kl_ctl.value = state["kl_coef"]
    trainer.temperature = state["temperature"]
    trainer.update, trainer.episode = state["update"], state["episode"]
    trainer._order = rng["order"]
    trainer.prompt_rng.set_state(rng["prompt_rng"])
    torch.set_rng_state(rng["torch_rng"])
    if rng["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda_rng"])
    random.setstate(rng["python_rng"])
    trainer._event("resumed", f"resumed from {path} at update {trainer.update}", checkpoint=str(path))
