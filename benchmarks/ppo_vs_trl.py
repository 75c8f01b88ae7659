"""Seconds per PPO update and peak RSS: our `PPOTrainer` against TRL 1.9.2's `trl.experimental.ppo.PPOTrainer`.

    .venv/bin/python benchmarks/ppo_vs_trl.py --shapes tiny,100m --updates 3

Both train the same random-init Llama (saved once per shape with the sandbox tokenizer) against the same
reward model (those weights loaded as a 1-label sequence classifier, score head seeded and saved once), on
the same 16 sandbox prompts: batch 16, 24 new tokens, 4 PPO epochs, one minibatch, temperature 1, CPU, fp32.
Ours: `RewardModel(classifier, tokenizer)` as the reward, in three runs — shared-base LoRA with the defaults
(on CPU the micro-batch is chosen from the model shape: 16 at the tiny shape, 4 at 100M), the same with the
whole minibatch per forward (`micro_batch_size=16`, TRL's setting), and `shared_base=False` (full policy +
reference copy + value network, like TRL). TRL: policy and ref_policy
loaded separately, the classifier as reward_model and a second copy of it as value_model (TRL's defaults).

Every run is its own subprocess — ours in this .venv, TRL in `.bench/trl-1.9.2` (made here on first use with
`python3 -m venv`: torch 2.13.0, trl 1.9.2 and this .venv's transformers / peft / accelerate / datasets) — with
one warm-up update and `--updates` timed ones. The runs of a shape alternate (TRL, ours, TRL, ours, …) for
`--repeats` rounds — by default 3 at the tiny shape, whose seconds-long updates vary by ±20% from minute to
minute on a shared machine, and 1 at 100m — and each run reports the median seconds per timed update over
all its rounds and its peak RSS (`ru_maxrss`, the whole process: loading included); updates are also timed in
process CPU seconds, which other jobs on the machine disturb less than wall time. `--threads` (default 1) fixes
torch's threads per worker. Prints one table per shape, then one JSON line with the ratios ours/TRL. A benchmark
that prints figures, not a test.
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
DEFAULT_REPEATS = {"tiny": 3, "100m": 1}
SHAPES = {
    "tiny": {},  # the sandbox shape: rlhf_widgets.sandbox.pretrain.model_config
    "100m": dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=4096),
}
RUNS = (("trl", "full", "TRL 1.9.2 (policy+ref+value+reward)"),
        ("ours", "shared", "ours shared-base LoRA (default)"),
        ("ours", "shared-whole", "ours shared-base, micro-batch 16"),
        ("ours", "full", "ours shared_base=False (full)"))
GOALS = {"time_ratio_max": 0.8, "rss_ratio_max_100m": 0.4}


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

    from rlhf_widgets.models import load_tokenizer
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
            "mlp": config.intermediate_size}


def run_worker(python: Path, impl: str, mode: str, built: dict, prompts: Path, updates: int, threads: int,
               workdir: Path) -> dict:
    out = workdir / f"result-{impl}-{mode}.json"
    cmd = [str(python), str(WORKER), impl, "--mode", mode, "--model", str(built["policy"]),
           "--reward", str(built["reward"]), "--prompts", str(prompts), "--updates", str(updates),
           "--threads", str(threads), "--workdir", str(workdir), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-4000:]
        return {"impl": impl, "mode": mode, "error": f"rc {proc.returncode}", "log_tail": tail}
    result = json.loads(out.read_text())
    result.update(wall_s=wall, load1_before=load_before, load1_after=os.getloadavg()[0])
    return result


def _merge_rounds(rounds: list[dict]) -> dict:
    """One run's rounds as one result: the median over every timed update, the highest peak RSS."""
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
    return merged


