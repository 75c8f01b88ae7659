"""Which reward should PPO optimise by default: one reward model, or an ensemble's mean, worst member or mean − λ·var?

The measurement issue 27 asks for (item 5, "Measure, then choose the defaults"), on this 2-core machine — each seed
is one process with 1 torch thread, two at a time (`wait` before the next block); every line appends to
`<out>/results.jsonl`:

    arms() { OMP_NUM_THREADS=1 python benchmarks/ensemble_arms.py --best-of-n "$@"; }
    # 1. this machine's precision path (bf16): quickstart seeds 0-7 x 4 arms, best-of-N to 128
    (for s in 0 2 4 6; do arms --seed $s --out runs/arms_bf16; done) &
    (for s in 1 3 5 7; do arms --seed $s --out runs/arms_bf16; done); wait
    # 2. the float32 path: seeds 0-3
    (for s in 0 2; do RLHF_WIDGETS_CPU_BF16=0 arms --seed $s --out runs/arms_fp32; done) &
    (for s in 1 3; do RLHF_WIDGETS_CPU_BF16=0 arms --seed $s --out runs/arms_fp32; done); wait
    # 3. the verbosity-biased world (the annotator credits 0.6 gold points per extra word), bf16, seeds 0-3
    (for s in 0 2; do arms --seed $s --verbosity-bias 0.6 --out runs/arms_verbose; done) &
    (for s in 1 3; do arms --seed $s --verbosity-bias 0.6 --out runs/arms_verbose; done); wait

How long, all three blocks: about 2 h on a quiet machine, at most ~4.6 h (one seed: 13–29 min; float32 ~1.8×
that; how these were scaled is at the end of this docstring).

What one run does, for `--seed s`: the quickstart's chain (`workflows.quickstart`: the same SFT model, pairs and
simulated-annotator labels as `run_quickstart(QuickstartConfig(seed=s, verbosity_bias=b))`), cached under
`<out>/seed_s/` — a later run with the same sizes reuses it and says so ("reused"); a run with other sizes, another
bias or the other precision path refuses that directory. Then, for each of `--arms`:

- `single`: the quickstart's reward model (`train_reward_model`, `quickstart_reward_config`);
- `mean`, `worst`, `uncertainty`: ONE `train_reward_ensemble` of `--members` K reward models (the same settings,
  members on bootstrap resamples by prompt), trained once per seed and cached; the arms differ only in the
  ensemble's objective (`uncertainty`: mean − λ·variance, λ = `--uncertainty-weight`).
- `watched`: PPO against the `single` arm's reward model alone, with the ensemble's members watching (scored and
  logged each update, their spread read by the gold-free monitors; `Watched`): does the alarm see a single model's
  collapse before gold falls?
- `warm`: ONE reward model whose weights are the mean of that ensemble's members' (`weight_averaged`, WARM),
  normalised on the responses the members were normalised on.

then the quickstart's PPO against that reward (`quickstart_ppo`: the same `PPOConfig`, `--ppo-updates`, gold logged
as `gold/score`, the reward-hacking monitors attached), and the quickstart's evaluation of it
(`quickstart_compare`: win rates over SFT by gold and by the arm's own reward, KL to SFT, words, on the held-out
prompts). One JSON line per arm:

    seed, arm, members (K; 1 for single), objective, uncertainty_weight (λ; uncertainty only), verbosity_bias, bf16,
    gold_win_rate_vs_sft, rm_win_rate_vs_sft, gold_mean, kl (mean sequence KL of PPO's answers to SFT, nats),
    words, sft_words, ppo: {updates, status, gold_first, gold_final, gold_best, gold_best_update, kl_final}
      (gold smoothed by a trailing mean over the monitors' window, 5 updates), alerts: [{kind, update}] (every alert
    the monitors raised, gold and gold-free kinds), seconds: {reward, ppo, evaluate[, best_of_n]} (reward: the
    training's wall time, the shared ensemble's for every ensemble arm, as measured when it was trained),
    reused: {chain, reward}[, best_of_n: [{n, sqrt_kl, proxy, gold}]]

`--best-of-n` adds the best-of-N curve of the arm's reward over N = 1, 2, 4, …, `--bon-n` (128): `--bon-prompts`
held-out prompts, `--bon-n` SFT answers each (sampled once per seed and cached), picked by the arm's reward; each
point is the gold (and proxy) score of the pick averaged over every N-subset of the candidates
(`evaluation.best_of_n_curve`, the unbiased estimator).

    OMP_NUM_THREADS=1 python benchmarks/ensemble_arms.py --quick --seed 0 --arms single,worst --best-of-n --out /tmp/a

How the time was estimated (2026-12, this 2-core machine, bf16 path; the smoke run above took 52 s, with 1 thread
beside the test suite — the same share of the machine as two runs at a time): its stages took SFT 5.1 s (128
demos), pairs 2.3 s (96 answers), best-of-8 candidates 1.5 s (32 answers), reward model 5.1 s (138 pairs),
2-member ensemble 10.0 s, PPO 7.6–7.9 s (2 updates), evaluation 1.8–2.2 s (16 prompts), best-of-N rescoring
0.2 s (one model) / 0.3 s (two). Scaled linearly by the work each does at the full sizes — demos ×16, pair answers
×25, reward pairs ×26 (and ×2 members for K = 4), PPO updates ×16, evaluation prompts ×8, best-of-N answers ×128 —
one seed of 4 arms with `--best-of-n` is about 29 min: SFT 1.4, pairs 1, candidates 3.2, reward model 2.2,
ensemble 8.7, PPO 4 × 2, evaluation 4 × 0.3, rescoring 3.6 min. That is an upper bound: it scales each tiny stage's
fixed costs too. The quickstart's own full-size stage times (docs/PERFORMANCE.md, "The quickstart: 3 min 52 s →
2 min 22 s": SFT 25 s, pairs 15, reward model 23, PPO 41 alone with 2 threads; doubled for two runs at a time) give
about 13 min a seed, with the ensemble at 4 × the
reward model and PPO against it as fast as against one model (as in the smoke run). Two at a time, with float32
~1.8× slower (that table's float32 column): 4 × 13 + 2 × 13 + 2 × 13 × 1.8 ≈ 125 min, or with 29 min a seed ≈ 4.6 h.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
import torch  # noqa: E402

from rlhf_widgets import sandbox  # noqa: E402
from rlhf_widgets.evaluation import best_of_n_curve  # noqa: E402
from rlhf_widgets.labeling import PreferenceStore  # noqa: E402
from rlhf_widgets.runtime.data import split_by_prompt  # noqa: E402
from rlhf_widgets.runtime.monitors import ALERT_EVENT, GOLD_FREE_KINDS, MonitorConfig  # noqa: E402
from rlhf_widgets.runtime.precision import cpu_has_native_bf16  # noqa: E402
from rlhf_widgets.stages.best_of import BestOfN, best_of_n  # noqa: E402
from rlhf_widgets.stages.reward.ensemble import (  # noqa: E402
    OBJECTIVES,
    RewardEnsemble,
    train_reward_ensemble,
    weight_averaged,
)
from rlhf_widgets.stages.reward.model import RewardModel, fit_normalization_on_pairs, train_reward_model  # noqa: E402
from rlhf_widgets.workflows.quickstart import (  # noqa: E402
    QuickstartConfig,
    quickstart_annotator,
    quickstart_compare,
    quickstart_pairs,
    quickstart_ppo,
    quickstart_reward_config,
    quickstart_sft,
)

ARMS = ("single", *OBJECTIVES, "warm", "watched")
CHAIN = "chain.json"
"""What a seed directory's SFT model and labels were built with; written last, so a directory without it is a
chain that did not finish (it is rebuilt)."""
QUICK = {"sft_demos": 128, "pair_prompts": 24, "eval_prompts": 16, "ppo_updates": 2, "members": 2, "bon_n": 8,
         "bon_prompts": 4}
"""--quick: every size shrunk for a smoke run."""


def log(seed: int, message: str) -> None:
    print(f"[seed {seed}] {message}", file=sys.stderr, flush=True)


def chain(config: QuickstartConfig) -> tuple[Path, datasets.Dataset, bool]:
    """(SFT model path, labeled pairs, reused?) of the quickstart's chain in `config.output_dir`."""
    seed_dir, s = Path(config.output_dir), config.seed
    meta = {k: v for k, v in asdict(config).items() if k not in ("output_dir", "stages", "ppo_updates", "eval_prompts",
                                                                  "best_of", "reward_members", "reward_objective",
                                                                  "reward_mismatched_pairs")}
    meta["bf16"] = cpu_has_native_bf16()
    meta_file = seed_dir / CHAIN
    if meta_file.is_file():
        saved = json.loads(meta_file.read_text())
        for key in ("reward_members", "reward_objective"):  # recorded by chains built before they were left out
            saved["config"].pop(key, None)
        if saved["config"] != meta:
            raise SystemExit(f"{seed_dir} holds a chain built with {saved['config']}, not {meta}: use another --out")
        pairs = PreferenceStore(seed_dir / "labels.sqlite").to_dataset(annotator=quickstart_annotator(config).name)
        log(s, f"reused the SFT model and {len(pairs)} labeled pairs in {seed_dir} (built in "
            f"{sum(saved['seconds'].values()):.0f} s)")
        return Path(saved["sft_path"]), pairs, True
    if seed_dir.exists():  # an interrupted chain: the label store would get its pairs twice
        shutil.rmtree(seed_dir)
    seed_dir.mkdir(parents=True)
    start = time.perf_counter()
    sft_path = quickstart_sft(config).model_path
    seconds = {"sft": round(time.perf_counter() - start, 1)}
    log(s, f"SFT done, {seconds['sft']} s")
    start = time.perf_counter()
    pairs = quickstart_pairs(config, sft_path)
    seconds["pairs"] = round(time.perf_counter() - start, 1)
    log(s, f"{len(pairs)} labeled pairs, {seconds['pairs']} s")
    meta_file.write_text(json.dumps({"config": meta, "sft_path": str(sft_path), "pairs": len(pairs),
                                     "seconds": seconds}, indent=1))
    return sft_path, pairs, False


