"""Seconds per PPO update, peak RSS and FLOP utilisation: our `PPOTrainer` against TRL 1.9.2's PPO, fairly.

    .venv/bin/python benchmarks/ppo_vs_trl.py --shapes tiny,135m --updates 3

Every run trains the same random-init Llama (saved once per shape with the sandbox tokenizer) against the same
reward model (those weights loaded as a 1-label sequence classifier, score head seeded and saved once), on the
same 16 sandbox prompts: batch 16, 24 new tokens, 4 PPO epochs, one minibatch, temperature 1, CPU. The runs
(`--runs`, by id; default all):

- `trl-full-fp32`: TRL 1.9.2 as documented — policy, a reference copy, the classifier as reward model and a
  second copy of it as the value model (TRL's defaults), float32;
- `trl-lora-fp32`: TRL with `peft_config` — LoRA on the policy with our rank, alpha and targets (ModelConfig's
  defaults: r 16, alpha 32, all-linear) and dropout 0; TRL's reference is then the policy with its adapters off
  (no copy); TRL still trains a full value model;
- `trl-lora-bf16`: the same in bf16: `bf16=True` and `ACCELERATE_MIXED_PRECISION=bf16`, as `accelerate launch
  --mixed_precision bf16` sets (accelerate's bf16 autocast of the training forward on CPU; master weights, and
  TRL's generation and rollout forwards, float32). `bf16=True` alone does not reach TRL 1.9.2's PPO under
  transformers 5 (its own `Accelerator` reads the precision from the environment only): that run,
  `trl-lora-bf16flag`, is float32 — each TRL row reports the precision its Accelerator used;
- `ours-shared-fp32`, `ours-shared-bf16`: our shared-base LoRA with the defaults, `mixed_precision="no"` and
  `"bf16"` (autocast, float32 master weights; the frozen base linears then stored in bf16 where sampling does not
  merge, `FastPaths.store_frozen_in`); `RewardModel(classifier, tokenizer)` as the reward, in the bf16 run with
  `mixed_precision="bf16"` (body under autocast, score head float32 — TRL's reward forward stays float32); on CPU
  the micro-batch is chosen from the model shape and the compute dtype (16 at the tiny shape; 2 at 135m in
  float32, 4 in bf16);
- `ours-shared-whole-fp32`: the same with the whole minibatch per forward (`micro_batch_size=16`, TRL's setting);
- `ours-full-fp32`: `shared_base=False` (full policy + reference copy + value network, like TRL).
(`trl-full-bf16`, `trl-lora-bf16flag`, `ours-shared-whole-bf16` and `ours-full-bf16` can be asked for by id.)

Every run is its own subprocess — ours in this .venv, TRL in `.bench/trl-1.9.2` (made here on first use with
`python3 -m venv`: torch 2.13.0, trl 1.9.2 and this .venv's transformers / peft / accelerate / datasets) — with
one warm-up update and `--updates` timed ones. The runs of a shape alternate (TRL, ours, TRL, ours, …) for
`--repeats` rounds — by default 3 at the tiny shape, whose seconds-long updates vary by ±20% from minute to
minute on a shared machine, and 1 at 100m and 135m — and each run reports the median seconds per timed update
over all its rounds and its peak RSS (`ru_maxrss`, the whole process: loading included); updates are also timed
in process CPU seconds, which other jobs on the machine disturb less than wall time. `--threads` (default 1)
fixes torch's threads per worker.

FLOPs (`rlhf_widgets.stages.ppo.flops`, its counting convention): ours are the trainer's own count per update
(`perf/model_flops`: the rollout's actual token counts, the reward model's scored tokens); TRL's are counted here
with the same convention for what TRL 1.9.2's PPO runs (the generation with unmerged adapters, reference /
value / reward forwards over the whole sequence, the policy's LM head on every position, the full value model
trained), assuming every batch generates all 24 tokens (random-init models almost never stop early). The GEMM
peak is measured per shape, before and after its runs (`torch.matmul` GFLOP/s in float32 and bf16 at
(16·sequence)×hidden×MLP, the same threads as the runs; the higher of the two measurements is used); each run's
achieved FLOP/s is shown as a fraction of the peak in its compute dtype. For our runs a phase table follows
(mean seconds per `time/<phase>` over the timed updates, FLOPs and FLOP/s per phase).

Prints one table per shape, then one JSON line with the ratios of each of our runs to each TRL run and the
issue's goals. A benchmark that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "_ppo_bench_worker.py"
BENCH_VENV = ROOT / ".bench" / "trl-1.9.2"
READY = "bench-ready.json"
PINNED = {"torch": "2.13.0", "trl": "1.9.2"}
SAME_AS_VENV = ("transformers", "peft", "accelerate", "datasets")
DEFAULT_REPEATS = {"tiny": 3, "100m": 1, "135m": 1}
BATCH, NEW_TOKENS, PPO_EPOCHS = 16, 24, 4  # the worker's (benchmarks/_ppo_bench_worker.py)
SHAPES = {
    "tiny": {},  # the sandbox shape: rlhf_widgets.sandbox.pretrain.model_config
    "100m": dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=4096),
    # SmolLM-135M's shape (tied embeddings like the sandbox's), with the sandbox tokenizer's vocabulary
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536),
}
RUNS = {  # id: (impl, mode, precision, label), in the alternating order of a round
    "trl-full-fp32": ("trl", "full", "no", "TRL 1.9.2 full fp32"),
    "ours-shared-fp32": ("ours", "shared", "no", "ours shared-base LoRA fp32"),
    "trl-lora-fp32": ("trl", "lora", "no", "TRL 1.9.2 +LoRA fp32"),
    "ours-shared-bf16": ("ours", "shared", "bf16", "ours shared-base LoRA bf16"),
    "trl-lora-bf16": ("trl", "lora", "bf16", "TRL 1.9.2 +LoRA bf16"),
    "ours-shared-whole-fp32": ("ours", "shared-whole", "no", "ours shared-base, micro-batch 16, fp32"),
    "ours-full-fp32": ("ours", "full", "no", "ours shared_base=False (full) fp32"),
    # not run by default
    "trl-full-bf16": ("trl", "full", "bf16", "TRL 1.9.2 full bf16"),
    "trl-lora-bf16flag": ("trl", "lora", "bf16-flag", "TRL 1.9.2 +LoRA bf16=True alone"),
    "ours-shared-whole-bf16": ("ours", "shared-whole", "bf16", "ours shared-base, micro-batch 16, bf16"),
    "ours-full-bf16": ("ours", "full", "bf16", "ours shared_base=False (full) bf16"),
}
DEFAULT_RUNS = ("trl-full-fp32", "ours-shared-fp32", "trl-lora-fp32", "ours-shared-bf16", "trl-lora-bf16",
                "ours-shared-whole-fp32", "ours-full-fp32")
PEERS = ("trl-full-fp32", "trl-lora-fp32", "trl-lora-bf16", "trl-full-bf16")
"""the TRL runs every one of ours is compared with (those that ran)"""
GOALS = {  # issue 19, at 135m: ours-shared-bf16 against TRL+LoRA
    "ours-shared-bf16 time <= 0.35x trl-lora-fp32": ("ours-shared-bf16", "trl-lora-fp32", "time_ratio", 0.35),
    "ours-shared-bf16 time <= 0.6x trl-lora-bf16": ("ours-shared-bf16", "trl-lora-bf16", "time_ratio", 0.6),
    "ours-shared-bf16 peak RSS <= 0.3x trl-lora-fp32": ("ours-shared-bf16", "trl-lora-fp32", "rss_ratio", 0.3),
}
GOAL_SHAPE = "135m"
PRECISION_NAME = {"no": "fp32", "bf16": "bf16", "bf16-flag": "fp32"}  # bf16-flag: TRL runs it in float32


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _versions(python: Path, names) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", code, *names], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def ensure_bench_venv(venv: Path = BENCH_VENV) -> dict:
    """Create the TRL venv if missing (or incomplete); returns what it holds and how long the install took."""
    wanted = {**PINNED, **{name: md.version(name) for name in SAME_AS_VENV}}
    marker = venv / READY
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("requested") == wanted:
            info["reused"] = True
            return info
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={version}" for name, version in wanted.items()]
    print(f"creating {venv.relative_to(ROOT)}: pip install {' '.join(specs)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(_venv_python(venv)), "-m", "pip", "install", "--quiet", *specs],
                         capture_output=True, text=True)
    install_s = time.perf_counter() - t0
    if pip.returncode != 0:
        sys.exit(f"pip install into {venv} failed (rc {pip.returncode}):\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}")
    installed = _versions(_venv_python(venv), [*wanted, "tokenizers", "numpy", "safetensors"])
    info = {"requested": wanted, "installed": installed, "install_s": round(install_s, 1),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.version.split()[0], "reused": False}
    marker.write_text(json.dumps(info, indent=1))
    return info


def build_shape(shape: str, out: Path) -> dict:
    """Random-init Llama + sandbox tokenizer in out/policy, the same weights as a 1-label classifier in out/reward."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

    from rlhf_widgets.runtime.models import load_tokenizer
    from rlhf_widgets.sandbox import base_model_path
    from rlhf_widgets.sandbox.pretrain import model_config

    tokenizer = load_tokenizer(base_model_path())
    config = model_config(tokenizer)  # vocab = len(tokenizer)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    n_params = model.num_parameters()
    policy_dir, reward_dir = out / "policy", out / "reward"
    model.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    del model
    torch.manual_seed(1)  # the score head is new: seed it, save it, both implementations load the same one
    reward = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
    reward.save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)
    del reward
    return {"policy": policy_dir, "reward": reward_dir, "params": n_params, "vocab": len(tokenizer),
            "hidden": config.hidden_size, "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim, "mlp": config.intermediate_size,
            "config": config}


