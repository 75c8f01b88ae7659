"""The whole loop on the offline sandbox, as one call (what `make quickstart` runs).

build world → SFT → candidate pairs → simulated annotator labels (in a PreferenceStore) → reward
model → PPO → DPO → evaluation on held-out prompts → an HTML report with the plots and the
comparison table. Every number in the report comes from this run (`report.json` holds them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_widgets.labeling import PreferenceStore, label_with
from rlhf_widgets.runtime.config import SANDBOX, field_help
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.monitors import GOLD_FREE_KINDS
from rlhf_widgets.runtime.quiet import long_call
from rlhf_widgets.views.report import write_report

if TYPE_CHECKING:
    import datasets

    from rlhf_widgets.runtime.reward_protocol import RewardFunction
    from rlhf_widgets.runtime.stage_runner import StageResult
    from rlhf_widgets.sandbox import SimulatedAnnotator
    from rlhf_widgets.stages.reward import RewardStageConfig
    from rlhf_widgets.workflows.plan import QuickstartPlan

STAGES = ("sft", "pairs", "reward", "ppo", "dpo", "evaluate")
"""The quickstart's stages, in order."""


@dataclass
class QuickstartConfig:
    """Sizes of the offline quickstart; the defaults fit a 2-core CPU in a few minutes."""

    output_dir: str = field(default="runs/quickstart", metadata=field_help(
        "Where every stage writes (models, metrics, label store, report)."))
    seed: int = field(default=0, metadata=field_help("One seed for every stage."))
    sft_demos: int = field(default=2048, metadata=field_help("Sandbox demonstrations for SFT."))
    pair_prompts: int = field(default=600, metadata=field_help("Prompts to generate candidate pairs for."))
    answers_per_prompt: int = field(default=4, metadata=field_help(
        "SFT answers sampled per prompt; pairs are drawn among them (InstructGPT ranked 4–9 per prompt)."))
    pairs_per_prompt: int = field(default=6, metadata=field_help(
        "Labeled pairs per prompt, at most (answers_per_prompt choose 2; 6 = all of them): each sampled answer then "
        "serves in several comparisons, as in InstructGPT's rankings (measured: docs/PERFORMANCE.md, \"Sandbox "
        "results behind the defaults\")."))
    annotator_temperature: float = field(default=1.0, metadata=field_help(
        "Simulated annotator's Bradley–Terry temperature (label noise)."))
    verbosity_bias: float = field(default=0.0, metadata=field_help(
        "Simulated annotator's per-word preference for longer responses (0 = unbiased)."))
    reward_members: int = field(default=1, metadata=field_help(
        "Reward models behind PPO's reward: 1 = one reward model; K >= 2 = an ensemble of K, each on a bootstrap "
        "resample of the pairs (train_reward_ensemble), combined by reward_objective."))
    reward_objective: str = field(default="worst", metadata=field_help(
        "How an ensemble's members combine (reward_members >= 2): 'worst' (the lowest member's score), "
        "'uncertainty' (mean - 0.5 x variance) or 'mean'."))
    reward_mismatched_pairs: float = field(default=0.0, metadata=field_help(
        "Mismatched pairs per labeled pair in the reward model's training (RewardStageConfig.mismatched_pairs): an "
        "answer preferred over another prompt's answer, so the reward model learns that an answer must fit the "
        "question (0 = labeled pairs only, the default: they guard against a reward model that ignores the question "
        "without making PPO better on the whole; measured: docs/FAILURE_MODES.md, \"Mismatched pairs\")."))
    ppo_updates: int = field(default=48, metadata=field_help(
        "PPO updates (a gold-free alert ends the run earlier, rolled back: see quickstart_ppo)."))
    eval_prompts: int = field(default=128, metadata=field_help("Held-out prompts for the final comparison."))
    best_of: int = field(default=8, metadata=field_help(
        "N of the best-of-N baseline in the comparison (1 = leave it out)."))
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata=field_help(
        f"Stages to run, in order (later ones need earlier ones); of {', '.join(STAGES)}."))


@dataclass
class QuickstartResult:
    """Paths and numbers of a quickstart run."""

    output_dir: Path
    report_path: Path | None
    numbers: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    plan: QuickstartPlan | None = None
    """each stage's precision and expected seconds, said before the run (`plan.plan_quickstart`; with `echo` only)"""


