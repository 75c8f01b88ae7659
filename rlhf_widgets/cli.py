"""Command line: one subcommand per stage, its options generated from the stage's config dataclasses.

    python -m rlhf_widgets <stage> [options]        # or `rlhf-widgets <stage> ...`
    python -m rlhf_widgets <stage> --help           # every field, with its help text and default
    accelerate launch -m rlhf_widgets <stage> ...   # several processes / GPUs

Stages: sft, label, reward, dpo, grpo, rloo, ppo, evaluate, loop, quickstart. Each training stage takes its
config (`SFTStageConfig`, …, `PPOConfig`) and `ModelConfig` (`--model_name_or_path`, `--use_peft`,
`--load_in_4bit`, `--lora_r`, …) as options. Every command runs under one progress bar (stderr, with the
quickstart's two lines on what to expect — each stage's precision and time — and its line per finished stage) and
prints what a person reads at the end (stdout: the result, the quickstart's comparison table and report path);
`--json` prints the machine-readable summary instead, `--verbose` lets the libraries print their own output
(`rlhf_widgets.runtime.quiet`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_widgets.labeling import RewardModelLabeler, label_with, prepare_pairs
from rlhf_widgets.runtime import quiet
from rlhf_widgets.runtime.config import ModelConfig, field_help
from rlhf_widgets.runtime.types import SANDBOX


@dataclass
class OutputArguments:
    """What every command prints."""

    json: bool = field(default=False, metadata=field_help(
        "Print the machine-readable JSON summary instead of the lines a person reads."))
    verbose: bool = field(default=False, metadata=field_help(
        "Let the libraries print their own output: logged values of every step, load reports, their progress "
        "bars (rlhf_widgets.runtime.quiet; RLHF_WIDGETS_VERBOSE=1 does the same)."))


@dataclass
class DemonstrationArguments:
    """Where SFT's demonstrations come from."""

    data: str | None = field(default=None, metadata=field_help(
        "Demonstrations: a .jsonl / .json / .parquet file, a dataset directory or a hub id, in a format TRL's "
        "SFTTrainer reads (prompt/completion, messages, text). Default: the sandbox's (sandbox model only)."))


@dataclass
class PreferenceArguments:
    """Where a preference stage's pairs come from."""

    data: str = field(metadata=field_help(
        "Preference pairs: a file, a dataset directory or a hub id, in any format `load_preferences` reads "
        "(TRL standard / conversational / implicit prompt, HH-RLHF transcripts)."))


@dataclass
class PromptArguments:
    """An RL stage's prompts and reward."""

    reward_model: str = field(metadata=field_help(
        "The reward: a directory written by a reward-model stage (`.../reward/final`) or a reward-ensemble one, "
        "or 'gold' for the sandbox's gold scorer."))
    prompts: str = field(default=SANDBOX, metadata=field_help(
        "Training prompts: 'sandbox', or a file, dataset directory or hub id `load_prompts` reads (prompt-only, "
        "conversational, or the prompts of a preference dataset)."))
    n_prompts: int | None = field(default=None, metadata=field_help(
        "Use the first N prompts (default: all; the sandbox makes 1000)."))
    log_gold: bool = field(default=False, metadata=field_help(
        "Also log the sandbox's gold score of every rollout (PPO; sandbox prompts only)."))


@dataclass
class LabelArguments:
    """Candidate pairs from a policy, labeled by an AI labeler, exported as a preference dataset."""

    model: str = field(metadata=field_help(
        "The policy whose answers are compared (the SFT model's directory, a hub id)."))
    store: str = field(default="runs/labels.sqlite", metadata=field_help(
        "The label store (SQLite file); pairs are made only when it has none."))
    prompts: str = field(default=SANDBOX, metadata=field_help(
        "'sandbox', or a file, dataset directory or hub id `load_prompts` reads."))
    n_prompts: int | None = field(default=64, metadata=field_help("Use the first N prompts (0 or empty: all)."))
    answers_per_prompt: int = field(default=4, metadata=field_help("Answers sampled per prompt."))
    pairs_per_prompt: int = field(default=3, metadata=field_help("Pairs labeled per prompt, among its answers."))
    labeler: str = field(default="simulated", metadata=field_help(
        "Who labels: 'simulated' (the sandbox's noisy annotator), 'gold' (the sandbox's gold scorer), or a reward "
        "model directory."))
    annotator: str | None = field(default=None, metadata=field_help(
        "The name the labels are recorded under (default: the labeler's)."))
    export: str | None = field(default="runs/preferences.jsonl", metadata=field_help(
        "Write the labeled pairs here (.jsonl / .jsonl.gz / .parquet); empty to skip."))
    seed: int = field(default=0, metadata=field_help("Seed of the prompts, the sampling and the simulated annotator."))