def prompt_tokens(tokenizer_dir: Path, prompts: list[str]) -> int:
    """The longest chat-formatted prompt in tokens (the padded prompt length of a batch of all of them)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    return max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def lora_params_llama(built: dict, r: int) -> int:
    """r·(in + out) summed over every linear of every decoder layer ("all-linear"): q, k, v, o, gate, up, down."""
    h, mlp, heads, kv, hd = built["hidden"], built["mlp"], built["heads"], built["kv_heads"], built["head_dim"]
    per_layer = (h + heads * hd) * 2 + (h + kv * hd) * 2 + (h + mlp) * 3
    return r * per_layer * built["layers"]


def trl_update_flops(shape, *, batch: int, prompt_tokens: int, response_tokens: int, num_ppo_epochs: int,
                     lora: int = 0) -> dict[str, float]:
    """FLOPs of one update of TRL 1.9.2's PPO (`trl/experimental/ppo/ppo_trainer.py`), with the convention of
    `rlhf_widgets.stages.ppo.flops`: generation by the policy (adapters unmerged); per rollout chunk a reference forward
    (`forward()`: logits on every position), the value model's backbone and the reward model's backbone over the
    whole query+response; per epoch `PolicyAndValueWrapper` — the policy (LM head on every position) and the value
    backbone — forward and backward. `lora` = 0: full policy; else the policy's adapters' parameters (the base and
    LM head frozen); the value model is trained whole either way."""
    from rlhf_widgets.stages.ppo.flops import forward, forward_backward

    layers, head = shape.num_layers * shape.layer_params, shape.lm_head_params
    seq = batch * (prompt_tokens + response_tokens)
    flops = {
        "generation": forward(layers + lora, batch * (prompt_tokens + response_tokens - 1))
        + forward(head, batch * response_tokens),
        "reference_forward": forward(layers, seq) + forward(head, seq),
        "value_forward": forward(layers, seq),
        "reward": forward(layers, seq),
    }
    policy = (forward_backward(lora, layers, seq) + forward_backward(0, head, seq) if lora
              else forward_backward(layers, 0, seq) + forward_backward(head, 0, seq))
    flops["train_forward_backward"] = num_ppo_epochs * (policy + forward_backward(layers, 0, seq))
    flops["total"] = sum(flops.values())
    return flops


def _worker_env(threads: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def measure_peak(gemm: tuple[int, int, int], threads: int, workdir: Path) -> dict:
    """The GEMM peak (fp32 and bf16 GFLOP/s) at `gemm` = (M, K, N), in a worker with the runs' thread count."""
    out = workdir / "peak.json"
    cmd = [sys.executable, str(WORKER), "peak", "--gemm", ",".join(map(str, gemm)), "--threads", str(threads),
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=workdir, env=_worker_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"rc {proc.returncode}", "log_tail": (proc.stdout + proc.stderr)[-2000:]}
    return json.loads(out.read_text())