def reward(kind: str, config: QuickstartConfig, sft_path: Path, pairs: datasets.Dataset, members: int
           ) -> tuple[RewardModel | RewardEnsemble, float, bool]:
    """(reward, training seconds, reused?): the quickstart's reward model (`kind="single"`) or the K-member
    ensemble (`kind="ensemble"`), trained in `<seed dir>/rm_single` or `<seed dir>/rm_ensemble_k<K>` or reloaded
    from there."""
    directory = Path(config.output_dir) / ("rm_single" if kind == "single" else f"rm_ensemble_k{members}")
    if mismatched := config.reward_mismatched_pairs:
        directory = directory.with_name(f"{directory.name}_mm{mismatched:g}")
    meta_file = directory / "reward.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        loaded = (RewardModel if kind == "single" else RewardEnsemble).load(meta["model_path"])
        log(config.seed, f"reused the {kind} reward model in {directory} (trained in {meta['seconds']} s)")
        return loaded, meta["seconds"], True
    if directory.exists():
        shutil.rmtree(directory)
    rm_config = quickstart_reward_config(replace(config, output_dir=str(directory)))
    start = time.perf_counter()
    if kind == "single":
        result = train_reward_model(pairs, rm_config, model=sft_path)
    else:
        result = train_reward_ensemble(pairs, rm_config, model=sft_path, members=members)
    seconds = round(time.perf_counter() - start, 1)
    meta_file.write_text(json.dumps({"model_path": str(result.model_path), "seconds": seconds}))
    log(config.seed, f"{kind} reward model trained, {seconds} s")
    return result.reward_model, seconds, False


