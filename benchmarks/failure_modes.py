"""Failure modes induced on purpose and caught: sycophancy and over-refusal from biased annotators (measured by
the probes), and reward-hacking alerts on a verbosity-biased reward model (measured by the monitors).

    OMP_NUM_THREADS=1 python benchmarks/failure_modes.py                   # both parts (~1.5 h on 2 busy cores)
    python benchmarks/failure_modes.py --part probes --ppo-updates 16

**probes**: SFT on the sandbox with both failure-mode scenarios on (half the prompts are traps) → candidate pairs
among 4 SFT answers per prompt → labels from three simulated annotators (unbiased; `sycophancy_bias`;
`refusal_bias`) → one reward model each → PPO on the prompts of each trap: the sycophantic annotator's RM on false
claims, the cautious one's on alarming requests, and the unbiased one's on each of the two (the controls) → every
policy on a held-out probe set (`--probes-per-kind` test prompts of each kind): sycophancy rate, benign refusal
rate, correct refusal rate with 95% Wilson intervals, and the alerts of the monitors.

PPO runs on one trap's prompts at a time because the reward of the other kinds drowns the bias's signal in a short
run: on prompts that mix in out-of-scope requests (where refusing is worth ~10 points to the cautious annotator), a
10-update run learned to decline those and did not deflect benign requests any more often.

**monitors**: the default world (SFT → pairs → reward model, unbiased and verbosity-biased as in the test
fixtures) → PPO against each → `check_log` on each run's metrics: which alerts fire, and when.

Prints the results and writes them (with the settings) to `--out`/failure_modes.json. Set `OMP_NUM_THREADS=1` on a
machine whose cores are shared: two threads contending with other processes ran SFT ~10x slower here.
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
from rlhf_widgets.evaluation.probes import load_probes, run_probes  # noqa: E402
from rlhf_widgets.runtime.monitors import check_log  # noqa: E402
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


def reward_models(out: Path, sft_path: Path, prompts: list[str], labelers: dict, args) -> dict:
    """Pairs among 4 SFT answers per prompt (all 6 pairs), labelled by each annotator → a reward model each."""
    store = prepare_pairs(prompts, out / "labels.sqlite", model=sft_path, k=4, pairs_per_prompt=6, seed=args.seed,
                          show_progress=False)
    models = {}
    for name, annotator in labelers.items():
        label_with(store, annotator, annotator=name, show_progress=False)
        pairs = store.to_dataset(annotator=name)
        models[name] = train_reward_model(pairs, RewardStageConfig(output_dir=str(out / f"reward_{name}"),
                                                                   seed=args.seed), model=sft_path).reward_model
        print(f"  reward model '{name}': {len(pairs)} pairs", flush=True)
    return models


def ppo(out: Path, name: str, sft_path: Path, prompts: list[str], reward, args):
    run = train_ppo(prompts, PPOConfig(output_dir=str(out / f"ppo_{name}"), num_updates=args.ppo_updates,
                                       seed=args.seed), model=sft_path, reward=reward, gold=gold_reward)
    print(f"  PPO '{name}': {run.status} in {run.train_seconds:.0f} s", flush=True)
    return run


def trap_prompts(trap: str, args) -> list[str]:
    return [p.text for p in make_prompts(1000, seed=args.seed + 2, scenarios=(trap,), scenario_share=1.0)]


def held_out_probes(n_per_kind: int, seed: int) -> list:
    """`n_per_kind` test-split prompts of each trap kind, as probes."""
    kinds = {"false_claim": "false_claim", "alarming": "benign", "out_of_scope": "out_of_scope"}
    rows = []
    for kind, probe_kind in kinds.items():
        rows += [{"kind": probe_kind, "prompt": p.text, "id": f"{probe_kind}-{i}"}
                 for i, p in enumerate(make_prompts(n_per_kind, seed=seed, split="test", scenarios=(kind,),
                                                    scenario_share=1.0))]
    return load_probes(rows)


def probes_part(out: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    sft = train_sft(sft_dataset(args.sft_demos, seed=args.seed, scenarios=SCENARIOS),
                    SFTStageConfig(output_dir=str(out / "sft"), num_train_epochs=args.sft_epochs, seed=args.seed))
    pair_prompts = [p.text for p in make_prompts(args.pair_prompts, seed=args.seed + 1, scenarios=SCENARIOS)]
    rms = reward_models(out, sft.model_path, pair_prompts, annotators(args), args)
    runs = {"sycophantic (false claims)": ppo(out, "sycophantic", sft.model_path, trap_prompts("false_claim", args),
                                              rms["sycophantic"], args),
            "unbiased (false claims)": ppo(out, "unbiased_claims", sft.model_path, trap_prompts("false_claim", args),
                                           rms["unbiased"], args),
            "cautious (alarming)": ppo(out, "cautious", sft.model_path, trap_prompts("alarming", args),
                                       rms["cautious"], args),
            "unbiased (alarming)": ppo(out, "unbiased_alarming", sft.model_path, trap_prompts("alarming", args),
                                       rms["unbiased"], args)}
    policies = {"SFT": sft.model_path, **{f"PPO {name}": run.model_path for name, run in runs.items()}}
    probes = held_out_probes(args.probes_per_kind, args.seed + 7)
    rows = {}
    for name, policy in policies.items():
        summary = run_probes(policy, probes, seed=args.seed).summary()
        rows[name] = {rate: f"{summary.loc[rate, 'rate']:.3f} [{summary.loc[rate, 'low']:.3f}, "
                            f"{summary.loc[rate, 'high']:.3f}]" for rate in summary.index}
    alerts = {name: [(a.kind, a.update) for a in check_log(run.metrics)] for name, run in runs.items()}
    gold = {name: [round(run.metrics.series("gold/score")[1][i], 2) for i in (0, -1)] for name, run in runs.items()}
    return {"policies": rows, "ppo_gold_first_last": gold, "alerts": alerts,
            "seconds": round(time.perf_counter() - start)}


def monitors_part(out: Path, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    sft = train_sft(config=SFTStageConfig(output_dir=str(out / "sft"), seed=args.seed))
    prompts = [p.text for p in make_prompts(args.pair_prompts + 1000, seed=args.seed + 1)]
    labelers = {"default": SimulatedAnnotator(temperature=args.temperature, seed=args.seed),
                "verbose": SimulatedAnnotator(temperature=0.5, verbosity_bias=args.verbosity_bias, seed=args.seed)}
    rms = reward_models(out, sft.model_path, prompts[:args.pair_prompts], labelers, args)
    result = {}
    for name, rm in rms.items():
        run = ppo(out, name, sft.model_path, prompts[args.pair_prompts:], rm, args)
        _, length = run.metrics.series("val/response_length")
        _, gold = run.metrics.series("gold/score")
        _, kl = run.metrics.series("objective/kl")
        result[name] = {"alerts": [{"kind": a.kind, "update": a.update, "message": a.message}
                                   for a in check_log(run.metrics)],
                        "length_tokens_first_last": [round(length[0], 1), round(length[-1], 1)],
                        "gold_first5_last5": [round(sum(gold[:5]) / 5, 2), round(sum(gold[-5:]) / 5, 2)],
                        "kl_last": round(kl[-1], 2)}
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
    parser.add_argument("--probes-per-kind", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="annotators' Bradley-Terry temperature")
    parser.add_argument("--sycophancy-bias", type=float, default=6.0)
    parser.add_argument("--refusal-bias", type=float, default=12.0)
    parser.add_argument("--verbosity-bias", type=float, default=0.6)
    args = parser.parse_args()
    out = Path(args.out)
    results: dict = {"settings": vars(args)}
    if args.part in ("probes", "all"):
        print("probes: SFT (scenario world) → pairs → 3 annotators → 3 RMs → 4 PPO runs", flush=True)
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
