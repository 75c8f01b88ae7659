"""What the quickstart will do on this machine, said before it starts: each stage's precision and its expected time.

Precision: every stage's "auto" setting, resolved the way the stage resolves it — the TRL stages' `bf16=None`
(`config.TrainingDefaults`), `PPOConfig.mixed_precision`, `SamplingSettings.mixed_precision` (pairs, evaluation) —
so a CPU without native bf16, or `RLHF_WIDGETS_CPU_BF16=0`, shows as float32 with the reason
(`ppo.precision.cpu_precision_path`).

Time: a reference run's seconds per stage (`REFERENCE_SECONDS`), scaled by the stage's amount of work (its sizes in
`QuickstartConfig` over the defaults') and by how much slower this machine computes than the reference machine did:
`calibrate` times two small jobs of the sandbox model at the stage's precision on one thread — a training step
(forward + backward) and decode steps (sampling) — and each stage's seconds split between the two by
`SAMPLING_SHARE`. Model loading and other start-up are in the reference seconds at the default sizes only, so tiny
runs take longer than their estimate; more threads than the reference's 2 make a run faster than its estimate.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from rlhf_widgets.runtime.precision import cpu_precision_path, resolve_mixed_precision

if TYPE_CHECKING:
    from rlhf_widgets.workflows.quickstart import QuickstartConfig

REFERENCE_SECONDS = {"sft": 38.5, "pairs": 26.1, "reward": 41.4, "ppo": 106.5, "dpo": 27.7, "evaluate": 18.8}
"""seconds per stage of the quickstart at `QuickstartConfig`'s defaults (PPO: at `REFERENCE_PPO_UPDATES`), every
stage in bf16, on the project's 2-core AVX512-BF16 CPU with 2 threads, alone on it: docs/PERFORMANCE.md, "The
float32 path, stage by stage" (the bf16 quickstart with the length-sorted pieces in float32 only)"""
REFERENCE_PPO_UPDATES = 48
"""the PPO updates of that reference run (the other stages ran at `QuickstartConfig`'s defaults)"""
REFERENCE_CALIBRATION = {"train": 0.205, "sample": 0.123}
"""`calibrate("bf16")` on that machine, in seconds (docs/PERFORMANCE.md, "What the quickstart says to expect")"""
SAMPLING_SHARE = {"sft": 0.0, "pairs": 1.0, "reward": 0.0, "ppo": 0.22, "dpo": 0.0, "evaluate": 1.0}
"""the share of each stage's seconds spent sampling (scaled by the "sample" calibration; the rest by "train"); PPO's
is `time/rollout` over `time/rollout + time/update` of the run in tests/fixtures/logs/ppo.jsonl"""
_TRAIN_BATCH, _PROMPT_BATCH, _PROMPT_TOKENS, _NEW_TOKENS, _REPEATS = (16, 64), 16, 32, 16, 3


@dataclass
class QuickstartPlan:
    """What a quickstart run will do here: `precision` and `expected_seconds` per stage (stage → "bf16" / "float32" /
    "fp16"; stage → seconds), and `path`, the line saying which precision "auto" takes on this CPU and why."""

    path: str
    precision: dict[str, str] = field(default_factory=dict)
    expected_seconds: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Two lines for the terminal: the precision (with its reason), the expected time (total and per stage)."""
        from rlhf_widgets.workflows.quickstart import STAGE_NAMES

        kinds = set(self.precision.values())
        each = (f"every stage in {kinds.pop()}" if len(kinds) == 1 else
                ", ".join(f"{STAGE_NAMES[s]} {p}" for s, p in self.precision.items()))
        total = sum(self.expected_seconds.values())
        stages = ", ".join(f"{STAGE_NAMES[s]} {_duration(t)}" for s, t in self.expected_seconds.items())
        float32 = "float32" in self.precision.values()
        why = "; the README's 4 min 20 s is bf16 on a CPU with native bf16" if float32 else ""
        return [f"precision: {self.path} — {each}", f"expect ~{_duration(total)} here ({stages}){why}"]

    def as_dict(self) -> dict:
        """The plan for `--json`: path, precision and expected_seconds (rounded to 0.1 s)."""
        return {"path": self.path, "precision": dict(self.precision),
                "expected_seconds": {s: round(t, 1) for s, t in self.expected_seconds.items()}}


def plan_quickstart(config: QuickstartConfig) -> QuickstartPlan:
    """The precision each of `config.stages` will compute in, and its expected seconds on this machine (runs
    `calibrate` once per precision and process: a second or two)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = {stage: stage_precision(stage, config, device) for stage in config.stages}
    return QuickstartPlan(path=_path_line(device), precision=precision,
                          expected_seconds={stage: expected_seconds(stage, config, precision[stage])
                                            for stage in config.stages})