def warm(ensemble: RewardEnsemble, config: QuickstartConfig, pairs: datasets.Dataset) -> RewardModel:
    """The ensemble's members' weights averaged (WARM), normalised as `train_reward_ensemble` normalised them: on
    the first pairs of the same training split."""
    rm_config = quickstart_reward_config(config)
    train = (split_by_prompt(pairs, rm_config.eval_fraction, seed=rm_config.seed)["train"]
             if rm_config.eval_fraction else pairs)
    averaged = weight_averaged(ensemble)
    fit_normalization_on_pairs(averaged, train, rm_config.normalize_on)
    return averaged


class Watched(RewardEnsemble):
    """The `watched` arm's reward: PPO optimises member 0 — the single reward model — alone, and the ensemble's
    members only watch (logged, read by the gold-free monitors): a single-model run as an ensemble alarm sees it."""

    def combine(self, member_scores: torch.Tensor) -> torch.Tensor:
        return member_scores[0]


def smoothed_gold(metrics) -> dict:
    """First, final and best of `gold/score` smoothed by a trailing mean over the monitors' window (fewer updates
    than that: over all of them), and the update of the best."""
    steps, gold = metrics.series("gold/score")
    _, kl = metrics.series("objective/kl")
    if not gold:  # no update finished
        return {"updates": 0}
    w = min(MonitorConfig().window, len(gold))
    means = [sum(gold[i - w:i]) / w for i in range(w, len(gold) + 1)]
    best = max(range(len(means)), key=means.__getitem__)
    return {"updates": len(gold), "gold_first": means[0], "gold_final": means[-1], "gold_best": means[best],
            "gold_best_update": steps[best + w - 1], "kl_final": kl[-1] if kl else math.nan}


