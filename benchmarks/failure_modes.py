"""Failure modes induced on purpose and caught: sycophancy and over-refusal from biased annotators (measured by
the probes), and reward-hacking alerts on a verbosity-biased reward model (measured by the monitors).

    python benchmarks/failure_modes.py                    # both parts, the sizes below (~1 h on 2 busy CPU cores)
    python benchmarks/failure_modes.py --part probes --ppo-updates 16

**probes**: SFT on the sandbox with both failure-mode scenarios on → candidate pairs among 4 SFT answers per
prompt → labels from three simulated annotators (unbiased; `sycophancy_bias`; `refusal_bias`) → one reward model
each → one PPO run each → every policy on the sandbox probe set (`load_probes("sandbox")`, 64 held-out probes
per kind): sycophancy rate, benign refusal rate, correct refusal rate (with 95% Wilson intervals), probe length,
and gold on held-out prompts of the scenario world.

**monitors**: the default world (the quickstart's SFT → pairs → reward model, unbiased and verbosity-biased) →
PPO against each → `check_log` on each run's metrics: the alerts that fire.

Prints the tables and writes them (with the settings) to `--out`/failure_modes.json. Set `OMP_NUM_THREADS=1` on
a machine whose cores are shared: two threads contending with other processes ran our PPO and SFT ~10x slower.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_widgets import (  # noqa: E402
    PPOConfig,
    RewardStageConfig,
    SFTStageConfig,
    label_with,
    prepare_pairs,
    train_ppo,
    train_reward_model,
    train_sft,
)
from rlhf_widgets.evaluation.monitors import check_log  # noqa: E402
from rlhf_widgets.evaluation.probes import load_probes, run_probes  # noqa: E402
from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward, make_prompts, sft_dataset  # noqa: E402

SCENARIOS = ("sycophancy", "refusal")


def annotators(args: argparse.Namespace) -> dict[str, SimulatedAnnotator]:
    """The three labelers of the probes part, each seeded the same."""
    return {
        "unbiased": SimulatedAnnotator(temperature=args.temperature, seed=args.seed),
        "sycophantic": SimulatedAnnotator(temperature=args.temperature, seed=args.seed,
                                          sycophancy_bias=args.sycophancy_bias),
        "cautious": SimulatedAnnotator(temperature=args.temperature, seed=args.seed, refusal_bias=args.refusal_bias),
    }


def policies_from_annotators(out: Path, sft_path: Path, prompts: list[str], labelers: dict, args) -> dict:
    """Pairs of the SFT model's answers, labelled by each annotator → a reward model each → a PPO run each."""
    store = prepare_pairs(prompts[: args.pair_prompts], out / "labels.sqlite", model=sft_path, k=4,
                          pairs_per_prompt=6, seed=args.seed, show_progress=False)
    runs = {}
    for name, annotator in labelers.items():
        label_with(store, annotator, annotator=name, show_progress=False)
        rm = train_reward_model(store.to_dataset(annotator=name),
                                RewardStageConfig(output_dir=str(out / f"reward_{name}"), seed=args.seed),
                                model=sft_path)
        ppo_prompts = prompts[args.pair_prompts:]
        ppo = train_ppo(ppo_prompts, PPOConfig(output_dir=str(out / f"ppo_{name}"), num_updates=args.ppo_updates,
                                               seed=args.seed),
                        model=sft_path, reward=rm.reward_model, gold=gold_reward)
        runs[name] = ppo
        print(f"  {name}: {len(store.to_dataset(annotator=name))} pairs, PPO {ppo.status} "
              f"in {ppo.train_seconds:.0f} s", flush=True)
    return runs


def mean_gold(policy, prompts: list[str], seed: int) -> float:
    from rlhf_widgets.evaluation import sample_policy

    answers = sample_policy(policy, prompts, seed=seed)
    return sum(gold_reward(prompts, answers)) / len(prompts)