@dataclass
class EvaluateArguments:
    """Policies compared on held-out prompts."""

    policies: list[str] = field(metadata=field_help(
        "name=model pairs, e.g. SFT=runs/sft/final PPO=runs/ppo/final; the first is the baseline."))
    reward_model: str | None = field(default=None, metadata=field_help(
        "A reward-model (or reward-ensemble) directory: adds RM win rates and scores."))
    prompts: str = field(default=SANDBOX, metadata=field_help(
        "Held-out prompts: 'sandbox' (its test split, judged by gold too), or a file, dataset directory or hub id "
        "`load_prompts` reads."))
    n_prompts: int | None = field(default=128, metadata=field_help("Use the first N prompts (default 128)."))
    kl_reference: str | None = field(default=None, metadata=field_help(
        "The model KL is measured against (default: the baseline's)."))
    output: str | None = field(default=None, metadata=field_help("Also write the table here as JSON."))
    seed: int = field(default=0, metadata=field_help("Sampling seed."))


# ---------------------------------------------------------------------------------------------- data
def _prompts(source: str, n: int | None, seed: int, split: str = "train") -> list:
    from rlhf_widgets.runtime.data import load_prompts

    return load_prompts(source, split=split, n=n, **({"seed": seed} if source == SANDBOX else {}))


def _demonstrations(source: str):
    import datasets

    path = Path(source)
    if path.is_dir():
        return datasets.load_from_disk(str(path)) if (path / "state.json").exists() else \
            datasets.load_dataset(str(path), split="train")
    if path.is_file():
        kind = "parquet" if path.suffix == ".parquet" else "json"
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    return datasets.load_dataset(source, split="train")


def _reward(source: str):
    if source == "gold":
        from rlhf_widgets.sandbox import gold_reward

        return gold_reward
    from rlhf_widgets.stages.reward import as_reward_function

    return as_reward_function(source)


def _summary(result) -> dict[str, Any]:
    return {"stage": result.stage, "model_path": str(result.model_path), "status": result.status,
            "reason": result.reason, "train_seconds": round(result.train_seconds, 1)}


# ---------------------------------------------------------------------------------------------- stages
def _sft(config, model, args: DemonstrationArguments) -> dict:
    from rlhf_widgets.stages.sft import train_sft

    data = _demonstrations(args.data) if args.data else None
    return _summary(train_sft(data, config, model=model))


def _reward_stage(config, model, args: PreferenceArguments) -> dict:
    from rlhf_widgets.runtime.data import load_preferences
    from rlhf_widgets.stages.reward import train_reward_model

    return _summary(train_reward_model(load_preferences(args.data), config, model=model))


def _dpo(config, model, args: PreferenceArguments) -> dict:
    from rlhf_widgets.runtime.data import load_preferences
    from rlhf_widgets.stages.dpo import train_dpo

    return _summary(train_dpo(load_preferences(args.data), config, model=model))


def _online(trainer: str) -> Callable[..., dict]:
    """GRPO / RLOO: `rlhf_widgets.stages.grpo.<trainer>` on the prompts against the reward."""

    def run(config, model, args: PromptArguments) -> dict:
        from rlhf_widgets.stages import grpo

        prompts = _prompts(args.prompts, args.n_prompts, config.seed)
        return _summary(getattr(grpo, trainer)(prompts, config, model=model, reward=_reward(args.reward_model)))

    return run


def _ppo(config, model, args: PromptArguments) -> dict:
    from rlhf_widgets.stages.ppo import train_ppo

    gold = None
    if args.log_gold:
        if args.prompts != SANDBOX:
            raise ValueError("--log_gold: the gold scorer exists only for the sandbox's prompts")
        from rlhf_widgets.sandbox import gold_reward as gold
    prompts = _prompts(args.prompts, args.n_prompts, config.seed)
    return _summary(train_ppo(prompts, config, model=model, reward=_reward(args.reward_model), gold=gold))


def _labeler(choice: str, seed: int) -> tuple[Callable, str]:
    """The labeler a `--labeler` names, and the name its labels are recorded under by default: 'simulated' (the
    sandbox's annotator, seeded), 'gold' (the sandbox's gold scorer) or a saved reward model's directory."""
    from rlhf_widgets.sandbox import SimulatedAnnotator, gold_preference

    if choice == "simulated":
        return SimulatedAnnotator(seed=seed), "simulated"
    if choice == "gold":
        return gold_preference, "gold"
    return RewardModelLabeler(_reward(choice)), Path(choice).name


