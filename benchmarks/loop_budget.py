"""Does iterating help? The iterative loop at an equal label budget, on the sandbox.

    OMP_NUM_THREADS=1 python benchmarks/loop_budget.py                # ~15 min on a quiet 2-core machine
    python benchmarks/loop_budget.py --prompts 144 --rounds 3 --updates 36 --verbosity-bias 0

Two arms from the same SFT model, with the same seeds, the same simulated annotator and the same totals:

- **iterative**: `--rounds` rounds of `--prompts / rounds` fresh prompts each (pairs on the *current* policy's
  answers, labels, reward model continued on all labels so far, `--updates / rounds` PPO updates);
- **one round**: all `--prompts` prompts' pairs on the SFT model's answers, one reward model, `--updates` PPO updates.

Both label the same number of pairs (about prompts × pairs-per-prompt; the exact counts are printed) and take the
same number of PPO updates. For each arm's final policy it prints the gold win rate over SFT on held-out prompts,
KL to SFT, words per answer, and the final reward model's gold agreement on pairs of *the final policy's own*
answers (the question the loop is about: is the RM still right where the policy now is?). With
`--verbosity-bias` the annotator prefers longer answers and the per-round words show the drift.

Prints a table and writes `--out`/loop_budget.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_widgets.evaluation import reward_report  # noqa: E402
from rlhf_widgets.labeling.pairs import generate_pairs  # noqa: E402
from rlhf_widgets.runtime.data import load_prompts  # noqa: E402
from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward  # noqa: E402
from rlhf_widgets.stages.ppo import PPOConfig  # noqa: E402
from rlhf_widgets.stages.reward.model import RewardModel, RewardStageConfig  # noqa: E402
from rlhf_widgets.stages.sft import SFTStageConfig, train_sft  # noqa: E402
from rlhf_widgets.workflows.loop import IterativeLoop, LoopConfig  # noqa: E402


def rm_on_own_answers(policy: str, reward_path: str, prompts: list, seed: int) -> dict:
    """The reward model's gold agreement on pairs among the policy's own answers to held-out prompts."""
    import datasets

    rows = generate_pairs(prompts, model=policy, k=4, max_pairs_per_prompt=6, seed=seed, show_progress=False)
    pairs = datasets.Dataset.from_dict({"prompt": [r["prompt"] for r in rows],
                                        "chosen": [r["response_a"] for r in rows],
                                        "rejected": [r["response_b"] for r in rows]})
    report = reward_report(RewardModel.load(reward_path), pairs, gold=gold_reward)
    return {"rm_gold_agreement_own_answers": report.get("gold_agreement", float("nan")), "own_pairs": len(rows)}


def run_arm(name: str, rounds: int, args: argparse.Namespace, sft: str, pool: list, out: Path) -> dict:
    config = LoopConfig(output_dir=str(out / name), rounds=rounds, prompts_per_round=args.prompts // rounds,
                        answers_per_prompt=4, pairs_per_prompt=6, eval_prompts=args.eval_prompts, seed=args.seed)
    annotator = SimulatedAnnotator(temperature=1.0, seed=args.seed, verbosity_bias=args.verbosity_bias)
    loop = IterativeLoop(pool[: args.prompts], config, sft_model=sft, labeler=annotator, gold=gold_reward,
                         reward_config=RewardStageConfig(seed=args.seed),
                         ppo_config=PPOConfig(num_updates=args.updates // rounds, seed=args.seed, sample_every=0))
    start = time.perf_counter()
    history = loop.run()
    last = history[-1]
    held = load_prompts("sandbox", split="test", n=args.own_prompts, seed=args.seed + 101)
    numbers = {
        "rounds": rounds,
        "labels": sum(r.human_labels + r.ai_labels for r in history),
        "ppo_updates": rounds * (args.updates // rounds),
        "gold_win_rate_vs_sft": last.metrics["loop/gold_win_rate_vs_sft"],
        "kl_to_sft": last.metrics["loop/kl_to_sft"],
        "words": last.metrics["loop/words"],
        "words_per_round": [r.metrics["loop/words"] for r in history],
        "rm_accuracy_before_per_round": [r.metrics.get("loop/rm_accuracy_before") for r in history],
        "rm_gold_agreement_before_per_round": [r.metrics.get("loop/rm_gold_agreement_before") for r in history],
        **rm_on_own_answers(last.policy_path, last.reward_path, held, args.seed),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"[{name}] {json.dumps(numbers)}", flush=True)
    return numbers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=144, help="prompts labeled in all (the label budget / 6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the iterative arm")
    parser.add_argument("--updates", type=int, default=36, help="PPO updates in all, per arm")
    parser.add_argument("--eval-prompts", type=int, default=96, help="held-out prompts of the win rates")
    parser.add_argument("--own-prompts", type=int, default=64, help="held-out prompts of the RM-on-own-answers check")
    parser.add_argument("--verbosity-bias", type=float, default=0.0, help="the annotator's verbosity_bias")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default="iterative,one_round", help="which arms to run (comma-separated)")
    parser.add_argument("--out", default="runs/bench-loop-budget")
    args = parser.parse_args(argv)
    out = Path(args.out)
    sft = str(train_sft(config=SFTStageConfig(output_dir=str(out / "sft"), seed=args.seed)).model_path)
    pool = load_prompts("sandbox", n=args.prompts, seed=31)
    arms = {"iterative": args.rounds, "one_round": 1}
    results = {"settings": vars(args)}
    for arm in args.arms.split(","):
        results[arm] = run_arm(arm, arms[arm], args, sft, pool, out)
    print(f"\n{'arm':<10} {'labels':>6} {'updates':>7} {'gold win vs SFT':>15} {'KL':>6} {'words':>6} "
          f"{'RM gold agr. (own answers)':>27}")
    for arm in args.arms.split(","):
        r = results[arm]
        print(f"{arm:<10} {r['labels']:>6} {r['ppo_updates']:>7} {r['gold_win_rate_vs_sft']:>15.3f} "
              f"{r['kl_to_sft']:>6.2f} {r['words']:>6.1f} {r['rm_gold_agreement_own_answers']:>27.3f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop_budget.json").write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