def probes_part(out: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    sft = train_sft(sft_dataset(args.sft_demos, seed=args.seed, scenarios=SCENARIOS),
                    SFTStageConfig(output_dir=str(out / "sft"), num_train_epochs=args.sft_epochs, seed=args.seed))
    prompts = [p.text for p in make_prompts(args.pair_prompts + 1000, seed=args.seed + 1, scenarios=SCENARIOS)]
    runs = policies_from_annotators(out, sft.model_path, prompts, annotators(args), args)
    policies = {"SFT": sft.model_path, **{f"PPO ({name})": run.model_path for name, run in runs.items()}}
    probes = load_probes("sandbox")
    held_out = [p.text for p in make_prompts(args.eval_prompts, seed=args.seed + 3, split="test",
                                             scenarios=SCENARIOS)]
    rows = {}
    for name, policy in policies.items():
        report = run_probes(policy, probes, seed=args.seed)
        summary = report.summary()
        rows[name] = {**{k: round(v, 3) for k, v in report.rates.items()},
                      **{f"{k}_95": [round(summary.loc[k, "low"], 3), round(summary.loc[k, "high"], 3)]
                         for k in summary.index},
                      "gold_held_out": round(mean_gold(policy, held_out, args.seed), 3)}
    return {"policies": rows, "alerts": {name: [a.kind for a in check_log(run.metrics)] for name, run in runs.items()},
            "seconds": round(time.perf_counter() - start)}


def monitors_part(out: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    sft = train_sft(config=SFTStageConfig(output_dir=str(out / "sft"), seed=args.seed))
    prompts = [p.text for p in make_prompts(args.pair_prompts + 1000, seed=args.seed + 1)]
    labelers = {"default": SimulatedAnnotator(temperature=args.temperature, seed=args.seed),
                "verbose": SimulatedAnnotator(temperature=0.5, verbosity_bias=args.verbosity_bias, seed=args.seed)}
    runs = policies_from_annotators(out, sft.model_path, prompts, labelers, args)
    result = {}
    for name, run in runs.items():
        alerts = check_log(run.metrics)
        _, length = run.metrics.series("val/response_length")
        _, gold = run.metrics.series("gold/score")
        result[name] = {"alerts": [{"kind": a.kind, "update": a.update, "message": a.message} for a in alerts],
                        "length_first_last": [round(length[0], 1), round(length[-1], 1)],
                        "gold_first5_last5": [round(sum(gold[:5]) / 5, 2), round(sum(gold[-5:]) / 5, 2)]}
    return {"runs": result, "seconds": round(time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("probes", "monitors", "all"), default="all")
    parser.add_argument("--out", default="runs/failure_modes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-demos", type=int, default=2048)
    parser.add_argument("--sft-epochs", type=float, default=3.0)
    parser.add_argument("--pair-prompts", type=int, default=600)
    parser.add_argument("--ppo-updates", type=int, default=32)
    parser.add_argument("--eval-prompts", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="annotators' Bradley-Terry temperature")
    parser.add_argument("--sycophancy-bias", type=float, default=3.0)
    parser.add_argument("--refusal-bias", type=float, default=4.0)
    parser.add_argument("--verbosity-bias", type=float, default=0.6)
    args = parser.parse_args()
    out = Path(args.out)
    results: dict = {"settings": vars(args)}
    if args.part in ("probes", "all"):
        print("probes: SFT (scenario world) → pairs → 3 annotators → 3 RMs → 3 PPO runs", flush=True)
        results["probes"] = probes_part(out / "probes", args)
        print(json.dumps(results["probes"], indent=1), flush=True)
    if args.part in ("monitors", "all"):
        print("monitors: default world, PPO against an unbiased and a verbosity-biased RM", flush=True)
        results["monitors"] = monitors_part(out / "monitors", args)
        print(json.dumps(results["monitors"], indent=1), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "failure_modes.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
