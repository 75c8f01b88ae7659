"""The whole loop on the offline sandbox, as one call (what `make quickstart` runs).

build world → SFT → candidate pairs → simulated annotator labels (in a PreferenceStore) → reward
model → PPO → DPO → evaluation on held-out prompts → an HTML report with the plots and the
comparison table. Every number in the report comes from this run (`report.json` holds them).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from rlhf_widgets.config import SANDBOX
from rlhf_widgets.metrics import MetricsLog


@dataclass
class QuickstartConfig:
    """Sizes of the offline quickstart; the defaults fit a 2-core CPU in a few minutes."""

    output_dir: str = "runs/quickstart"
    """where every stage writes (models, metrics, label store, report)"""
    seed: int = 0
    """one seed for every stage"""
    sft_demos: int = 2048
    """sandbox demonstrations for SFT"""
    pair_prompts: int = 600
    """prompts to generate candidate pairs for"""
    answers_per_prompt: int = 4
    """SFT answers sampled per prompt; pairs are drawn among them (InstructGPT ranked 4–9 per prompt)"""
    pairs_per_prompt: int = 6
    """labeled pairs per prompt, at most (answers_per_prompt choose 2; 6 = all of them). More comparisons per
    prompt teach the reward model more per sampled answer: held-out gold agreement ~0.89 with all 6 pairs
    among 4 answers vs ~0.84 with one pair per prompt (600 prompts, noisy simulated labels)"""
    annotator_temperature: float = 1.0
    """simulated annotator's Bradley–Terry temperature (label noise)"""
    verbosity_bias: float = 0.0
    """simulated annotator's per-word preference for longer responses (0 = unbiased)"""
    ppo_updates: int = 32
    """PPO updates"""
    eval_prompts: int = 128
    """held-out prompts for the final comparison"""
    best_of: int = 8
    """N of the best-of-N baseline in the comparison (1 = leave it out)"""
    stages: tuple[str, ...] = ("sft", "pairs", "reward", "ppo", "dpo", "evaluate")
    """stages to run, in order (later ones need earlier ones)"""


@dataclass
class QuickstartResult:
    """Paths and numbers of a quickstart run."""

    output_dir: Path
    report_path: Path | None
    numbers: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def run_quickstart(config: QuickstartConfig | None = None) -> QuickstartResult:
    """Run the configured stages on the sandbox and write `report.html` / `report.json`."""
    from rlhf_widgets import sandbox

    config = config or QuickstartConfig()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = QuickstartResult(output_dir=out, report_path=None)
    logs: dict[str, MetricsLog] = {}
    stages = tqdm(config.stages, desc="quickstart", unit="stage")
    state: dict = {}
    for stage in stages:
        stages.set_postfix_str(stage)
        start = time.perf_counter()
        if stage == "sft":
            from rlhf_widgets.sft import SFTStageConfig, train_sft

            sft = train_sft(SFTStageConfig(output_dir=str(out / "sft"), sandbox_demos=config.sft_demos,
                                           seed=config.seed), model=SANDBOX)
            state["sft_path"], logs["sft"] = sft.model_path, sft.metrics
        elif stage == "pairs":
            from rlhf_widgets.labeling import PreferenceStore, label_with
            from rlhf_widgets.labeling.pairs import generate_pairs
            from rlhf_widgets.models import load_causal_lm

            model, tok = load_causal_lm(str(state["sft_path"]))
            prompts = [p.text for p in sandbox.make_prompts(config.pair_prompts, seed=config.seed + 1)]
            rows = generate_pairs(model, tok, prompts, k=config.answers_per_prompt, model_name="sft",
                                  max_pairs_per_prompt=config.pairs_per_prompt, seed=config.seed)
            store = PreferenceStore(out / "labels.sqlite")
            store.add_pairs(rows)
            annotator = sandbox.SimulatedAnnotator(temperature=config.annotator_temperature,
                                                   verbosity_bias=config.verbosity_bias, seed=config.seed)
            label_with(store, annotator, annotator=annotator.name, show_progress=False)
            state["pairs"] = store.to_dataset(annotator=annotator.name)
            result.numbers["pairs"] = len(state["pairs"])
        elif stage == "reward":
            from rlhf_widgets.evaluate import reward_report
            from rlhf_widgets.reward import RewardStageConfig, train_reward_model

            rm = train_reward_model(state["pairs"], RewardStageConfig(output_dir=str(out / "reward"),
                                                                      seed=config.seed),
                                    model=str(state["sft_path"]))
            report = reward_report(rm.reward_model, rm.eval_dataset, gold=sandbox.gold_score)
            state["reward_model"], logs["reward"] = rm.reward_model, rm.metrics
            result.numbers["reward"] = {k: report[k] for k in ("accuracy", "gold_agreement", "mean_margin",
                                                               "expected_calibration_error")}
        elif stage == "ppo":
            from rlhf_widgets.ppo import PPOConfig, PPOTrainer

            # the reward model is already normalised on SFT samples (its training pairs)
            train_prompts = [p.text for p in sandbox.make_prompts(1000, seed=config.seed + 2)]
            trainer = PPOTrainer(PPOConfig(output_dir=str(out / "ppo"), num_updates=config.ppo_updates,
                                           seed=config.seed),
                                 policy=str(state["sft_path"]), reward=state["reward_model"],
                                 prompts=train_prompts, gold=sandbox.gold_score)
            trainer.train(show_progress=False)
            state["ppo_path"], logs["ppo"] = trainer.output_dir / "last" / "policy", trainer.metrics
        elif stage == "dpo":
            from rlhf_widgets.data import one_pair_per_prompt
            from rlhf_widgets.dpo import DPOStageConfig, train_dpo

            # one pair per prompt: on all 6 pairs among 4 answers (each answer in 3 of them) DPO did worse, at
            # 2.4x the time (gold win rate over SFT 0.59 after 1 or 2 epochs, against 0.63)
            dpo = train_dpo(one_pair_per_prompt(state["pairs"]),
                            DPOStageConfig(output_dir=str(out / "dpo"), seed=config.seed), model=str(state["sft_path"]))
            state["dpo_path"], logs["dpo"] = dpo.model_path, dpo.metrics
        elif stage == "evaluate":
            result.numbers["comparison"] = _compare(state, config)
        else:
            raise ValueError(f"run_quickstart: unknown stage {stage!r}; known: {QuickstartConfig.stages}")
        result.seconds[stage] = round(time.perf_counter() - start, 1)
    result.report_path = write_report(out, config, result, logs)
    return result


