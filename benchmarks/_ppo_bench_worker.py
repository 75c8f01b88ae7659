"""One PPO implementation timed in its own process (run by `benchmarks/ppo_vs_trl.py`, not by hand).

    python _ppo_bench_worker.py ours --mode shared|shared-whole|full --precision no|bf16 --model DIR --reward DIR
        --prompts FILE --updates N --out FILE
    python _ppo_bench_worker.py trl  --mode full|lora --precision no|bf16|bf16-flag --model DIR --reward DIR
        --prompts FILE --updates N --out FILE
    python _ppo_bench_worker.py peak --gemm M,K,N --out FILE

`--threads` sets torch's intra-op threads (0 = torch's default). Each update is timed in wall-clock and in
process CPU seconds (`time.process_time`, all threads). `--precision`: ours' `PPOConfig.mixed_precision` ("no" =
float32, "bf16" = autocast with float32 master weights, and the reward model scored under bf16 autocast with its
float32 score head, `RewardModel(mixed_precision="bf16")`); TRL's "bf16": `bf16=True` with
`ACCELERATE_MIXED_PRECISION=bf16` (accelerate's autocast of the training forward), "bf16-flag": `bf16=True`
alone, which TRL 1.9.2's PPO does not pass on to its own Accelerator under transformers 5 (a float32 run). TRL's
`--mode lora` passes `peft_config` (LoRA `--lora-r`, `--lora-alpha`, `--lora-targets`, dropout 0 — ours) and no
reference model: TRL's reference is then the policy with its adapters off. `peak` measures the GEMM peak (float32
and bf16 `torch.matmul` GFLOP/s at an (M×K)·(K×N) shape, best of several timed loops).

`ours` runs in the project's .venv and imports `rlhf_widgets`; `trl` runs in the bench venv and imports only
torch / transformers / datasets / trl (nothing from this repository: only stdlib imports at module level, and
the repository root is never put on `sys.path` for it). Both: batch 16, 24 new tokens, 4 PPO epochs, one
minibatch, temperature 1, CPU, the same 16 prompts every update (so every update sees the same query
lengths), one warm-up update, then `--updates` timed ones. The result is one JSON object written to `--out`:
seconds of each update, their mean over the timed ones (ours: also each update's `time/<phase>` seconds and model
FLOPs per phase, `rlhf_widgets.stages.ppo.flops`), and the process's peak RSS (`ru_maxrss`; the worker
starts no child processes, so RUSAGE_CHILDREN stays 0 and is reported as a check).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

BATCH, NEW_TOKENS, PPO_EPOCHS, SEED = 16, 24, 4, 0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _children_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _set_threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def _summary(impl: str, mode: str, times: list[float], cpu_times: list[float], load_s: float,
             rss_after_load: float, extra: dict) -> dict:
    import torch

    timed, cpu_timed = times[1:], cpu_times[1:]
    return {
        "impl": impl, "mode": mode,
        "update_s": [round(t, 3) for t in times],
        "update_cpu_s": [round(t, 3) for t in cpu_times],
        "warmup_s": round(times[0], 3),
        "s_per_update": sum(timed) / len(timed),
        "cpu_s_per_update": sum(cpu_timed) / len(cpu_timed),
        "s_min": min(timed), "s_max": max(timed),
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_after_load_mib": rss_after_load,
        "children_peak_rss_mib": _children_rss_mib(),
        "load_s": load_s,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(), **extra,
    }


def run_ours(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_widgets.runtime.models import load_tokenizer
    from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer
    from rlhf_widgets.stages.reward.model import RewardModel

    _set_threads(args.threads)
    prompts = json.loads(Path(args.prompts).read_text())
    t0 = time.perf_counter()
    rm = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=torch.float32)
    # bf16 runs score the reward model under bf16 autocast too (float32 score head): a user's setting of ours
    reward = RewardModel(rm, load_tokenizer(args.reward, padding_side="right"),
                         mixed_precision="bf16" if args.precision == "bf16" else "no")
    config = PPOConfig(
        output_dir=str(Path(args.workdir) / f"ours-{args.mode}-{args.precision}"), seed=SEED,
        num_updates=args.updates + 1, mixed_precision=args.precision,
        batch_size=BATCH, mini_batch_size=BATCH, rollout_batch_size=BATCH, num_ppo_epochs=PPO_EPOCHS,
        max_new_tokens=NEW_TOKENS, temperature=1.0, missing_eos_penalty=1.0, sample_every=0,
        shared_base=args.mode != "full", micro_batch_size=BATCH if args.mode == "shared-whole" else None,
    )
    trainer = PPOTrainer(prompts, config, model=args.model, reward=reward)
    load_s = time.perf_counter() - t0
    rss_after_load = _peak_rss_mib()
    assert trainer.accelerator.device.type == "cpu"
    trained = trainer.backend.policy_parameters + trainer.backend.value_parameters
    assert all(p.dtype == torch.float32 for p in trained)  # bf16 too: fp32 master weights (the frozen base: bf16)
    assert trainer.precision.mode == args.precision
    times, cpu_times, lengths, eos, phases, flops, tokens = [], [], [], [], [], [], []
    for _ in range(args.updates + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = trainer.step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        lengths.append(metrics["val/response_length"])
        eos.append(metrics["val/num_eos_tokens"])
        phases.append({k.removeprefix("time/"): v for k, v in metrics.items() if k.startswith("time/")})
        flops.append(dict(trainer.last_flops))
        tokens.append(dict(trainer.last_token_counts))
    n_trainable = sum(p.numel() for p in trainer.backend.policy_parameters + trainer.backend.value_parameters)
    return _summary("ours", args.mode, times, cpu_times, load_s, rss_after_load, {
        "trainable_params": n_trainable, "micro_batch_size": trainer.last_micro_batch_size,
        "mean_response_tokens": lengths, "responses_with_eos": eos,
        "lr": config.learning_rate, "precision": args.precision, "phase_s": phases, "flops": flops,
        "token_counts": tokens,
    })


def run_trl(args: argparse.Namespace) -> dict:
    import importlib.metadata as md

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    class StepClock(TrainerCallback):
        """Marks train begin and the end of every update; the differences are the update times."""

        def __init__(self) -> None:
            self.marks: list[float] = []
            self.cpu_marks: list[float] = []
            self.logs: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())
            self.cpu_marks.append(time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())
            self.cpu_marks.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    _set_threads(args.threads)
    if args.precision == "bf16":
        # TRL 1.9.2's PPO makes its own `Accelerator(gradient_accumulation_steps=...)`, which takes the precision
        # from the environment only — and transformers 5 no longer exports `bf16=True` there: without this, as
        # with `--precision bf16-flag`, the run is float32 (checked: `accelerate_mixed_precision` in the result).
        # This is what `accelerate launch --mixed_precision bf16` sets.
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    prompts = json.loads(Path(args.prompts).read_text())
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    dataset = Dataset.from_dict({"input_ids": [tok(t, add_special_tokens=False)["input_ids"] for t in texts]})
    f32 = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(args.model, **f32)
    lora = args.mode == "lora"
    # with peft_config TRL's reference is the policy with its adapters off: no second copy
    ref_policy = None if lora else AutoModelForCausalLM.from_pretrained(args.model, **f32)
    targets = args.lora_targets if args.lora_targets == "all-linear" else args.lora_targets.split(",")
    peft_config = (LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets, lora_dropout=0.0,
                              task_type="CAUSAL_LM") if lora else None)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, **f32)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, **f32)
    config = PPOConfig(
        output_dir=str(Path(args.workdir) / "trl"), seed=SEED, report_to="none", save_strategy="no",
        use_cpu=True, bf16=args.precision in ("bf16", "bf16-flag"), fp16=False, disable_tqdm=True, logging_steps=1,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=PPO_EPOCHS, response_length=NEW_TOKENS, total_episodes=BATCH * (args.updates + 1),
        local_rollout_forward_batch_size=BATCH, temperature=1.0, stop_token="eos", missing_eos_penalty=1.0,
        num_sample_generations=0,
    )
    clock = StepClock()
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                         callbacks=[clock], peft_config=peft_config)
    load_s = time.perf_counter() - t0
    rss_after_load = _peak_rss_mib()
    trainer.train()
    times = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    cpu_times = [b - a for a, b in zip(clock.cpu_marks, clock.cpu_marks[1:], strict=False)]
    if len(times) != args.updates + 1:
        raise RuntimeError(f"expected {args.updates + 1} updates, TRL ran {len(times)}")
    assert "rlhf_widgets" not in sys.modules
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    prompt_tokens = max(len(ids) for ids in dataset["input_ids"])
    return _summary("trl", args.mode, times, cpu_times, load_s, rss_after_load, {
        "trainable_params": n_trainable, "trl": md.version("trl"), "transformers": md.version("transformers"),
        "eos_tokens_logged": [lg.get("val/num_eos_tokens") for lg in clock.logs if "val/num_eos_tokens" in lg],
        "lr": config.learning_rate, "precision": args.precision,
        "accelerate_mixed_precision": str(trainer.accelerator.mixed_precision),
        "is_peft_model": bool(trainer.is_peft_model), "ref_model_copy": trainer.ref_model is not None,
        "token_counts": {"batch": BATCH, "prompt": prompt_tokens, "response": NEW_TOKENS},
    })


def run_peak(args: argparse.Namespace) -> dict:
    """GEMM GFLOP/s in float32 and bf16 at (M×K)·(K×N): the best of 5 loops of ~0.3 s each, after a warm-up."""
    import torch

    _set_threads(args.threads)
    m, k, n = (int(x) for x in args.gemm.split(","))
    out = {"impl": "peak", "gemm": [m, k, n], "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.matmul(a, b)
        t0, iters = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.2:
            torch.matmul(a, b)
            iters += 1
        best = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.matmul(a, b)
            best = max(best, 2.0 * m * k * n * iters / (time.perf_counter() - t0) / 1e9)
        out[f"{name}_gflops"] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["ours", "trl", "peak"])
    parser.add_argument("--mode", choices=["shared", "shared-whole", "full", "lora"], default="shared",
                        help="ours: shared-base LoRA (defaults), the same with the whole minibatch per forward "
                             "(micro_batch_size=16), or separate full models; TRL: full or lora (peft_config)")
    parser.add_argument("--precision", choices=["no", "bf16", "bf16-flag"], default="no",
                        help="ours: PPOConfig.mixed_precision ('no' or 'bf16'); TRL: 'bf16' = bf16=True and "
                             "ACCELERATE_MIXED_PRECISION=bf16 (accelerate launch --mixed_precision bf16), "
                             "'bf16-flag' = bf16=True alone")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--lora-targets", default="all-linear", help="'all-linear' or comma-separated names")
    parser.add_argument("--gemm", default="1024,576,1536", help="peak: M,K,N of the timed matmul")
    parser.add_argument("--model")
    parser.add_argument("--reward")
    parser.add_argument("--prompts")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--workdir")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.impl != "peak" and not (args.model and args.reward and args.prompts and args.workdir):
        parser.error("ours / trl need --model, --reward, --prompts and --workdir")
    if args.impl == "ours" and (args.mode == "lora" or args.precision == "bf16-flag") or (
            args.impl == "trl" and args.mode not in ("full", "lora")):
        parser.error(f"{args.impl} has no mode {args.mode!r} / precision {args.precision!r}")
    result = {"ours": run_ours, "trl": run_trl, "peak": run_peak}[args.impl](args)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
