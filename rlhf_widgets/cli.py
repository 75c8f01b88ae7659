"""Command line: `python -m rlhf_widgets quickstart` (and stage runs for scripts / accelerate launch)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-widgets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    qs = sub.add_parser("quickstart", help="run the whole RLHF loop on the offline sandbox and write a report")
    qs.add_argument("--output-dir", default="runs/quickstart")
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument("--ppo-updates", type=int, default=None)
    qs.add_argument("--stages", default=None, help="comma-separated subset, e.g. sft,pairs,reward")
    ppo = sub.add_parser("ppo", help="PPO from an SFT model against a saved reward model (accelerate-launchable)")
    ppo.add_argument("--policy", required=True, help="SFT model directory or hub id")
    ppo.add_argument("--reward-model", required=True, help="directory written by RewardModel.save")
    ppo.add_argument("--prompts", default="sandbox", help="'sandbox' or a .jsonl file with a 'prompt' field")
    ppo.add_argument("--output-dir", default="runs/ppo")
    ppo.add_argument("--num-updates", type=int, default=60)
    ppo.add_argument("--batch-size", type=int, default=32)
    ppo.add_argument("--mini-batch-size", type=int, default=16)
    ppo.add_argument("--seed", type=int, default=0)
    ppo.add_argument("--load-in-4bit", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "quickstart":
        from rlhf_widgets.pipeline import QuickstartConfig, run_quickstart

        cfg = QuickstartConfig(output_dir=args.output_dir, seed=args.seed)
        if args.ppo_updates is not None:
            cfg.ppo_updates = args.ppo_updates
        if args.stages:
            cfg.stages = tuple(s.strip() for s in args.stages.split(","))
        result = run_quickstart(cfg)
        print(json.dumps({"seconds": result.seconds, "numbers": result.numbers}, indent=2, default=str))
        print(f"\nArtifacts in {result.output_dir.resolve()}")
        if result.report_path:
            print(f"Report: {result.report_path.resolve()}")
        return 0
    if args.command == "ppo":
        from rlhf_widgets.ppo import PPOConfig, PPOTrainer
        from rlhf_widgets.reward import RewardModel

        if args.prompts == "sandbox":
            from rlhf_widgets.sandbox import make_prompts

            prompts = [p.text for p in make_prompts(1000, seed=args.seed)]
        else:
            with open(args.prompts, encoding="utf-8") as fh:
                prompts = [json.loads(line)["prompt"] for line in fh if line.strip()]
        cfg = PPOConfig(output_dir=args.output_dir, num_updates=args.num_updates, batch_size=args.batch_size,
                        mini_batch_size=args.mini_batch_size, seed=args.seed, load_in_4bit=args.load_in_4bit)
        trainer = PPOTrainer(cfg, policy=args.policy, reward=RewardModel.load(args.reward_model), prompts=prompts)
        trainer.train()
        if trainer.is_main:
            print(f"PPO finished ({trainer.control.state}); checkpoint in {trainer.output_dir / 'last'}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