def run_worker(python: Path, run_id: str, built: dict, prompts: Path, updates: int, threads: int,
               workdir: Path, lora: dict) -> dict:
    impl, mode, precision, _label = RUNS[run_id]
    out = workdir / f"result-{run_id}.json"
    cmd = [str(python), str(WORKER), impl, "--mode", mode, "--precision", precision, "--model", str(built["policy"]),
           "--reward", str(built["reward"]), "--prompts", str(prompts), "--updates", str(updates),
           "--threads", str(threads), "--workdir", str(workdir), "--out", str(out),
           "--lora-r", str(lora["r"]), "--lora-alpha", str(lora["alpha"]), "--lora-targets", lora["targets"]]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=_worker_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-4000:]
        return {"impl": impl, "mode": mode, "error": f"rc {proc.returncode}", "log_tail": tail}
    result = json.loads(out.read_text())
    result.update(wall_s=wall, load1_before=load_before, load1_after=os.getloadavg()[0])
    return result


def _merge_rounds(rounds: list[dict]) -> dict:
    """One run's rounds as one result: the median over every timed update, the highest peak RSS, the mean phase
    seconds and FLOPs (ours) over every timed update."""
    if failed := [r for r in rounds if "error" in r]:
        return failed[0]
    timed = [t for r in rounds for t in r["update_s"][1:]]
    cpu = [t for r in rounds for t in r["update_cpu_s"][1:]]
    merged = dict(rounds[0])
    merged.update(
        rounds=len(rounds), update_s=timed, update_cpu_s=cpu, s_per_update=statistics.median(timed),
        cpu_s_per_update=statistics.median(cpu), s_min=min(timed), s_max=max(timed),
        warmup_s=statistics.median(r["warmup_s"] for r in rounds),
        peak_rss_mib=max(r["peak_rss_mib"] for r in rounds),
        peak_rss_after_load_mib=max(r["peak_rss_after_load_mib"] for r in rounds),
        load1_after=rounds[-1]["load1_after"],
    )
    if "phase_s" in rounds[0]:  # ours: per-update phases and FLOPs, the warm-up left out
        phases = [p for r in rounds for p in r["phase_s"][1:]]
        flops = [f for r in rounds for f in r["flops"][1:]]
        merged["phase_mean_s"] = {k: statistics.mean(p.get(k, 0.0) for p in phases) for k in phases[0]}
        merged["flops_mean"] = {k: statistics.mean(f[k] for f in flops) for k in flops[0]}
    return merged


