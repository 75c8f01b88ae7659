"""The iterative loop: label on the current policy, retrain, repeat.

RLHF is a cycle: a reward model trained on the SFT model's answers is asked, during RL, to judge answers it has
never seen the like of, and the policy drifts towards where it is least accurate. Each round here collects
labels on the *current* policy's answers. Round k (1, 2, …):

1. **pairs** — the current policy (the SFT model in round 1) answers `prompts_per_round` fresh prompts
   `answers_per_prompt` times; pairs among the answers go into the store with their round, and per side the
   policy checkpoint that wrote the answer and the prompt source (`PreferenceStore.pairs(rounds=[k])`).
2. **labels** — a person labels what they like in a `LabelingPanel` on the store (labels carry round k); an AI
   labeler fills every pair of the round nobody labeled.
3. **reward model** — first measured on the round's held-out pairs as it stands (how stale the previous
   round's RM is on the new policy's answers), then trained on every label so far — continuing from the
   previous round's RM (`reward_init="continue"`) or from the SFT model (`"retrain"`) — and measured again.
4. **policy** — PPO from the current policy against the new RM (`policy_update="ppo"`), or DPO on the round's
   pairs with the current policy as the reference (`"dpo"`: iterative / online DPO).
5. **evaluation** — the new policy against SFT and against the previous round's policy on held-out prompts:
   win rates (gold where the world has one, and the RM), KL to SFT, length.

Each finished step is recorded in `<output_dir>/loop.json` (and its checkpoints under `round-k/`), so `run()`
after a crash or a kernel restart goes on from the first unfinished step. Every round's numbers go to a
`MetricsLog` at step k (`loop/...`), which a `LiveDashboard` draws round over round.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf_widgets.evaluation import measure_policies, reward_report, win_rate
from rlhf_widgets.labeling import PreferenceStore, label_with
from rlhf_widgets.labeling.labelers import Labeler
from rlhf_widgets.labeling.pairs import generate_pairs
from rlhf_widgets.runtime.config import SANDBOX, field_help
from rlhf_widgets.runtime.data import PromptSource, load_prompts, prompt_list, split_by_prompt
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import ModelLike
from rlhf_widgets.runtime.quiet import long_call
from rlhf_widgets.runtime.reward_protocol import RewardFunction
from rlhf_widgets.runtime.stage_runner import copied
from rlhf_widgets.runtime.validation import check_fields
from rlhf_widgets.stages.dpo import DPOStageConfig, train_dpo
from rlhf_widgets.stages.ppo import PPOConfig, train_ppo
from rlhf_widgets.stages.reward import RewardModel, RewardStageConfig, train_reward_model
from rlhf_widgets.views.tables import FormattedTable, format_table

STEPS = ("pairs", "labels", "reward", "policy", "evaluate")
"""the steps of a round, in order"""
STATE_FILE = "loop.json"


@dataclass
class LoopConfig:
    """Sizes and choices of the iterative loop (the stages' own configs are passed to `IterativeLoop`)."""

    output_dir: str = field(default="runs/loop", metadata=field_help(
        "Where the label store, each round's checkpoints (round-k/) and the loop's state (loop.json) go."))
    rounds: int = field(default=3, metadata=field_help("Rounds to run."))
    prompts_per_round: int = field(default=100, metadata=field_help("Fresh prompts the policy answers each round."))
    answers_per_prompt: int = field(default=4, metadata=field_help("Answers sampled per prompt."))
    pairs_per_prompt: int = field(default=6, metadata=field_help(
        "Pairs per prompt among its answers, at most (the round's label budget is about prompts x pairs)."))
    policy_update: str = field(default="ppo", metadata=field_help(
        "'ppo' (from the current policy against the new reward model) or 'dpo' (on the round's pairs, the current "
        "policy as reference)."))
    reward_init: str = field(default="continue", metadata=field_help(
        "'continue' (train the previous round's reward model on all labels so far) or 'retrain' (start from the "
        "SFT model each round)."))
    held_out_fraction: float = field(default=0.2, metadata=field_help(
        "Share of each round's prompts (with their pairs) kept out of reward training, to measure the reward model "
        "on the new policy's answers before and after retraining."))
    eval_prompts: int = field(default=64, metadata=field_help("Held-out prompts of the round-over-round comparison."))
    ai_annotator: str = field(default="ai", metadata=field_help("The name the AI labeler's labels are recorded under."))
    seed: int = field(default=0, metadata=field_help("Seed of the sampling, splits and trainers."))

    def __post_init__(self) -> None:
        check_fields(self, {
            "rounds": (self.rounds >= 1, "must be >= 1"),
            "prompts_per_round": (self.prompts_per_round >= 1, "must be >= 1"),
            "answers_per_prompt": (self.answers_per_prompt >= 2, "must be >= 2 (a pair needs two answers)"),
            "pairs_per_prompt": (self.pairs_per_prompt >= 1, "must be >= 1"),
            "policy_update": (self.policy_update in ("ppo", "dpo"), "must be 'ppo' or 'dpo'"),
            "reward_init": (self.reward_init in ("continue", "retrain"), "must be 'continue' or 'retrain'"),
            "held_out_fraction": (0 < self.held_out_fraction < 1, "must be in (0, 1)"),
            "eval_prompts": (self.eval_prompts >= 1, "must be >= 1"),
        })


@dataclass
class RoundResult:
    """What one round did and measured (also logged as `loop/...` metrics at step = round)."""

    round: int
    policy_path: str
    """the policy this round trained (the next round's sampler)"""
    reward_path: str
    pairs: int
    human_labels: int
    ai_labels: int
    metrics: dict[str, float] = field(default_factory=dict)
    """`loop/...` numbers: RM accuracy / gold agreement on the round's held-out pairs before and after
    retraining, win rates against SFT and the previous round, KL to SFT, words"""


@dataclass
class RoundState:
    """One round's progress as `loop.json` records it: the steps done so far and what each produced."""

    round: int
    done: list[str] = field(default_factory=list)
    """the steps of `STEPS` finished, in order"""
    pairs: int | None = None
    human_labels: int | None = None
    ai_labels: int | None = None
    reward_path: str | None = None
    reward_pairs: int | None = None
    policy_path: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    """wall-clock seconds of steps 2–5, summed over resumes"""

    def finish(self, step: str, **produced: Any) -> None:
        """Record `step` as done, with what it produced (fields of this class)."""
        for name, value in produced.items():
            if name not in self.__dataclass_fields__:
                raise AttributeError(f"RoundState has no field {name!r}")
            setattr(self, name, value)
        self.done.append(step)

    @property
    def complete(self) -> bool:
        return set(self.done) >= set(STEPS)

    def result(self) -> RoundResult:
        return RoundResult(round=self.round, policy_path=self.policy_path, reward_path=self.reward_path,
                           pairs=self.pairs, human_labels=self.human_labels, ai_labels=self.ai_labels,
                           metrics=self.metrics)


def rounds_table(results: Sequence[RoundResult]) -> FormattedTable:
    """The rounds' `loop/...` numbers, one row per round, as a person reads them (`tables.format_table`: win rates
    and agreements as percent, label counts whole); `.data` is the DataFrame of the raw numbers."""
    import pandas as pd

    frame = pd.DataFrame.from_dict({r.round: r.metrics for r in results}, orient="index")
    frame.index.name = "round"
    return format_table(frame)


class IterativeLoop:
    """Rounds of label → reward model → policy → evaluation on the current policy's answers (module docstring).

    Args:
        prompts: the prompt pool (a list, or any `data.load_prompts` source); each round takes the next
            `prompts_per_round` of it, so no prompt is asked twice.
        config: the loop's sizes and choices.
        sft_model: the SFT policy round 1 samples from and every round is compared with.
        labeler: the AI labeler `(prompt, a, b) -> "a" | "b" | "tie" | "skip"` that fills what a person left.
        eval_prompts: held-out prompts of the comparison; the first `config.eval_prompts` are used (default: the
            sandbox's test split, when `gold` is given — the sandbox world; otherwise required).
        gold: a held-out reward function for evaluation only (the sandbox's `gold_reward`); never trained on.
        store: where pairs and labels go (default `<output_dir>/labels.sqlite`; a `postgresql://` URL for a team).
        reward_config, ppo_config, dpo_config: the stages' configs (output_dir is set per round).
        metrics: where round-over-round numbers go (default `<output_dir>/metrics.jsonl`, continued on resume).
    """

    def __init__(self, prompts: PromptSource, config: LoopConfig | None = None, *, sft_model: ModelLike,
                 labeler: Labeler, eval_prompts: PromptSource | None = None, gold: RewardFunction | None = None,
                 store: PreferenceStore | str | os.PathLike | None = None, reward_config=None, ppo_config=None,
                 dpo_config=None, metrics: MetricsLog | None = None) -> None:
        self.config = config or LoopConfig()
        self.out = Path(self.config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.prompts = prompt_list(prompts)
        self.sft_model = sft_model
        self.labeler = labeler
        self.gold = gold
        if eval_prompts is None:
            if gold is None:
                raise ValueError("IterativeLoop: pass eval_prompts= (held-out prompts for the comparison)")
            eval_prompts = load_prompts(SANDBOX, split="test", n=self.config.eval_prompts, seed=self.config.seed)
        self.eval_prompts = prompt_list(eval_prompts)[: self.config.eval_prompts]
        self.store = store if isinstance(store, PreferenceStore) else PreferenceStore(
            store if store is not None else self.out / "labels.sqlite")
        self.reward_config, self.ppo_config, self.dpo_config = reward_config, ppo_config, dpo_config
        self._rounds = self._load_state()
        self.metrics = metrics if metrics is not None else (
            MetricsLog.load(self.out / "metrics.jsonl", resume=True) if (self.out / "metrics.jsonl").is_file()
            else MetricsLog(self.out / "metrics.jsonl", run_name="loop"))
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- state
    def _load_state(self) -> list[RoundState]:
        """The rounds recorded in `loop.json` (none for a new loop); raises when it was written with other
        settings."""
        path = self.out / STATE_FILE
        saved = json.loads(path.read_text()) if path.is_file() else {"rounds": []}
        if saved.get("config") not in (None, asdict(self.config)):
            changed = sorted(k for k, v in asdict(self.config).items() if saved["config"].get(k) != v)
            raise ValueError(f"{path} was written with other loop settings ({', '.join(changed)}); resume with "
                             "the same LoopConfig, or use another output_dir")
        return [RoundState(**r) for r in saved["rounds"]]

    def _save_state(self) -> None:
        path = self.out / STATE_FILE
        tmp = path.with_suffix(".tmp")
        saved = {"config": asdict(self.config), "rounds": [asdict(r) for r in self._rounds]}
        tmp.write_text(json.dumps(saved, indent=2, default=str))
        os.replace(tmp, path)  # a kill mid-write leaves the previous state, never half of one

    def _round_state(self, k: int) -> RoundState:
        while len(self._rounds) < k:
            self._rounds.append(RoundState(round=len(self._rounds) + 1))
        return self._rounds[k - 1]

    @property
    def rounds_done(self) -> int:
        """Rounds whose every step finished."""
        return sum(r.complete for r in self._rounds)

    @property
    def current_policy(self) -> ModelLike:
        """The policy the next round samples from: the last finished round's, or the SFT model."""
        finished = [r for r in self._rounds if "policy" in r.done]
        return finished[-1].policy_path if finished else self.sft_model

    @property
    def history(self) -> list[RoundResult]:
        """Every finished round's result, in order."""
        return [r.result() for r in self._rounds if r.complete]

    # ---------------------------------------------------------------- the steps
    def prepare_round(self) -> int:
        """Step 1 of the next unfinished round (if not done yet): sample its pairs into the store. Returns the
        round number; label its pairs in a `LabelingPanel(loop.store)` before `finish_round()`."""
        k = self.rounds_done + 1
        state = self._round_state(k)
        self.store.round = k
        if "pairs" in state.done:
            return k

        cfg = self.config
        start = (k - 1) * cfg.prompts_per_round
        prompts = self.prompts[start : start + cfg.prompts_per_round]
        if len(prompts) < cfg.prompts_per_round:
            raise ValueError(f"round {k} needs prompts {start}..{start + cfg.prompts_per_round - 1} but the pool has "
                             f"{len(self.prompts)}: pass more prompts or lower prompts_per_round")
        if self.store.pairs(rounds=[k]):  # made before a crash that came before the state was saved
            state.finish("pairs", pairs=len(self.store.pairs(rounds=[k])))
            self._save_state()
            return k
        policy = self.current_policy
        source = str(policy)
        rows = generate_pairs(prompts, model=policy, k=cfg.answers_per_prompt, name=f"round-{k - 1} policy",
                              max_pairs_per_prompt=cfg.pairs_per_prompt, seed=cfg.seed + k)
        for index, row in enumerate(rows):
            row["round"] = k
            for side in ("a", "b"):
                row["metadata"][side]["checkpoint"] = source
            row["metadata"]["prompt_source"] = f"prompt pool, items {start}..{start + len(prompts) - 1}"
            row["metadata"]["row"] = index
        # one transaction: a kill before it commits leaves no half round (and this step runs again)
        self.store.add_pairs(rows)
        state.finish("pairs", pairs=len(rows))
        self._save_state()
        return k

    def finish_round(self) -> RoundResult:
        """Steps 2–5 of the round `prepare_round` opened (each skipped if already done), then the round's result."""
        k = self.prepare_round()
        state = self._round_state(k)
        started = time.perf_counter()
        if "labels" not in state.done:
            self._labels(k, state)
        if "reward" not in state.done:
            self._reward(k, state)
        if "policy" not in state.done:
            self._policy(k, state)
        if "evaluate" not in state.done:
            self._evaluate(k, state)
        state.seconds += time.perf_counter() - started
        self._save_state()
        return self.history[k - 1]

    def run(self, rounds: int | None = None) -> list[RoundResult]:
        """Run (or resume) rounds until `rounds` (default `config.rounds`) are finished; returns the history."""
        total = rounds if rounds is not None else self.config.rounds
        with long_call("loop"):  # one bar for the rounds: its name says which round and which step
            while self.rounds_done < total:
                with long_call(f"round {self.rounds_done + 1}/{total}"):
                    self.prepare_round()
                    self.finish_round()
        return self.history

    def start(self, rounds: int | None = None) -> threading.Thread:
        """`run` in a background thread, so labeling and training panels stay responsive; returns the thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the loop is already running")
        self._thread = threading.Thread(target=self.run, args=(rounds,), daemon=True, name="rlhf-widgets-loop")
        self._thread.start()
        return self._thread

    def wait(self) -> None:
        """Block until a `start()`ed run ends."""
        if self._thread is not None:
            self._thread.join()

    def _round_dir(self, k: int) -> Path:
        return self.out / f"round-{k}"

    def _labels(self, k: int, state: RoundState) -> None:
        pairs = {p.id for p in self.store.pairs(rounds=[k])}
        human = {lbl.pair_id for lbl in self.store.labels() if lbl.pair_id in pairs
                 and lbl.annotator != self.config.ai_annotator}
        self.store.round = k
        ai = label_with(self.store, self.labeler, self.config.ai_annotator, only_unlabeled_by_anyone=True)
        state.finish("labels", human_labels=len(human), ai_labels=ai)
        self._save_state()

    def _round_splits(self, k: int):
        """(every label so far minus the round's held-out prompts, this round's held-out pairs)."""
        cfg = self.config
        everything = self.store.to_dataset(rounds=list(range(1, k + 1)))
        this_round = self.store.to_dataset(rounds=[k])
        held = split_by_prompt(this_round, cfg.held_out_fraction, seed=cfg.seed + k)["test"]
        held_prompts = {json.dumps(p, sort_keys=True) for p in held["prompt"]}
        keep = [i for i, p in enumerate(everything["prompt"]) if json.dumps(p, sort_keys=True) not in held_prompts]
        return everything.select(keep), held

    def _reward(self, k: int, state: RoundState) -> None:
        train, held = self._round_splits(k)
        previous = self._rounds[k - 2].reward_path if k > 1 else None
        numbers: dict[str, float] = {}
        if previous is not None:  # how stale is the last round's RM on this round's answers?
            numbers.update(_rm_numbers(reward_report(RewardModel.load(previous), held, gold=self.gold), "before"))
        init = previous if previous is not None and self.config.reward_init == "continue" else self.sft_model
        base = self.reward_config or RewardStageConfig(seed=self.config.seed)
        config = _with(base, output_dir=str(self._round_dir(k) / "reward"), eval_fraction=0)
        result = train_reward_model(train, config, model=init)
        numbers.update(_rm_numbers(reward_report(result.reward_model, held, gold=self.gold), "after"))
        state.finish("reward", reward_path=str(result.model_path), reward_pairs=len(train), metrics=numbers)
        self._save_state()

    def _policy(self, k: int, state: RoundState) -> None:
        cfg = self.config
        out = self._round_dir(k) / "policy"
        if cfg.policy_update == "ppo":
            base = self.ppo_config or PPOConfig(seed=cfg.seed)
            start = (k - 1) * cfg.prompts_per_round
            prompts = self.prompts[start : start + cfg.prompts_per_round]
            result = train_ppo(prompts, _with(base, output_dir=str(out)), model=self.current_policy,
                               reward=state.reward_path, gold=self.gold)
            if result.status == "failed":
                raise RuntimeError(f"round {k}: PPO stopped: {result.reason}")
        else:
            base = self.dpo_config or DPOStageConfig(seed=cfg.seed)
            result = train_dpo(self.store.to_dataset(rounds=[k]), _with(base, output_dir=str(out)),
                               model=self.current_policy)
        state.finish("policy", policy_path=str(result.model_path))
        self._save_state()

    def _evaluate(self, k: int, state: RoundState) -> None:
        previous = self._rounds[k - 2].policy_path if k > 1 else None
        rm = RewardModel.load(state.reward_path)
        policies = {"SFT": self.sft_model, "current": state.policy_path}
        if previous is not None:
            policies["previous"] = previous
        measured = measure_policies(policies, self.eval_prompts, baseline="SFT", gold=self.gold, reward_model=rm,
                                    kl_reference=self.sft_model, seed=self.config.seed)
        row = measured.table.loc["current"]
        numbers = {"loop/kl_to_sft": float(row["kl_to_reference"]), "loop/words": float(row["mean_words"]),
                   "loop/rm_win_rate_vs_sft": float(row["rm_win_rate"])}
        if self.gold is not None:
            numbers["loop/gold_win_rate_vs_sft"] = float(row["gold_win_rate"])
            numbers["loop/gold"] = float(row["gold_mean"])
        if previous is not None:
            responses = measured.responses
            judge = self.gold if self.gold is not None else rm
            numbers["loop/win_rate_vs_previous"] = win_rate(self.eval_prompts, responses["current"],
                                                            responses["previous"], judge)["win_rate"]
        numbers["loop/human_labels"] = float(state.human_labels)
        numbers["loop/ai_labels"] = float(state.ai_labels)
        state.metrics = {**state.metrics, **numbers}
        if not any(r.step == k and r.stage == "loop" for r in self.metrics.records):  # not logged before a crash
            self.metrics.log(state.metrics, step=k, stage="loop")
            self.metrics.log_event("round", f"round {k} done: policy {state.policy_path}", step=k, stage="loop")
        state.finish("evaluate")
        self._save_state()


def _rm_numbers(report: dict, when: str) -> dict[str, float]:
    numbers = {f"loop/rm_accuracy_{when}": report["accuracy"]}
    if "gold_agreement" in report:
        numbers[f"loop/rm_gold_agreement_{when}"] = report["gold_agreement"]
    return numbers


def _with(config: Any, **changes: Any) -> Any:
    """A copy of a stage config with `changes` (the caller's object is not modified)."""
    changed = copied(config)
    for name, value in changes.items():
        setattr(changed, name, value)
    return changed