def _label(args: LabelArguments) -> dict:
    store = prepare_pairs(args.prompts, args.store, model=args.model, n_prompts=args.n_prompts or None, seed=args.seed,
                          k=args.answers_per_prompt, pairs_per_prompt=args.pairs_per_prompt)
    labeler, default_name = _labeler(args.labeler, args.seed)
    annotator = args.annotator or default_name
    new = label_with(store, labeler, annotator)
    summary = {"store": str(args.store), "pairs": len(store), "new_labels": new, "annotator": annotator}
    if args.export:
        from rlhf_widgets.runtime.data import save_preferences

        dataset, counts = store.to_dataset(annotator=annotator, return_counts=True)
        summary["exported"] = str(save_preferences(dataset, args.export))
        summary["export_counts"] = vars(counts)
    return summary


def _evaluate(args: EvaluateArguments) -> dict:
    from rlhf_widgets.evaluation import compare_policies

    policies = {}
    for item in args.policies:
        name, sep, model = item.partition("=")
        if not sep or not name or not model:
            raise ValueError(f"--policies: {item!r} is not name=model (e.g. PPO=runs/ppo/final)")
        policies[name] = model
    baseline = next(iter(policies))
    prompts = _prompts(args.prompts, args.n_prompts, args.seed, split="test")
    gold = None
    if args.prompts == SANDBOX:
        from rlhf_widgets.sandbox import gold_reward as gold
    table = compare_policies(policies, prompts, baseline=baseline, gold=gold,
                             reward_model=_reward(args.reward_model) if args.reward_model else None,
                             kl_reference=args.kl_reference or policies[baseline], seed=args.seed)
    rows = json.loads(table.to_json(orient="index"))
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))
    return rows


@dataclass
class LoopArguments:
    """The iterative loop's models, labeler and prompts."""

    sft_model: str = field(metadata=field_help("The SFT policy round 1 samples from (a directory or hub id)."))
    labeler: str = field(default="simulated", metadata=field_help(
        "Who labels each round's pairs: 'simulated' (the sandbox's annotator), 'gold', or a reward-model "
        "directory."))
    prompts: str = field(default=SANDBOX, metadata=field_help(
        "The prompt pool each round takes fresh prompts from: 'sandbox' or a source `load_prompts` reads."))
    held_out_prompts: str | None = field(default=None, metadata=field_help(
        "Held-out prompts of the comparison (default with 'sandbox': its test split, judged by gold too); "
        "--eval_prompts says how many."))
    ppo_updates: int = field(default=20, metadata=field_help("PPO updates per round (policy_update='ppo')."))


def _loop(config, args: LoopArguments) -> dict:
    from rlhf_widgets.stages.ppo import PPOConfig
    from rlhf_widgets.workflows.loop import IterativeLoop

    sandbox = args.prompts == SANDBOX
    pool = _prompts(args.prompts, config.rounds * config.prompts_per_round if sandbox else None, config.seed)
    labeler, _ = _labeler(args.labeler, config.seed)
    gold = _reward("gold") if sandbox else None
    evals = _prompts(args.held_out_prompts, None, config.seed, split="test") if args.held_out_prompts else None
    loop = IterativeLoop(pool, config, sft_model=args.sft_model, labeler=labeler, gold=gold, eval_prompts=evals,
                         ppo_config=PPOConfig(num_updates=args.ppo_updates, seed=config.seed, sample_every=0))
    return {"rounds": [{"round": r.round, "policy": r.policy_path, "reward_model": r.reward_path, **r.metrics}
                       for r in loop.run()]}


def _quickstart(config) -> dict:
    from tqdm.auto import tqdm

    from rlhf_widgets.workflows.quickstart import run_quickstart

    # what to expect, then a line per finished stage, on stderr beside the bar (stdout keeps the summary, the JSON too)
    result = run_quickstart(config, echo=lambda line: tqdm.write(line, file=sys.stderr))
    return {"seconds": result.seconds, "numbers": result.numbers, "output_dir": str(result.output_dir.resolve()),
            "report": str(result.report_path.resolve()) if result.report_path else None,
            "plan": result.plan.as_dict()}


# ---------------------------------------------------------------------------------------------- what a person reads
def _stage_lines(summary: dict) -> list[str]:
    line = f"{summary['stage']}: {summary['status']} in {summary['train_seconds']:.0f} s, model in " \
           f"{summary['model_path']}"
    return [line, *([f"  reason: {summary['reason']}"] if summary["reason"] else [])]


def _label_lines(summary: dict) -> list[str]:
    lines = [f"labeled {summary['new_labels']} pairs as {summary['annotator']} ({summary['pairs']} in "
             f"{summary['store']})"]
    if "exported" in summary:
        lines.append(f"exported to {summary['exported']}")
    return lines


