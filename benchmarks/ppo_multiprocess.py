"""PPO with 2 processes vs 1 on CPU: seconds per update and peak RSS per process, through `accelerate launch`.

    python benchmarks/ppo_multiprocess.py [--updates 4] [--batch 8] [--new-tokens 24] [--precision no]

Runs the sandbox model (the tiny shape: batch `--batch` rollouts per process, `--new-tokens` new tokens, 4 PPO
epochs, one minibatch) three ways, one after another, each in fresh processes:

- 1 process, 1 torch thread;
- 1 process, 2 torch threads (the whole 2-core machine to one process);
- 2 processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on CPU), 1 thread each — twice the
  rollouts per update.

Each process does one warm-up update and `--updates` timed ones, and reports the median seconds per update and its
peak RSS (`ru_maxrss`). The table shows seconds per update, episodes per second (all processes) and peak RSS per
process. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def worker(out: Path, updates: int, batch: int, new_tokens: int, precision: str) -> None:
    """One process of a run: time the updates, write `out/rank<r>.json`."""
    import torch

    from rlhf_widgets.sandbox import gold_reward, make_prompts
    from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer

    prompts = [p.text for p in make_prompts(256, seed=21)]
    cfg = PPOConfig(output_dir=str(out / "run"), num_updates=updates + 1, batch_size=batch, mini_batch_size=batch,
                    num_ppo_epochs=4, max_new_tokens=new_tokens, sample_every=0, mixed_precision=precision)
    trainer = PPOTrainer(prompts, cfg, reward=gold_reward)
    seconds = []
    for _ in range(updates + 1):
        start = time.perf_counter()
        trainer.step()
        seconds.append(time.perf_counter() - start)
    rank = trainer.processes.index
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "processes": trainer.processes.count, "threads": torch.get_num_threads(),
        "update_s": seconds, "s_per_update": statistics.median(seconds[1:]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "precision": trainer.precision.mode}))
    trainer.accelerator.end_training()


def run(processes: int, threads: int, args: argparse.Namespace, port: int) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix=f"ppo-mp{processes}-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    script = [str(HERE), "--worker", str(out), "--updates", str(args.updates), "--batch", str(args.batch),
              "--new-tokens", str(args.new_tokens), "--precision", args.precision]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=4, help="timed updates per run (after one warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="rollouts per update per process")
    parser.add_argument("--new-tokens", type=int, default=24, help="max new tokens per response")
    parser.add_argument("--precision", default="no", help="PPOConfig.mixed_precision")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.updates, args.batch, args.new_tokens, args.precision)
        return
    print(f"sandbox model, batch {args.batch} per process, {args.new_tokens} new tokens, 4 epochs, "
          f"{args.updates} timed updates, mixed_precision={args.precision}")
    print(f"{'processes':>9} {'threads':>7} {'episodes/update':>15} {'s/update':>9} {'episodes/s':>10} "
          f"{'peak RSS/process MiB':>22}")
    for processes, threads, port in ((1, 1, 0), (1, 2, 0), (2, 1, 29571)):
        ranks = run(processes, threads, args, port)
        seconds = max(r["s_per_update"] for r in ranks)  # an update ends when the slowest process is done
        episodes = args.batch * processes
        rss = " / ".join(f"{r['peak_rss_mib']:.0f}" for r in ranks)
        print(f"{processes:>9} {threads:>7} {episodes:>15} {seconds:>9.2f} {episodes / seconds:>10.1f} {rss:>22}")


if __name__ == "__main__":
    main()