def _with_flops(result: dict, shape, lora_total: int) -> dict:
    """Add `flops_per_update` (ours: the trainer's count; TRL: `trl_update_flops`)."""
    if "error" in result:
        return result
    if "flops_mean" in result:
        result["flops_per_update"] = result["flops_mean"]["total"]
    else:
        tokens = result["token_counts"]
        result["flops_detail"] = trl_update_flops(
            shape, batch=tokens["batch"], prompt_tokens=tokens["prompt"], response_tokens=tokens["response"],
            num_ppo_epochs=PPO_EPOCHS, lora=lora_total if result["mode"] == "lora" else 0)
        result["flops_per_update"] = result["flops_detail"]["total"]
    return result


def _peak_of(peak: dict, precision: str) -> float | None:
    return peak.get(f"{PRECISION_NAME[precision]}_gflops")


def _fmt_table(shape: str, built: dict, run_ids: list[str], results: dict[str, dict], updates: int, threads: int,
               peak: dict) -> str:
    peers = [p for p in PEERS if p in results and "error" not in results[p]]
    gemm = "x".join(map(str, peak.get("gemm", [])))
    lines = [
        f"\n== shape {shape}: {built['params'] / 1e6:.2f}M params (hidden {built['hidden']}, {built['layers']} layers, "
        f"{built['heads']} heads / {built['kv_heads']} KV, MLP {built['mlp']}, vocab {built['vocab']}) — batch 16, 24 "
        f"new tokens, 4 PPO epochs, 1 minibatch, CPU, torch threads {threads or 'default'}; 1 warm-up + {updates} "
        f"timed updates per run, {max(r.get('rounds', 1) for r in results.values())} alternating round(s); "
        f"s/update = median ==",
        f"GEMM peak at {gemm} (best of before/after the runs): fp32 {peak.get('fp32_gflops', float('nan')):.1f} "
        f"GFLOP/s, bf16 {peak.get('bf16_gflops', float('nan')):.1f} GFLOP/s",
        f"{'run':<40} {'s/update':>9} {'min-max':>13} {'warm-up':>8} {'CPU s/upd':>9} {'peak RSS':>10} "
        f"{'RSS@load':>9} {'trainable':>12} {'load s':>7} {'GFLOP/upd':>10} {'GFLOP/s':>8} {'of peak':>8} "
        + " ".join(f"{'t/' + p.removeprefix('trl-'):>12}" for p in peers)
        + " " + " ".join(f"{'RSS/' + p.removeprefix('trl-'):>14}" for p in peers) + f" {'load1':>10}",
    ]
    for run_id in run_ids:
        r, label = results[run_id], RUNS[run_id][3]
        if "error" in r:
            lines.append(f"{label:<40} FAILED ({r['error']})")
            continue
        gflops = r["flops_per_update"] / 1e9
        rate = gflops / r["s_per_update"]
        top = _peak_of(peak, r["precision"])
        ratios_t = " ".join(f"{r['s_per_update'] / results[p]['s_per_update']:>11.2f}x" for p in peers)
        ratios_m = " ".join(f"{r['peak_rss_mib'] / results[p]['peak_rss_mib']:>13.2f}x" for p in peers)
        lines.append(
            f"{label:<40} {r['s_per_update']:>9.2f} {r['s_min']:>6.2f}-{r['s_max']:<6.2f} {r['warmup_s']:>8.2f} "
            f"{r['cpu_s_per_update']:>9.2f} {r['peak_rss_mib']:>7.0f}MiB {r['peak_rss_after_load_mib']:>6.0f}MiB "
            f"{r['trainable_params']:>12,} {r['load_s']:>7.1f} {gflops:>10.1f} {rate:>8.1f} "
            f"{(rate / top if top else float('nan')):>7.0%} {ratios_t} {ratios_m} "
            f"{r['load1_before']:>4.1f}->{r['load1_after']:<4.1f}"
        )
    for run_id in run_ids:
        r = results[run_id]
        if "error" in r or "phase_mean_s" not in r:
            continue
        top = _peak_of(peak, r["precision"])
        wall = r["phase_mean_s"].get("rollout", 0.0) + r["phase_mean_s"].get("update", 0.0)
        lines.append(f"\n   phases of {RUNS[run_id][3]} (mean over timed updates; time/rollout + time/update = "
                     f"{wall:.2f} s, peak {top:.0f} GFLOP/s)")
        lines.append(f"   {'phase':<24} {'s':>8} {'share':>7} {'GFLOP':>9} {'GFLOP/s':>9} {'of peak':>8}")
        for phase, seconds in r["phase_mean_s"].items():
            if phase in ("rollout", "update"):
                continue
            gf = r["flops_mean"].get(phase, 0.0) / 1e9
            rate = f"{gf / seconds:>9.1f} {gf / seconds / top:>7.0%}" if gf and seconds > 0 and top else ""
            lines.append(f"   {phase:<24} {seconds:>8.3f} {seconds / wall if wall else 0:>7.1%} "
                         f"{gf if gf else 0:>9.1f} {rate}")
    for run_id in run_ids:
        r = results[run_id]
        if "error" not in r and r["impl"] == "trl":
            lines.append(f"   {RUNS[run_id][3]}: accelerate mixed_precision={r['accelerate_mixed_precision']}, "
                         f"peft={r['is_peft_model']}, reference copy={r['ref_model_copy']}, FLOPs per phase (GFLOP): "
                         + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in r["flops_detail"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,135m", help=f"comma-separated, from {sorted(SHAPES)}")
    parser.add_argument("--updates", type=int, default=3, help="timed updates after one warm-up")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (0 = torch's default, one per core). Default 1: on a shared "
                             "2-core machine torch's default collapses under other jobs' load")
    parser.add_argument("--repeats", type=int, default=None,
                        help="alternating rounds of the runs per shape (default: 3 at tiny, 1 at 100m and 135m)")
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help=f"comma-separated run ids from {list(RUNS)}, run in that order (default: "
                             f"{','.join(DEFAULT_RUNS)})")
    parser.add_argument("--workdir", default=None, help="parent of the temp dir for checkpoints (default: system tmp)")
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or args.updates < 1 or args.threads < 0:
        parser.error(f"unknown shapes {unknown} (choose from {sorted(SHAPES)}) or --updates < 1")
    wanted = {r.strip() for r in args.runs.split(",") if r.strip()}
    if bad := wanted - set(RUNS):
        parser.error(f"--runs: unknown run ids {sorted(bad)} (choose from {list(RUNS)})")
    run_ids = [r for r in RUNS if r in wanted]

    sys.path.insert(0, str(ROOT))
    from rlhf_widgets.runtime.config import ModelConfig
    from rlhf_widgets.stages.ppo.flops import ModelShape

    settings = ModelConfig(model_name_or_path="sandbox")
    targets = settings.lora_target_modules
    lora = {"r": settings.lora_r, "alpha": settings.lora_alpha,
            "targets": targets if isinstance(targets, str) else ",".join(targets)}
    if lora["targets"] != "all-linear":
        sys.exit(f"ModelConfig's LoRA targets are {lora['targets']!r}: TRL's FLOP count here assumes all-linear")
    if any(RUNS[r][0] == "trl" for r in run_ids):
        venv = ensure_bench_venv()
        how = "reused" if venv["reused"] else "created"
        print(f"bench venv {BENCH_VENV.relative_to(ROOT)} {how} (install took {venv['install_s']} s on "
              f"{venv['created']}): " + ", ".join(f"{k} {v}" for k, v in venv["installed"].items()), flush=True)
    ours_versions = {n: md.version(n) for n in ("torch", *SAME_AS_VENV)}
    print("ours (.venv): " + ", ".join(f"{k} {v}" for k, v in ours_versions.items())
          + f"; LoRA r {lora['r']}, alpha {lora['alpha']}, targets {lora['targets']}, dropout 0 (ours and TRL's)"
          + f"; cpu cores {os.cpu_count()}; load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    from rlhf_widgets.sandbox import make_prompts

    summary: dict = {"updates": args.updates, "threads": args.threads or "default", "lora": lora,
                     "goals": {k: v[3] for k, v in GOALS.items()}, "goal_shape": GOAL_SHAPE, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="ppo_vs_trl_", dir=args.workdir) as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts = [p.text for p in make_prompts(BATCH)]
        prompts_file.write_text(json.dumps(prompts))
        for shape in shapes:
            shape_dir = Path(tmp) / shape
            built = build_shape(shape, shape_dir)
            model_shape = ModelShape.from_config(built["config"])
            lora_total = lora_params_llama(built, lora["r"])
            print(f"[{shape}] random-init Llama: {built['params']:,} parameters", flush=True)
            gemm = (BATCH * (prompt_tokens(built["policy"], prompts) + NEW_TOKENS), built["hidden"], built["mlp"])
            peaks = [measure_peak(gemm, args.threads, shape_dir)]
            print(f"[{shape}] GEMM peak at {gemm}: {peaks[0]}", flush=True)
            rounds = args.repeats or DEFAULT_REPEATS.get(shape, 1)
            per_run: dict[str, list[dict]] = {r: [] for r in run_ids}
            for round_ in range(rounds):
                for run_id in run_ids:
                    impl, _mode, _precision, label = RUNS[run_id]
                    python = _venv_python(BENCH_VENV) if impl == "trl" else Path(sys.executable)
                    print(f"[{shape}] running {label} (round {round_ + 1}/{rounds}) ...", flush=True)
                    r = run_worker(python, run_id, built, prompts_file, args.updates, args.threads, shape_dir, lora)
                    if "error" in r:
                        print(f"[{shape}] {label} FAILED ({r['error']}):\n{r['log_tail']}", flush=True)
                    else:
                        print(f"[{shape}]   {r['s_per_update']:.2f} s/update mean (each: {r['update_s']}; CPU s: "
                              f"{r['update_cpu_s']}; torch threads {r['torch_threads']}), "
                              f"peak RSS {r['peak_rss_mib']:.0f} MiB, wall {r['wall_s']:.0f} s", flush=True)
                    per_run[run_id].append(r)
            peaks.append(measure_peak(gemm, args.threads, shape_dir))
            print(f"[{shape}] GEMM peak after the runs: {peaks[-1]}", flush=True)
            peak = {"gemm": list(gemm), "measurements": peaks}
            for key in ("fp32_gflops", "bf16_gflops"):
                got = [p[key] for p in peaks if key in p]
                peak[key] = max(got) if got else None
            results = {r: _with_flops(_merge_rounds(got), model_shape, lora_total) for r, got in per_run.items()}
            print(_fmt_table(shape, built, run_ids, results, args.updates, args.threads, peak), flush=True)
            summary["shapes"][shape] = _shape_summary(built, results, peak)
    summary["goals_met"] = _goals(summary["shapes"].get(GOAL_SHAPE))
    summary["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(summary))
    return summary


def _shape_summary(built: dict, results: dict[str, dict], peak: dict) -> dict:
    entry: dict = {"params": built["params"], "peak_gflops": {k: peak[k] for k in ("fp32_gflops", "bf16_gflops")},
                   "runs": {}}
    for run_id, r in results.items():
        if "error" in r:
            entry["runs"][run_id] = {"error": r["error"]}
            continue
        rate = r["flops_per_update"] / r["s_per_update"] / 1e9
        top = _peak_of(peak, r["precision"])
        row = {"s_per_update": round(r["s_per_update"], 3), "cpu_s_per_update": round(r["cpu_s_per_update"], 3),
               "peak_rss_mib": round(r["peak_rss_mib"]), "gflop_per_update": round(r["flops_per_update"] / 1e9, 2),
               "gflops": round(rate, 2), "of_peak": round(rate / top, 3) if top else None,
               "trainable_params": r["trainable_params"]}
        if r["impl"] == "ours":
            row["micro_batch_size"] = r.get("micro_batch_size")
            row["phase_mean_s"] = {k: round(v, 4) for k, v in r["phase_mean_s"].items()}
            for peer in PEERS:
                p = results.get(peer)
                if p is None or "error" in p:
                    continue
                row[f"vs_{peer}"] = {"time_ratio": round(r["s_per_update"] / p["s_per_update"], 3),
                                     "cpu_time_ratio": round(r["cpu_s_per_update"] / p["cpu_s_per_update"], 3),
                                     "rss_ratio": round(r["peak_rss_mib"] / p["peak_rss_mib"], 3)}
        else:
            row["accelerate_mixed_precision"] = r.get("accelerate_mixed_precision")
        entry["runs"][run_id] = row
    return entry


def _goals(entry: dict | None) -> dict:
    """The issue's goals at GOAL_SHAPE: True / False, or None where that shape or a run did not run."""
    out = {}
    for name, (ours, peer, key, bound) in GOALS.items():
        ratio = None if entry is None else entry["runs"].get(ours, {}).get(f"vs_{peer}", {}).get(key)
        out[name] = None if ratio is None else ratio <= bound
    return out


if __name__ == "__main__":
    main()