def run_quickstart(config: QuickstartConfig | None = None,
                   echo: Callable[[str], None] | None = None) -> QuickstartResult:
    """Run the configured stages on the sandbox and write `report.html` / `report.json`, under one progress bar;
    `echo` (the command line's printer) gets, before the first stage, two lines on the precision each stage will use
    here and how long the run should take (`plan.plan_quickstart`: a second or two to calibrate), then one line per
    finished stage (`stage_line`)."""
    config = config or QuickstartConfig()
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"run_quickstart: unknown stage(s) {unknown}; known: {list(STAGES)}")
    if config.reward_members < 1:
        raise ValueError(f"QuickstartConfig.reward_members={config.reward_members}: must be 1 (one reward model) or "
                         "more (an ensemble of that many)")
    from rlhf_widgets.stages.reward import OBJECTIVES

    if config.reward_members > 1 and config.reward_objective not in OBJECTIVES:
        raise ValueError(f"QuickstartConfig.reward_objective={config.reward_objective!r}: must be one of "
                         f"{', '.join(map(repr, OBJECTIVES))}")
    if not 0 <= config.reward_mismatched_pairs <= 4:
        raise ValueError(f"QuickstartConfig.reward_mismatched_pairs={config.reward_mismatched_pairs}: must be in "
                         "[0, 4] (mismatched pairs per labeled pair; 0 = off)")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = QuickstartResult(output_dir=out, report_path=None)
    logs: dict[str, MetricsLog] = {}
    state: dict = {}
    if echo is not None:
        from rlhf_widgets.workflows.plan import plan_quickstart

        result.plan = plan_quickstart(config)
        for line in result.plan.lines():
            echo(line)
    with long_call("quickstart"):
        for i, stage in enumerate(config.stages, 1):
            start = time.perf_counter()
            with long_call(f"{i}/{len(config.stages)} {STAGE_NAMES[stage]}"):
                _run_stage(stage, config, state, logs, result)
            result.seconds[stage] = round(time.perf_counter() - start, 1)
            if echo is not None:
                echo(stage_line(stage, result, logs))
    result.report_path = write_report(out, asdict(config), result.numbers, result.seconds, logs,
                                      reward_report=state.get("reward_report"))
    return result


STAGE_NAMES = {"sft": "SFT", "pairs": "pairs", "reward": "reward model", "ppo": "PPO", "dpo": "DPO",
               "evaluate": "evaluation"}
"""How the progress bar and the terminal name each stage."""


def _run_stage(stage: str, config: QuickstartConfig, state: dict, logs: dict[str, MetricsLog],
               result: QuickstartResult) -> None:
    """One stage of `run_quickstart`: reads what the earlier stages left in `state`, adds its own."""
    from rlhf_widgets import sandbox

    out = Path(config.output_dir)
    if stage == "sft":
        sft = quickstart_sft(config)
        state["sft_path"], logs["sft"] = sft.model_path, sft.metrics
    elif stage == "pairs":
        state["pairs"] = quickstart_pairs(config, state["sft_path"])
        result.numbers["pairs"] = len(state["pairs"])
    elif stage == "reward":
        from rlhf_widgets.evaluation import reward_report

        rm = quickstart_reward(config, state["sft_path"], state["pairs"])
        report = reward_report(rm.reward_model, rm.eval_dataset, gold=sandbox.gold_reward)
        state["reward_model"], state["reward_report"], logs["reward"] = rm.reward_model, report, rm.metrics
        result.numbers["reward"] = {k: report[k] for k in ("accuracy", "gold_agreement", "mean_margin",
                                                           "expected_calibration_error", "n_pairs", "ensemble",
                                                           "prompt_dependence")
                                    if k in report}
    elif stage == "ppo":
        ppo = quickstart_ppo(config, state["sft_path"], state["reward_model"])
        state["ppo_path"], logs["ppo"] = ppo.model_path, ppo.metrics
        result.numbers["ppo"] = {"status": ppo.status, "reason": ppo.reason}
    elif stage == "dpo":
        from rlhf_widgets.runtime.data import one_pair_per_prompt
        from rlhf_widgets.stages.dpo import DPOStageConfig, train_dpo

        # one pair per prompt: all pairs among 4 answers are more pairs to train on and, on the sandbox, did not win
        # more (docs/PERFORMANCE.md, "Sandbox results behind the defaults")
        dpo = train_dpo(one_pair_per_prompt(state["pairs"]),
                        DPOStageConfig(output_dir=str(out / "dpo"), seed=config.seed), model=state["sft_path"])
        state["dpo_path"], logs["dpo"] = dpo.model_path, dpo.metrics
    elif stage == "evaluate":
        result.numbers["comparison"] = quickstart_compare(state, config)