def candidates(config: QuickstartConfig, sft_path: Path, n: int, n_prompts: int) -> tuple[list[str], BestOfN]:
    """`n` SFT answers to each of `n_prompts` held-out prompts (the evaluation's split and seed), sampled once per
    seed and cached in `<seed dir>/best_of_<n>x<n_prompts>.json`."""
    prompts = [p.text for p in sandbox.make_prompts(n_prompts, seed=config.seed + 3, split="test")]
    cache = Path(config.output_dir) / f"best_of_{n}x{n_prompts}.json"
    if cache.is_file():
        log(config.seed, f"reused the best-of-{n} candidates in {cache}")
        return prompts, BestOfN(**json.loads(cache.read_text()))
    drawn = best_of_n(prompts, model=sft_path, reward=sandbox.gold_reward, n=n, seed=config.seed)
    cache.write_text(json.dumps(asdict(drawn)))
    return prompts, drawn


def run_arm(arm: str, config: QuickstartConfig, sft_path: Path, rm: RewardModel | RewardEnsemble) -> dict:
    """PPO against `rm` as the quickstart runs it, in `<seed dir>/arm_<arm>[_k<K>[_lambda<λ>]]` (replaced if there),
    then the quickstart's evaluation: the arm's figures."""
    name = f"arm_{arm}"
    if isinstance(rm, RewardEnsemble):
        name += f"_k{len(rm)}" + (f"_lambda{rm.uncertainty_weight}" if arm == "uncertainty" else "")
    if config.reward_mismatched_pairs:
        name += f"_mm{config.reward_mismatched_pairs:g}"
    arm_dir = Path(config.output_dir) / name
    if arm_dir.exists():  # PPO would append to the old run's metrics
        shutil.rmtree(arm_dir)
    arm_config = replace(config, output_dir=str(arm_dir))
    seconds = {}
    start = time.perf_counter()
    ppo = quickstart_ppo(arm_config, sft_path, rm)
    seconds["ppo"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    table = quickstart_compare({"sft_path": sft_path, "reward_model": rm, "ppo_path": ppo.model_path},
                               replace(arm_config, best_of=1))
    seconds["evaluate"] = round(time.perf_counter() - start, 1)
    row = table["PPO"]
    return {"gold_win_rate_vs_sft": row["gold_win_rate"], "rm_win_rate_vs_sft": row["rm_win_rate"],
            "gold_mean": row["gold_mean"], "sft_gold_mean": table["SFT"]["gold_mean"], "kl": row["kl_to_reference"],
            "words": row["mean_words"], "sft_words": table["SFT"]["mean_words"],
            "ppo": {**smoothed_gold(ppo.metrics), "status": ppo.status},
            "alerts": [{"kind": e.data["monitor"], "update": e.step} for e in ppo.metrics.events()
                       if e.kind == ALERT_EVENT],
            "seconds": seconds}


def gold_fall_update(log_path: Path, fall: float = 1.0) -> int | None:
    """The first update at which the run's smoothed gold (trailing mean over the monitors' window) stands `fall`
    points below its best so far; None if it never does (a healthy run)."""
    from rlhf_widgets.runtime.metrics import MetricsLog

    steps, gold = MetricsLog.load(log_path).series("gold/score")
    w, best = MonitorConfig().window, -math.inf
    for i in range(w, len(gold) + 1):
        mean = sum(gold[i - w:i]) / w
        best = max(best, mean)
        if best - mean >= fall:
            return steps[i - 1]
    return None


def summarize(files: list[Path]) -> str:
    """Markdown: per arm, a row per seed (gold win rate over SFT, KL, words, gold best → final, the first gold-free
    alert and the update where gold had fallen 1 point, seconds), then each arm's worst and mean win rate and its
    best-of-N gold at N = 1, 8, 32, 128 averaged over seeds."""
    rows = [{"out": str(f.parent), **json.loads(line)} for f in files for line in f.read_text().splitlines()
            if line.strip()]
    for r in rows:  # an arm whose reward models also trained on mismatched pairs is an arm of its own
        r["label"] = r["arm"] + (f"_mm{r['mismatched_pairs']:g}" if r.get("mismatched_pairs") else "")
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        runs = sorted((r for r in rows if r["label"] == label),
                      key=lambda r: (r["verbosity_bias"], r["bf16"], r["members"], r["seed"]))
        arm = runs[0]["arm"]
        out += [f"\n**{label}**\n", "| seed | K | bias | precision | gold win vs SFT | KL | words (SFT) | gold best → "
                "final | first gold-free alert | gold fell 1 pt | reward + PPO s |", "|---" * 11 + "|"]
        for r in runs:
            free = [a["update"] for a in r["alerts"] if a["kind"] in GOLD_FREE_KINDS]
            name = f"arm_{arm}" + (f"_k{r['members']}" if arm in (*OBJECTIVES, "watched") else "") + (
                f"_lambda{r['uncertainty_weight']}" if arm == "uncertainty" else "") + (
                f"_mm{r['mismatched_pairs']:g}" if r.get("mismatched_pairs") else "")
            log = Path(r["out"]) / f"seed_{r['seed']}" / name / "ppo" / "metrics.jsonl"
            fell = gold_fall_update(log) if log.is_file() else "?"
            p = r["ppo"]
            precision = "bf16" if r["bf16"] else "float32"
            out.append(f"| {r['seed']} | {r['members']} | {r['verbosity_bias']} | {precision} | "
                       f"{r['gold_win_rate_vs_sft']:.2f} | {r['kl']:.2f} | {r['words']:.1f} ({r['sft_words']:.1f}) | "
                       f"{p.get('gold_best', math.nan):.2f} → {p.get('gold_final', math.nan):.2f} | "
                       f"{min(free) if free else '—'} | {fell if fell is not None else '—'} | "
                       f"{r['seconds']['reward']:.0f} + {r['seconds']['ppo']:.0f} |")
        wins = [r["gold_win_rate_vs_sft"] for r in runs]
        out.append(f"\n{label}: {len(wins)} runs, gold win rate worst {min(wins):.2f}, "
                   f"mean {sum(wins) / len(wins):.2f}, "
                   f"{sum(w >= 0.65 for w in wins)} at ≥ 0.65")
        curves = [r["best_of_n"] for r in runs if r.get("best_of_n")]
        if curves:
            by_n = {pt["n"]: [] for pt in curves[0]}
            for curve in curves:
                for pt in curve:
                    by_n.setdefault(pt["n"], []).append(pt["gold"])
            mean = {n: sum(g) / len(g) for n, g in by_n.items() if g}
            best_n = max(mean, key=mean.get)
            out.append(f"best-of-N gold averaged over {len(curves)} seeds: "
                       + ", ".join(f"N={n} {g:.2f}" for n, g in mean.items() if n in (1, 8, 32, 128))
                       + f"; best at N={best_n} ({mean[best_n]:.2f}), "
                       f"N={max(mean)} − best = {mean[max(mean)] - mean[best_n]:+.2f}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the quickstart's seed (every stage's)")
    parser.add_argument("--out", type=Path, default=Path("runs/ensemble_arms"),
                        help="<out>/seed_<s>/ caches the chain and reward models; <out>/results.jsonl gets every line")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--members", type=int, default=None, help="K reward models in the ensemble (default 4)")
    parser.add_argument("--use-members", type=int, default=None,
                        help="the ensemble arms use only its first this many members (the same members a smaller K "
                             "trains: member i's seed is the run's + i); default all K")
    parser.add_argument("--uncertainty-weight", type=float, default=0.5,
                        help="λ of the uncertainty arm, mean − λ·variance (default 0.5, RewardEnsemble's)")
    parser.add_argument("--verbosity-bias", type=float, default=0.0,
                        help="the simulated annotator's gold points per extra word (default 0: the quickstart's)")
    parser.add_argument("--ppo-updates", type=int, default=None,
                        help=f"PPO updates per arm (default {QuickstartConfig.ppo_updates}, the quickstart's)")
    parser.add_argument("--mismatched-pairs", type=float, default=None,
                        help="RewardStageConfig.mismatched_pairs of every arm's reward models (default: the "
                             "quickstart's); where not 0 their directories and the arms' get the suffix _mm<value>")
    parser.add_argument("--best-of-n", action="store_true", help="also the best-of-N curve of each arm's reward")
    parser.add_argument("--bon-n", type=int, default=None, help="largest N of the curve (default 128)")
    parser.add_argument("--bon-prompts", type=int, default=None, help="held-out prompts of the curve (default 32)")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    parser.add_argument("--table", type=Path, nargs="+", default=None, metavar="RESULTS",
                        help="print the Markdown tables of these results.jsonl files (runs nothing)")
    args = parser.parse_args()
    if args.table:
        print(summarize(args.table))
        return
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        parser.error(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    sizes = dict(QUICK) if args.quick else {}
    members = args.members or sizes.get("members", 4)
    ppo_updates = args.ppo_updates or sizes.get("ppo_updates", QuickstartConfig.ppo_updates)
    bon_n, bon_prompts = args.bon_n or sizes.get("bon_n", 128), args.bon_prompts or sizes.get("bon_prompts", 32)
    s = args.seed
    config = QuickstartConfig(output_dir=str(args.out / f"seed_{s}"), seed=s, verbosity_bias=args.verbosity_bias,
                              ppo_updates=ppo_updates, **{k: v for k, v in sizes.items()
                                                          if k in ("sft_demos", "pair_prompts", "eval_prompts")})
    if args.mismatched_pairs is not None:
        config.reward_mismatched_pairs = args.mismatched_pairs
    stdout = sys.stdout  # the trainers print their logs to stderr: stdout carries the JSON lines only
    with contextlib.redirect_stdout(sys.stderr):
        sft_path, pairs, chain_reused = chain(config)
        if args.best_of_n:
            start = time.perf_counter()
            bon_prompt_texts, drawn = candidates(config, sft_path, bon_n, bon_prompts)
            log(s, f"best-of-{bon_n} candidates ready, {time.perf_counter() - start:.1f} s")
        models: dict[str, tuple] = {}
        for arm in arms:
            kind = "single" if arm == "single" else "ensemble"
            for needed in ("single", "ensemble") if arm == "watched" else (kind,):
                if needed not in models:
                    models[needed] = reward(needed, config, sft_path, pairs, members)
            rm, reward_seconds, reward_reused = models[kind]
            if kind == "ensemble" and args.use_members:
                rm = RewardEnsemble(rm.members[:args.use_members], objective=rm.objective,
                                    uncertainty_weight=rm.uncertainty_weight)
            if arm == "watched":
                rm = Watched([models["single"][0], *rm.members], objective="mean")
            arm_members = len(rm) if kind == "ensemble" else 1
            if arm == "warm":
                rm = warm(rm, config, pairs)
            elif arm in OBJECTIVES:
                rm.objective, rm.uncertainty_weight = arm, args.uncertainty_weight
            log(s, f"arm {arm}: PPO, {ppo_updates} updates")
            line = {"seed": s, "arm": arm, "members": arm_members,
                    "objective": arm if arm in OBJECTIVES else None,
                    "uncertainty_weight": args.uncertainty_weight if arm == "uncertainty" else None,
                    "verbosity_bias": args.verbosity_bias, "bf16": cpu_has_native_bf16(), "quick": args.quick,
                    "mismatched_pairs": config.reward_mismatched_pairs,
                    **run_arm(arm, config, sft_path, rm)}
            line["seconds"] = {"reward": reward_seconds, **line["seconds"]}
            line["reused"] = {"chain": chain_reused, "reward": reward_reused}
            line["out"] = str(args.out)
            if args.best_of_n:
                start = time.perf_counter()
                line["best_of_n"] = best_of_n_curve(drawn.rescored(bon_prompt_texts, rm), bon_prompt_texts,
                                                    sandbox.gold_reward)
                line["seconds"]["best_of_n"] = round(time.perf_counter() - start, 1)
            text = json.dumps(line)
            print(text, file=stdout, flush=True)
            with open(args.out / "results.jsonl", "a") as f:
                f.write(text + "\n")


if __name__ == "__main__":
    main()