def _comparison_lines(rows: dict) -> list[str]:
    from rlhf_widgets.workflows.quickstart import summary_table

    if all("gold_win_rate" in row and "kl_to_reference" in row for row in rows.values()):
        return summary_table(rows).splitlines()
    return [f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float))
            for name, row in rows.items()]


def _loop_lines(summary: dict) -> list[str]:
    return [f"round {r['round']}: policy in {r['policy']}" + "".join(
        f", {k.removeprefix('loop/')} {v:.3g}" for k, v in r.items() if k.startswith("loop/") and "win_rate" in k)
        for r in summary["rounds"]]


def _quickstart_lines(summary: dict) -> list[str]:
    from rlhf_widgets.workflows.quickstart import summary_table

    table = summary_table(summary["numbers"]["comparison"]).splitlines() if "comparison" in summary["numbers"] else []
    return ["", *table, "", f"report: {summary['report']}"]


@dataclass(frozen=True)
class Command:
    help: str
    dataclasses: Callable[[], tuple[type, ...]]
    """the dataclasses whose fields are the options (imported lazily: `--help` of one stage loads only it)"""
    run: Callable[..., dict]
    lines: Callable[[dict], list[str]] = _stage_lines
    """the summary `run` returns, as the lines a person reads"""


def _classes(config_path: str, *extra: type, model: bool = True) -> Callable[[], tuple[type, ...]]:
    """The option dataclasses of a command: its config class (by dotted path, imported when needed), then
    `ModelConfig` for training stages, then `extra`."""

    def classes() -> tuple[type, ...]:
        import importlib

        module, name = config_path.rsplit(".", 1)
        config = getattr(importlib.import_module(module), name)
        return (config, ModelConfig, *extra) if model else (config, *extra)

    return classes


COMMANDS: dict[str, Command] = {
    "sft": Command("supervised fine-tuning (TRL SFTTrainer)",
                   _classes("rlhf_widgets.stages.sft.SFTStageConfig", DemonstrationArguments), _sft),
    "label": Command("candidate pairs from a policy, labeled by an AI labeler, exported",
                     lambda: (LabelArguments,), _label, _label_lines),
    "reward": Command("reward model on preference pairs (TRL RewardTrainer)",
                      _classes("rlhf_widgets.stages.reward.RewardStageConfig", PreferenceArguments), _reward_stage),
    "dpo": Command("direct preference optimisation (TRL DPOTrainer)",
                   _classes("rlhf_widgets.stages.dpo.DPOStageConfig", PreferenceArguments), _dpo),
    "grpo": Command("GRPO against a reward model (TRL GRPOTrainer)",
                    _classes("rlhf_widgets.stages.grpo.GRPOStageConfig", PromptArguments), _online("train_grpo")),
    "rloo": Command("RLOO against a reward model (TRL RLOOTrainer)",
                    _classes("rlhf_widgets.stages.grpo.RLOOStageConfig", PromptArguments), _online("train_rloo")),
    "ppo": Command("PPO with a KL penalty against a reward model",
                   _classes("rlhf_widgets.stages.ppo.PPOConfig", PromptArguments), _ppo),
    "evaluate": Command("compare policies on held-out prompts (win rates, KL, length)",
                        lambda: (EvaluateArguments,), _evaluate, _comparison_lines),
    "loop": Command("iterative rounds: pairs on the current policy, labels, reward model, policy, evaluation",
                    _classes("rlhf_widgets.workflows.loop.LoopConfig", LoopArguments, model=False), _loop,
                    _loop_lines),
    "quickstart": Command("the whole loop on the offline sandbox, with a report",
                          _classes("rlhf_widgets.workflows.quickstart.QuickstartConfig", model=False), _quickstart,
                          _quickstart_lines),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
    return ("usage: python -m rlhf_widgets <stage> [options]   (--help after a stage lists its options)\n\n"
            "stages:\n" + "\n".join(lines))


def parser(name: str):
    """The `HfArgumentParser` of command `name`: its dataclasses' fields, then `OutputArguments`."""
    from transformers import HfArgumentParser

    command = COMMANDS[name]
    return HfArgumentParser((*command.dataclasses(), OutputArguments), prog=f"rlhf-widgets {name}",
                            description=command.help)


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default `sys.argv[1:]`), run the stage, print what it did (its JSON summary with `--json`);
    returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rlhf-widgets: unknown stage {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2

    *parsed, output = parser(name).parse_args_into_dataclasses(rest)
    if output.verbose:
        quiet.set_verbose()
    command = COMMANDS[name]
    with quiet.long_call(""):  # one bar for the command, named by its steps
        summary = command.run(*parsed)
    if _is_main_process():
        print(json.dumps(summary, indent=2, default=str) if output.json else "\n".join(command.lines(summary)))
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