def stage_precision(stage: str, config: QuickstartConfig, device: torch.device) -> str:
    """What `stage` of the quickstart computes in: its config's "auto" setting resolved as the stage does."""
    if stage in ("sft", "reward", "dpo"):
        from rlhf_widgets.stages.dpo import DPOStageConfig
        from rlhf_widgets.stages.sft import SFTStageConfig
        from rlhf_widgets.workflows.quickstart import quickstart_reward_config

        trl_config = {"sft": SFTStageConfig, "dpo": DPOStageConfig}.get(stage)
        bf16 = (trl_config(output_dir="unused") if trl_config else quickstart_reward_config(config)).bf16
        return "bf16" if bf16 else "float32"
    if stage == "ppo":
        from rlhf_widgets.stages.ppo import PPOConfig

        setting = PPOConfig(num_updates=config.ppo_updates).mixed_precision
    else:  # pairs and evaluation sample (and score) with the default SamplingSettings
        from rlhf_widgets.runtime.generation import SamplingSettings

        setting = SamplingSettings().mixed_precision
    resolved = resolve_mixed_precision(setting, device)
    return "float32" if resolved == "no" else resolved


def stage_work(stage: str, config: QuickstartConfig) -> float:
    """How much `stage` has to do under `config`, in its own items (demonstrations, answers sampled, pairs, updates)."""
    if stage == "sft":
        return config.sft_demos
    if stage == "pairs":
        return config.pair_prompts * config.answers_per_prompt
    if stage == "reward":  # an ensemble trains each member on a resample of the same size
        return (config.pair_prompts * min(config.pairs_per_prompt, math.comb(config.answers_per_prompt, 2))
                * config.reward_members * (1 + config.reward_mismatched_pairs))
    if stage == "ppo":
        return config.ppo_updates
    if stage == "dpo":
        return config.pair_prompts  # one pair per prompt
    # evaluation: answers sampled per held-out prompt — SFT, PPO, DPO, best-of-N's N
    best_of = config.best_of if "reward" in config.stages and config.best_of > 1 else 0
    return config.eval_prompts * (1 + ("ppo" in config.stages) + ("dpo" in config.stages) + best_of)


def expected_seconds(stage: str, config: QuickstartConfig, precision: str) -> float:
    """`REFERENCE_SECONDS[stage]` × `config`'s work over the reference run's × this machine's calibration at `precision`
    over the reference's (training and sampling parts separately)."""
    from rlhf_widgets.workflows.quickstart import QuickstartConfig

    here = calibrate(precision)
    slower = (SAMPLING_SHARE[stage] * here["sample"] / REFERENCE_CALIBRATION["sample"]
              + (1 - SAMPLING_SHARE[stage]) * here["train"] / REFERENCE_CALIBRATION["train"])
    reference = replace(QuickstartConfig(), ppo_updates=REFERENCE_PPO_UPDATES)
    return REFERENCE_SECONDS[stage] * stage_work(stage, config) / stage_work(stage, reference) * slower


@functools.cache
def calibrate(precision: str) -> dict[str, float]:
    """Seconds of two small jobs of the sandbox model on one thread at `precision` ("bf16", "float32" or "fp16"),
    the fastest of 3 (after one to warm up): "train", a forward and backward of 16 × 64 tokens; "sample", greedy
    `generate` of 16 new tokens for 16 sequences after a 32-token prompt (under autocast and `cpu_math_attention`,
    as `generation.generate` samples). CPU time of this thread where the model is on the CPU (which other busy
    processes change little), wall time on a GPU. Leaves torch's random state and thread count as they were."""
    from rlhf_widgets.runtime.attention import cpu_math_attention
    from rlhf_widgets.runtime.models import load_causal_lm

    model, tokenizer = load_causal_lm("sandbox")
    device = next(model.parameters()).device
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    tokens = torch.randint(model.config.vocab_size, (_TRAIN_BATCH[0], _TRAIN_BATCH[1] + _NEW_TOKENS),
                           generator=torch.Generator().manual_seed(0)).to(device)

    def train() -> None:
        with autocast:
            batch = tokens[:, :_TRAIN_BATCH[1]]
            model(input_ids=batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def sample() -> None:
        prompt = tokens[:_PROMPT_BATCH, :_PROMPT_TOKENS]
        with autocast, cpu_math_attention(model):
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=_NEW_TOKENS, min_new_tokens=_NEW_TOKENS,
                           pad_token_id=tokenizer.pad_token_id)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return {name: _fastest(job, clock, device) for name, job in (("train", train), ("sample", sample))}
    finally:
        torch.set_num_threads(threads)


def _fastest(job, clock, device: torch.device) -> float:
    job()
    seconds = []
    for _ in range(_REPEATS):
        start = clock()
        job()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(clock() - start)
    return min(seconds)


def _path_line(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({'bf16' if torch.cuda.is_bf16_supported() else 'no bf16'})"
    return cpu_precision_path()


def _duration(seconds: float) -> str:
    """"42 s", "2 min 20 s" (to the 10 s above a minute)."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes, rest = divmod(round(seconds / 10) * 10, 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"
