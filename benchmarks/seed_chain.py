"""The chain the calibrated sandbox tests build, on one seed: every figure a test asserts, as JSON.

`tests/conftest.py` and `tests/test_ppo_sandbox.py` build SFT → pairs among 4 SFT answers → simulated labels →
a reward model (and a verbosity-biased one) → PPO, best-of-N and the monitors, and assert an outcome on one seed.
A bound belongs where every seed clears it on both precision paths, so this script runs the same chain with a
seed of your choice (`--seed 0` is exactly the suite's chain; seed s shifts every stage's seed by s) and prints
each asserted figure (docs/PERFORMANCE.md, "Seed-robust sandbox tests", holds the table).

    python benchmarks/seed_chain.py --seed 1 --out runs/chain1.json
    RLHF_WIDGETS_CPU_BF16=0 python benchmarks/seed_chain.py --seed 1   # the float32 path on a bf16 CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import SFT_DEMOS, label_rows, sandbox_prompts  # noqa: E402

from rlhf_widgets.evaluation import best_of_n_curve, check_log, sample_policy, win_rate  # noqa: E402
from rlhf_widgets.labeling.pairs import generate_pairs  # noqa: E402
from rlhf_widgets.runtime.precision import cpu_has_native_bf16  # noqa: E402
from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward  # noqa: E402
from rlhf_widgets.stages.best_of import best_of_n  # noqa: E402
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer  # noqa: E402
from rlhf_widgets.stages.reward.model import RewardStageConfig, train_reward_model  # noqa: E402
from rlhf_widgets.stages.sft import SFTStageConfig, train_sft  # noqa: E402


def ppo_figures(run, sft_dir: Path, seed: int) -> dict:
    """What `test_ppo_beats_sft_on_gold_with_bounded_kl` and the monitor tests read off a PPO run."""
    prompts = sandbox_prompts(128, seed=3, split="test")
    result = win_rate(prompts, sample_policy(run.model_path, prompts, seed=8 + seed),
                      sample_policy(sft_dir, prompts, seed=7 + seed), gold_reward)
    _, kl = run.metrics.series("objective/kl")
    _, gold = run.metrics.series("gold/score")
    _, length = run.metrics.series("val/response_length")
    return {"win_rate": result["win_rate"], "max_kl": max(kl), "gold_first5": sum(gold[:5]) / 5,
            "gold_last5": sum(gold[-5:]) / 5, "gold_best5": max(sum(gold[i:i + 5]) / 5 for i in range(len(gold) - 4)),
            "length_first": length[0], "length_last5": sum(length[-5:]) / 5,
            "alerts": [(a.kind, a.update, a.message) for a in check_log(run.metrics)]}


def loop_figures(sft_dir: Path, seed: int, out_dir: Path) -> dict:
    """What `tests/test_loop.py` asserts of its three rounds (the final policy's gold win rate over SFT), with
    every seed of its recipe shifted by `seed`."""
    from test_loop import make_loop

    history = make_loop(str(out_dir), str(sft_dir), seed=seed).run()
    return {"final_win_rate": history[-1].metrics["loop/gold_win_rate_vs_sft"],
            "rounds": [dict(r.metrics) for r in history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--controls", default="0.1", help="kl_coef of each 40-update PPO run on the reward model, "
                        "comma-separated (the suite's run: 0.1; PPOConfig's default: 0.05)")
    parser.add_argument("--loop-from", type=Path, default=None,
                        help="only the loop test's recipe, from this SFT model (a chain's sft/final)")
    args = parser.parse_args()
    s, t0, out = args.seed, time.perf_counter(), {"seed": args.seed, "bf16": cpu_has_native_bf16()}
    tmp = Path(tempfile.mkdtemp(prefix=f"chain{s}_"))
    times = out["seconds"] = {}
    if args.loop_from:
        out["loop"] = loop_figures(args.loop_from, s, tmp / "loop")
        out["seconds"]["loop"] = round(time.perf_counter() - t0, 1)
        return write(out, args.out)

    def lap(name: str) -> None:
        times[name] = round(time.perf_counter() - t0 - sum(times.values()), 1)
        print(f"[seed {s}] {name} done, {times[name]} s", flush=True)

    sft = train_sft(config=SFTStageConfig(output_dir=str(tmp / "sft"), sandbox_demos=SFT_DEMOS, seed=s)).model_path
    lap("sft")
    ranked = generate_pairs(sandbox_prompts(600, seed=11), model=sft, k=4, max_pairs_per_prompt=6, seed=3 + s,
                            show_progress=False)
    seen: set[str] = set()
    one_per_prompt = [r for r in ranked if not (r["prompt"] in seen or seen.add(r["prompt"]))]
    lap("pairs")
    reward = train_reward_model(label_rows(ranked, SimulatedAnnotator(temperature=1.0, seed=s)),
                                RewardStageConfig(output_dir=str(tmp / "rm"), seed=s), model=sft).reward_model
    biased = train_reward_model(
        label_rows(one_per_prompt, SimulatedAnnotator(temperature=0.5, verbosity_bias=0.6, seed=s)),
        RewardStageConfig(output_dir=str(tmp / "rm_biased"), num_train_epochs=2, eval_fraction=0.2, seed=s),
        model=sft).reward_model
    lap("reward_models")

    # best-of-128 from the SFT model: the biased proxy's picks, and the unbiased reward model's on the same candidates
    prompts = sandbox_prompts(32, seed=12, split="test")
    bon = best_of_n(prompts, model=sft, reward=biased, n=128, seed=s)
    fair, by_gold = bon.rescored(prompts, reward), bon.rescored(prompts, gold_reward)
    out["best_of_n"] = {"biased": best_of_n_curve(bon, prompts, gold_reward),
                        "reward_model": best_of_n_curve(fair, prompts, gold_reward)}
    out["best_of_n_candidates"] = {"biased": bon.candidate_scores, "reward_model": fair.candidate_scores,
                                   "gold": by_gold.candidate_scores,
                                   "words": [[len(c.split()) for c in cs] for cs in bon.candidates]}
    lap("best_of_n")

    for kl_coef in (float(x) for x in args.controls.split(",")):
        cfg = PPOConfig(output_dir=str(tmp / f"ppo_{kl_coef}"), num_updates=40, seed=s, kl_coef=kl_coef)
        run = PPOTrainer(sandbox_prompts(1000, seed=2), cfg, model=sft, reward=reward,
                         gold=gold_reward).train(show_progress=False)
        out[f"ppo_kl{kl_coef}"] = ppo_figures(run, sft, s)
        lap(f"ppo_kl{kl_coef}")
    cfg = PPOConfig(output_dir=str(tmp / "ppo_biased"), num_updates=20, seed=s, sample_every=0)
    run = PPOTrainer(sandbox_prompts(1000, seed=2), cfg, model=sft, reward=biased,
                     gold=gold_reward).train(show_progress=False)
    out["ppo_biased"] = {"alerts": [(a.kind, a.update, a.message) for a in check_log(run.metrics)]}
    lap("ppo_biased")
    write(out, args.out)


def write(out: dict, path: Path | None) -> None:
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    main()