def _compare(state: dict, config: QuickstartConfig) -> dict:
    """Gold and RM win rates over SFT, KL to SFT and length, for every policy the run produced."""
    from rlhf_widgets import sandbox
    from rlhf_widgets.best_of_n import BestOfNSampler
    from rlhf_widgets.evaluate import compare_policies

    prompts = [p.text for p in sandbox.make_prompts(config.eval_prompts, seed=config.seed + 3, split="test")]
    policies = {"SFT": state["sft_path"]}
    if "reward_model" in state and config.best_of > 1:
        policies[f"best-of-{config.best_of}"] = BestOfNSampler(state["sft_path"], state["reward_model"],
                                                               n=config.best_of, seed=config.seed)
    policies.update({name: state[key] for name, key in (("PPO", "ppo_path"), ("DPO", "dpo_path")) if key in state})
    table = compare_policies(policies, prompts, baseline="SFT", gold=sandbox.gold_score,
                             reward_model=state.get("reward_model"), kl_reference=str(state["sft_path"]),
                             seed=config.seed + 7)
    return {name: {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for name, row in table.to_dict(orient="index").items()}


def write_report(out: Path, config: QuickstartConfig, result: QuickstartResult, logs: dict[str, MetricsLog]) -> Path:
    """report.json (every number) and report.html (plots + comparison table); returns the HTML path."""
    import html

    from rlhf_widgets.plots import figure_from_log

    numbers = {"config": asdict(config), "numbers": result.numbers, "seconds": result.seconds}
    (out / "report.json").write_text(json.dumps(numbers, indent=2, default=str))
    parts = ["<html><head><meta charset='utf-8'><title>rlhf-widgets quickstart</title></head><body>",
             "<h1>rlhf-widgets quickstart</h1>",
             f"<p>Stages and seconds: {html.escape(json.dumps(result.seconds))}</p>"]
    comparison = result.numbers.get("comparison")
    if comparison:
        cols = ["gold_win_rate", "rm_win_rate", "gold_mean", "kl_to_reference", "mean_words", "example"]
        parts.append("<h2>Comparison on held-out prompts (vs SFT)</h2><table border='1' cellpadding='4'><tr>"
                     "<th>policy</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        for name, row in comparison.items():
            cells = "".join(
                f"<td>{row[c]:.3f}</td>" if isinstance(row.get(c), float)
                else f"<td>{html.escape(str(row.get(c, '')))}</td>"
                for c in cols
            )
            parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
        parts.append("</table>")
    if "reward" in result.numbers:
        parts.append(f"<h2>Reward model</h2><pre>{html.escape(json.dumps(result.numbers['reward'], indent=2))}</pre>")
    first = True
    for stage, log in logs.items():
        fig = figure_from_log(log, title=f"{stage} metrics")
        parts.append(f"<h2>{html.escape(stage)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
        first = False
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