def stage_line(stage: str, result: QuickstartResult, logs: dict[str, MetricsLog]) -> str:
    """One line for a finished stage: its name, its key number, its seconds ("reward model: gold agreement 0.90,
    accuracy 0.85, 71 s")."""
    numbers, log = result.numbers, logs.get(stage)

    def last(name: str) -> str:
        return f"{log.latest(name):.3g}" if log is not None and name in log.names() else "n/a"

    if stage in ("sft", "dpo"):
        key = f"loss {last('loss')}"
    elif stage == "pairs":
        key = f"{numbers['pairs']} labeled pairs"
    elif stage == "reward":
        reward = numbers["reward"]
        key = f"gold agreement {reward['gold_agreement']:.2f}, accuracy {reward['accuracy']:.2f}"
        if "ensemble" in reward:  # an ensemble: how many, and how often they part ways
            key += (f" (ensemble of {len(reward['ensemble']['member_accuracy'])}, "
                    f"{reward['ensemble']['objective']}; members differ on {reward['ensemble']['disagreement']:.0%})")
    elif stage == "ppo":
        key = f"KL {last('objective/kl')}, reward {last('objective/scores')}"
        rollback = next((e for e in log.events() if e.kind == "rollback"), None) if log is not None else None
        if rollback is not None:
            key += (f"; the {rollback.data['alert']} alert at update {rollback.data['alert_update']} rolled it back "
                    f"to update {rollback.data['rolled_back_to']}")
    else:
        wins = [f"{name} {row['gold_win_rate']:.0%}" for name, row in numbers["comparison"].items() if name != "SFT"]
        key = f"gold win rate vs SFT: {', '.join(wins) or 'SFT only'}"
    return f"{STAGE_NAMES[stage]}: {key}, {result.seconds[stage]:.0f} s"


def summary_table(comparison: dict[str, dict]) -> str:
    """The comparison as a short table a terminal shows: policy, gold win rate vs SFT, KL to SFT, mean words."""
    width = max(len("policy"), *map(len, comparison))
    lines = [f"{'policy':<{width}}  {'gold win vs SFT':>15}  {'KL':>6}  {'words':>5}"]
    for name, row in comparison.items():
        lines.append(f"{name:<{width}}  {row['gold_win_rate']:>15.0%}  {row['kl_to_reference']:>6.3f}  "
                     f"{row['mean_words']:>5.1f}")
    return "\n".join(lines)


def quickstart_sft(config: QuickstartConfig) -> StageResult:
    """The quickstart's SFT stage: the sandbox model on `config.sft_demos` demonstrations, in `<output_dir>/sft`."""
    from rlhf_widgets.stages.sft import SFTStageConfig, train_sft

    return train_sft(config=SFTStageConfig(output_dir=str(Path(config.output_dir) / "sft"),
                                           sandbox_demos=config.sft_demos, seed=config.seed), model=SANDBOX)


def quickstart_pairs(config: QuickstartConfig, sft_path: str | Path) -> datasets.Dataset:
    """The quickstart's pairs stage: pairs among `config.answers_per_prompt` answers of the SFT model to
    `config.pair_prompts` sandbox prompts, labeled by the simulated annotator into `<output_dir>/labels.sqlite`;
    returns the labeled pairs (`PreferenceStore.to_dataset`, the annotator's labels)."""
    from rlhf_widgets import sandbox
    from rlhf_widgets.labeling.pairs import generate_pairs

    prompts = [p.text for p in sandbox.make_prompts(config.pair_prompts, seed=config.seed + 1)]
    rows = generate_pairs(prompts, model=sft_path, k=config.answers_per_prompt, name="sft",
                          max_pairs_per_prompt=config.pairs_per_prompt, seed=config.seed)
    store = PreferenceStore(Path(config.output_dir) / "labels.sqlite")
    store.add_pairs(rows)
    annotator = quickstart_annotator(config)
    label_with(store, annotator, annotator=annotator.name)
    return store.to_dataset(annotator=annotator.name)