def _fmt_table(shape: str, built: dict, runs: list, results: list[dict], updates: int, threads: int) -> str:
    trl = next(r for r in results if r["impl"] == "trl")
    lines = [
        f"\n== shape {shape}: {built['params'] / 1e6:.2f}M params (hidden {built['hidden']}, {built['layers']} layers, "
        f"{built['heads']} heads, MLP {built['mlp']}, vocab {built['vocab']}) — batch 16, 24 new tokens, 4 PPO epochs, "
        f"1 minibatch, CPU fp32, torch threads {threads or 'default'}; 1 warm-up + {updates} timed updates per run, "
        f"{trl.get('rounds', 1)} alternating round(s); s/update = median ==",
        f"{'run':<38} {'s/update':>9} {'min-max':>13} {'warm-up':>8} {'CPU s/upd':>9} {'peak RSS':>10} "
        f"{'RSS@load':>9} {'trainable':>11} {'load s':>7} {'time/TRL':>9} {'CPU/TRL':>8} {'RSS/TRL':>8} {'load1':>10}",
    ]
    for (impl, _mode, label), r in zip(runs, results, strict=True):
        if "error" in r:
            lines.append(f"{label:<38} FAILED ({r['error']})")
            continue
        ratio_t = ratio_c = ratio_m = ""
        if "error" not in trl and impl == "ours":
            ratio_t = f"{r['s_per_update'] / trl['s_per_update']:.2f}x"
            ratio_c = f"{r['cpu_s_per_update'] / trl['cpu_s_per_update']:.2f}x"
            ratio_m = f"{r['peak_rss_mib'] / trl['peak_rss_mib']:.2f}x"
        lines.append(
            f"{label:<38} {r['s_per_update']:>9.2f} {r['s_min']:>6.2f}-{r['s_max']:<6.2f} {r['warmup_s']:>8.2f} "
            f"{r['cpu_s_per_update']:>9.2f} {r['peak_rss_mib']:>7.0f}MiB {r['peak_rss_after_load_mib']:>6.0f}MiB "
            f"{r['trainable_params']:>11,} {r['load_s']:>7.1f} {ratio_t:>9} {ratio_c:>8} {ratio_m:>8} "
            f"{r['load1_before']:>4.1f}->{r['load1_after']:<4.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,100m", help=f"comma-separated, from {sorted(SHAPES)}")
    parser.add_argument("--updates", type=int, default=3, help="timed updates after one warm-up")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (0 = torch's default, one per core). Default 1: on a shared "
                             "2-core machine torch's default collapses under other jobs' load")
    parser.add_argument("--repeats", type=int, default=None,
                        help="alternating rounds of the runs per shape (default: 3 at tiny, 1 at 100m)")
    parser.add_argument("--runs", default=",".join(m for i, m, _ in RUNS if i == "ours"),
                        help="comma-separated modes of ours to run beside TRL (default: all)")
    parser.add_argument("--workdir", default=None, help="parent of the temp dir for checkpoints (default: system tmp)")
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or args.updates < 1 or args.threads < 0:
        parser.error(f"unknown shapes {unknown} (choose from {sorted(SHAPES)}) or --updates < 1")
    modes = {m.strip() for m in args.runs.split(",") if m.strip()}
    if bad := modes - {m for i, m, _ in RUNS if i == "ours"}:
        parser.error(f"--runs: unknown modes {sorted(bad)}")
    runs = [run for run in RUNS if run[0] == "trl" or run[1] in modes]

    sys.path.insert(0, str(ROOT))
    venv = ensure_bench_venv()
    how = "reused" if venv["reused"] else "created"
    print(f"bench venv {BENCH_VENV.relative_to(ROOT)} {how} (install took {venv['install_s']} s on {venv['created']}): "
          + ", ".join(f"{k} {v}" for k, v in venv["installed"].items()), flush=True)
    ours_versions = {n: md.version(n) for n in ("torch", *SAME_AS_VENV)}
    print("ours (.venv): " + ", ".join(f"{k} {v}" for k, v in ours_versions.items())
          + f"; cpu cores {os.cpu_count()}; load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    from rlhf_widgets.sandbox import make_prompts

    summary: dict = {"updates": args.updates, "threads": args.threads or "default", "goals": GOALS, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="ppo_vs_trl_", dir=args.workdir) as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps([p.text for p in make_prompts(16)]))
        for shape in shapes:
            shape_dir = Path(tmp) / shape
            built = build_shape(shape, shape_dir)
            print(f"[{shape}] random-init Llama: {built['params']:,} parameters", flush=True)
            rounds = args.repeats or DEFAULT_REPEATS.get(shape, 1)
            per_run: list[list[dict]] = [[] for _ in runs]
            for round_ in range(rounds):
                for (impl, mode, label), got in zip(runs, per_run, strict=True):
                    python = _venv_python(BENCH_VENV) if impl == "trl" else Path(sys.executable)
                    print(f"[{shape}] running {label} (round {round_ + 1}/{rounds}) ...", flush=True)
                    r = run_worker(python, impl, mode, built, prompts_file, args.updates, args.threads, shape_dir)
                    if "error" in r:
                        print(f"[{shape}] {label} FAILED ({r['error']}):\n{r['log_tail']}", flush=True)
                    else:
                        print(f"[{shape}]   {r['s_per_update']:.2f} s/update mean (each: {r['update_s']}; CPU s: "
                              f"{r['update_cpu_s']}; torch threads {r['torch_threads']}), "
                              f"peak RSS {r['peak_rss_mib']:.0f} MiB, wall {r['wall_s']:.0f} s", flush=True)
                    got.append(r)
            results = [_merge_rounds(got) for got in per_run]
            print(_fmt_table(shape, built, runs, results, args.updates, args.threads), flush=True)
            trl = results[0]
            entry = {"params": built["params"], "trl_s_per_update": round(trl.get("s_per_update", -1), 3),
                     "trl_cpu_s_per_update": round(trl.get("cpu_s_per_update", -1), 3),
                     "trl_peak_rss_mib": round(trl.get("peak_rss_mib", -1))}
            for (_impl, mode, _), r in zip(runs[1:], results[1:], strict=True):
                if "error" in r or "error" in trl:
                    entry[mode] = {"error": r.get("error") or "TRL failed"}
                    continue
                entry[mode] = {"time_ratio": round(r["s_per_update"] / trl["s_per_update"], 3),
                               "cpu_time_ratio": round(r["cpu_s_per_update"] / trl["cpu_s_per_update"], 3),
                               "rss_ratio": round(r["peak_rss_mib"] / trl["peak_rss_mib"], 3),
                               "s_per_update": round(r["s_per_update"], 3), "peak_rss_mib": round(r["peak_rss_mib"]),
                               "micro_batch_size": r.get("micro_batch_size")}
            summary["shapes"][shape] = entry
    shared = {s: e.get("shared", {}) for s, e in summary["shapes"].items()}
    summary["goals_met_by_default_mode"] = {
        "time_ratio<=0.8_all_shapes": all(e.get("time_ratio", 1e9) <= GOALS["time_ratio_max"] for e in shared.values()),
        "rss_ratio<=0.4_at_100m": (shared["100m"].get("rss_ratio", 1e9) <= GOALS["rss_ratio_max_100m"]
                                   if "100m" in shared else None),
    }
    summary["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
