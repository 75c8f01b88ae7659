"""The quickstart's stages in CPU seconds (issue 28): `run_quickstart` with each stage's process CPU time
(user + sys, `time.process_time`) beside its wall seconds, one torch thread by default, so two runs (an A/B of two
commits) can share a busy machine and still be compared.

    RLHF_WIDGETS_CPU_BF16=0 OMP_NUM_THREADS=1 python benchmarks/quickstart_cpu.py --out /tmp/qs --threads 1

Prints one JSON line: {"cpu": {stage: s}, "wall": {stage: s}, "numbers": {...}}; extra arguments go to
`QuickstartConfig` (`--sft_demos 512`, `--ppo_updates 8`, ...).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft_demos", type=int)
    parser.add_argument("--pair_prompts", type=int)
    parser.add_argument("--ppo_updates", type=int)
    parser.add_argument("--eval_prompts", type=int)
    parser.add_argument("--stages", nargs="+")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rlhf_widgets.workflows import quickstart as pipeline

    sizes = {k: v for k, v in vars(args).items()
             if k in ("seed", "sft_demos", "pair_prompts", "ppo_updates", "eval_prompts", "stages") and v is not None}
    config = pipeline.QuickstartConfig(output_dir=args.out, **sizes)
    cpu: dict[str, float] = {}
    run_stage = pipeline._run_stage

    def timed(stage, *rest):
        start = time.process_time()
        try:
            return run_stage(stage, *rest)
        finally:
            cpu[stage] = round(time.process_time() - start, 1)

    pipeline._run_stage = timed
    result = pipeline.run_quickstart(config)
    comparison = result.numbers.get("comparison", {})
    numbers = {"reward_gold_agreement": result.numbers.get("reward", {}).get("gold_agreement")}
    numbers.update({f"{name} gold_win": round(row["gold_win_rate"], 3) for name, row in comparison.items()})
    print(json.dumps({"cpu": cpu, "cpu_total": round(sum(cpu.values()), 1), "wall": result.seconds,
                      "numbers": numbers}))


if __name__ == "__main__":
    main()