def quickstart_annotator(config: QuickstartConfig) -> SimulatedAnnotator:
    """The quickstart's simulated annotator (`sandbox.SimulatedAnnotator`) for `config`'s temperature, verbosity
    bias and seed."""
    from rlhf_widgets import sandbox

    return sandbox.SimulatedAnnotator(temperature=config.annotator_temperature, verbosity_bias=config.verbosity_bias,
                                      seed=config.seed)


def quickstart_reward_config(config: QuickstartConfig) -> RewardStageConfig:
    """The quickstart's reward-model settings: `<output_dir>/reward`, the run's seed, its mismatched pairs,
    `RewardStageConfig`'s defaults otherwise."""
    from rlhf_widgets.stages.reward import RewardStageConfig

    return RewardStageConfig(output_dir=str(Path(config.output_dir) / "reward"), seed=config.seed,
                             mismatched_pairs=config.reward_mismatched_pairs)


def quickstart_reward(config: QuickstartConfig, sft_path: str | Path, pairs: datasets.Dataset) -> StageResult:
    """The quickstart's reward: one reward model (`config.reward_members == 1`) or an ensemble of
    `config.reward_members` combined by `config.reward_objective`, on `quickstart_reward_config`'s settings."""
    if config.reward_members == 1:
        from rlhf_widgets.stages.reward import train_reward_model

        return train_reward_model(pairs, quickstart_reward_config(config), model=sft_path)
    from rlhf_widgets.stages.reward import train_reward_ensemble

    return train_reward_ensemble(pairs, quickstart_reward_config(config), model=sft_path,
                                 members=config.reward_members, objective=config.reward_objective)


def quickstart_ppo(config: QuickstartConfig, sft_path: str | Path, reward: RewardFunction) -> StageResult:
    """The quickstart's PPO stage: `config.ppo_updates` updates from the SFT model against `reward` (already
    normalised on SFT samples), on 1,000 sandbox prompts, in `<output_dir>/ppo`, with the sandbox's gold logged as
    `gold/score` (so the reward-hacking monitors' gold alert can fire). The prompt-swap check runs, and a gold-free
    overoptimization alert (`GOLD_FREE_KINDS`: no gold, which a user's own run does not have) rolls the policy back
    to the last copy before the updates that raised it and ends the run there."""
    from rlhf_widgets import sandbox
    from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer

    train_prompts = [p.text for p in sandbox.make_prompts(1000, seed=config.seed + 2)]
    trainer = PPOTrainer(train_prompts, PPOConfig(output_dir=str(Path(config.output_dir) / "ppo"),
                                                  num_updates=config.ppo_updates, seed=config.seed,
                                                  prompt_swap_check=True, on_alert="rollback",
                                                  alert_kinds=list(GOLD_FREE_KINDS)),
                         model=sft_path, reward=reward, gold=sandbox.gold_reward)
    return trainer.train()


def quickstart_compare(state: dict, config: QuickstartConfig) -> dict:
    """Gold and RM win rates over SFT, KL to SFT and length, for every policy the run produced.

    `state` holds what the stages produced: "sft_path" (required), "reward_model", "ppo_path", "dpo_path"; with a
    reward model and `config.best_of > 1` best-of-N of the SFT model joins the table. Returns policy name → row
    (`evaluation.compare_policies`' columns)."""
    from rlhf_widgets import sandbox
    from rlhf_widgets.evaluation import compare_policies
    from rlhf_widgets.stages.best_of import BestOfNSampler

    prompts = [p.text for p in sandbox.make_prompts(config.eval_prompts, seed=config.seed + 3, split="test")]
    policies = {"SFT": state["sft_path"]}
    if "reward_model" in state and config.best_of > 1:
        policies[f"best-of-{config.best_of}"] = BestOfNSampler(model=state["sft_path"], reward=state["reward_model"],
                                                               n=config.best_of, seed=config.seed)
    policies.update({name: state[key] for name, key in (("PPO", "ppo_path"), ("DPO", "dpo_path")) if key in state})
    table = compare_policies(policies, prompts, baseline="SFT", gold=sandbox.gold_reward,
                             reward_model=state.get("reward_model"), kl_reference=state["sft_path"],
                             seed=config.seed + 7)
    return {name: {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for name, row in table.to_dict(orient="index").items()}
