"""Reward-model ensembles: K reward models behind one reward function, combined conservatively.

A policy optimised against one reward model climbs into regions where that model is wrong (overoptimization).
Coste et al. 2023 ("Reward Model Ensembles Help Mitigate Overoptimization") train K reward models and optimise a
conservative combination of their scores — the worst member's (WCO) or the mean less λ times the members'
variance (UWO) — which practically removes overoptimization in best-of-N and, with a small KL penalty, in PPO.
`RewardEnsemble` is such a combination in the project's reward protocol (`runtime.reward_protocol`): PPO, GRPO / RLOO,
best-of-N, AI labelers and evaluation take it as they take any reward function.

Members are combined on their *normalised* scores (mean 0 / std 1 on the same reference responses, e.g. SFT
samples): two separately trained reward models put their raw scores on unrelated offsets and scales, and a minimum
or a variance across unrelated scales measures the scales, not the disagreement. `train_reward_ensemble` trains the
members on bootstrap resamples of the pairs (by prompt) — members that differ in more than their seed disagree
more usefully (Eisenstein et al. 2023) — and fits every member's normalisation on the same responses.

A saved ensemble is one directory::

    rlhf_widgets_ensemble.json   objective, uncertainty_weight, members (K)
    members/0 … members/K-1      each a saved `RewardModel` (`RewardModel.save`)

LoRA members on one base model share it in memory (`load_members`): one copy of the frozen base carries K named
adapters (each with its own score head), and each member makes its adapter the active one when it scores — K
adapters cost K small sets of weights, not K base models.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import datasets
import numpy as np
import torch
from peft import PeftModel

from rlhf_widgets.runtime.config import SANDBOX, ModelConfig, as_model_config
from rlhf_widgets.runtime.data import split_by_prompt
from rlhf_widgets.runtime.metrics import Event, MetricRecord, MetricsLog
from rlhf_widgets.runtime.models import load_tokenizer
from rlhf_widgets.runtime.stage_runner import FINAL, StageResult, copied, stage_metrics
from rlhf_widgets.stages.reward.model import (
    RewardModel,
    RewardStageConfig,
    _adapters_to_compute_dtype,
    adapter_base,
    fit_normalization_on_pairs,
    saved_reward_meta,
    train_reward_model,
)

ENSEMBLE_META = "rlhf_widgets_ensemble.json"
"""File in a saved ensemble's directory with how its members combine and how many there are."""
MEMBERS = "members"
"""Sub-directory of a saved ensemble holding the members, `members/0 … members/K-1`."""
OBJECTIVES = ("mean", "worst", "uncertainty")
"""How members' normalised scores combine: their mean; their minimum (WCO); mean − λ·variance (UWO)."""


class EnsembleMember(Protocol):
    """What an ensemble needs of a member (a `RewardModel` is one)."""

    def score(self, prompts: Sequence, responses: Sequence, normalize: bool = True) -> torch.Tensor:
        """(N,) scores, normalised unless told not."""
        ...

    def fit_normalization(self, prompts: Sequence, responses: Sequence) -> tuple[float, float]:
        """Set the normalisation so these responses score mean 0 / std 1; returns (bias, scale)."""
        ...

    def save(self, path: str | Path) -> Path:
        """Write the member to a directory `RewardModel.load` reads."""
        ...


def check_objective(objective: str, uncertainty_weight: float) -> None:
    """Raise ValueError, naming the setting and what it may be, for an unknown objective or a λ that is negative
    or not finite."""
    if objective not in OBJECTIVES:
        raise ValueError(f"RewardEnsemble objective={objective!r}: must be one of {', '.join(map(repr, OBJECTIVES))}")
    if not (isinstance(uncertainty_weight, numbers.Real) and math.isfinite(uncertainty_weight)
            and uncertainty_weight >= 0):
        raise ValueError(f"RewardEnsemble uncertainty_weight={uncertainty_weight!r}: must be a finite number >= 0 "
                         "(the λ of mean − λ·variance)")


def check_members(members: int) -> None:
    """Raise ValueError unless there are at least two members."""
    if members < 2:
        raise ValueError(f"RewardEnsemble members={members}: an ensemble needs at least 2 members (one reward model "
                         "is a RewardModel; its spread would be 0)")


class AdapterMember(RewardModel):
    """A LoRA member whose base model other members share: its adapter (and score head) is the named adapter
    `adapter` of the shared `PeftModel`, made the active one for each of its calls. Scores, saves and loads as a
    `RewardModel` of its own would."""

    def __init__(self, model: PeftModel, adapter: str, tokenizer, **kwargs) -> None:
        self.adapter = adapter
        super().__init__(model, tokenizer, **kwargs)

    def raw_score(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        self.model.set_adapter(self.adapter)
        return super().raw_score(prompts, responses)

    def _save_weights(self, path: Path) -> str | None:
        self.model.save_pretrained(path, selected_adapters=[self.adapter])
        nested = path / self.adapter  # PEFT writes an adapter not named "default" into a folder of its name
        for item in nested.iterdir():
            item.replace(path / item.name)
        nested.rmdir()
        return self.model.peft_config[self.adapter].base_model_name_or_path


def load_members(paths: Sequence[str | Path], device: str = "auto", batch_size: int = 32,
                 mixed_precision: str = "auto") -> list[RewardModel]:
    """The saved reward models in `paths` (`RewardModel.save`), loaded with these settings. LoRA adapters of one
    base model (the same checkpoint, the same 4-bit setting) share one copy of it (`AdapterMember`); anything
    else loads as separate `RewardModel.load`s."""
    paths = [Path(p) for p in paths]
    metas = [saved_reward_meta(p) for p in paths]
    if not all(m["adapter"] for m in metas) or len({(m["base_model"], m["load_in_4bit"]) for m in metas}) != 1:
        return [RewardModel.load(p, device=device, batch_size=batch_size, mixed_precision=mixed_precision)
                for p in paths]

    names = [f"member_{i}" for i in range(len(paths))]
    model = PeftModel.from_pretrained(adapter_base(metas[0], device), paths[0], adapter_name=names[0])
    for name, path in zip(names[1:], paths[1:], strict=True):
        model.load_adapter(path, adapter_name=name)
    _adapters_to_compute_dtype(model)
    return [AdapterMember(model, name, load_tokenizer(path, padding_side="right"), bias=meta["bias"],
                          scale=meta["scale"], batch_size=batch_size, max_length=meta["max_length"],
                          mixed_precision=mixed_precision)
            for name, path, meta in zip(names, paths, metas, strict=True)]


class RewardEnsemble:
    """K reward models behind one call: `ensemble(prompts, responses) -> (N,) tensor`, the members' normalised
    scores combined by `objective`.

    Args:
        members: K >= 2 reward models, each already normalised (bias / scale fitted on the same reference
            responses, e.g. SFT samples: `fit_normalization` here does it for all of them).
        objective: "worst" (default: WCO, the minimum over members; no hyperparameter), "uncertainty" (UWO: the
            mean less `uncertainty_weight` times the members' population variance — divided by K, not K − 1) or
            "mean" (not conservative: what Coste et al. 2023 found to remove overoptimization is WCO and UWO).
        uncertainty_weight: λ of UWO, >= 0 (default 0.5, a variance of 1 costs half a standard deviation of the
            reference responses' scores); read only when `objective="uncertainty"`.

    Both settings can be changed later (`ensemble.objective = "mean"`), checked as here.
    """

    def __init__(self, members: Sequence[EnsembleMember], *, objective: str = "worst",
                 uncertainty_weight: float = 0.5) -> None:
        check_members(len(members))
        check_objective(objective, uncertainty_weight)
        self.members = list(members)
        self._objective, self._uncertainty_weight = objective, uncertainty_weight
        self.__name__ = "reward_ensemble"  # TRL names reward-function metrics after this

    @property
    def objective(self) -> str:
        """"mean", "worst" or "uncertainty" (see the class)."""
        return self._objective

    @objective.setter
    def objective(self, value: str) -> None:
        check_objective(value, self._uncertainty_weight)
        self._objective = value

    @property
    def uncertainty_weight(self) -> float:
        """λ of the "uncertainty" objective, >= 0."""
        return self._uncertainty_weight

    @uncertainty_weight.setter
    def uncertainty_weight(self, value: float) -> None:
        check_objective(self._objective, value)
        self._uncertainty_weight = value

    def __len__(self) -> int:
        return len(self.members)

    def member_scores(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """Every member's normalised scores, float32 on CPU, shape (K, N)."""
        rows = []
        for i, member in enumerate(self.members):
            row = torch.as_tensor(member.score(prompts, responses), dtype=torch.float32).cpu()
            if row.shape != (len(responses),):
                raise ValueError(f"RewardEnsemble member {i} returned scores of shape {tuple(row.shape)} for "
                                 f"{len(responses)} responses")
            rows.append(row)
        return torch.stack(rows)

    def combine(self, member_scores: torch.Tensor) -> torch.Tensor:
        """The ensemble's scores (N,) from the members' (K, N), by `objective`."""
        if self._objective == "worst":
            return member_scores.min(dim=0).values
        mean = member_scores.mean(dim=0)
        if self._objective == "mean":
            return mean
        return mean - self._uncertainty_weight * member_scores.var(dim=0, unbiased=False)

    def score_with_spread(self, prompts: Sequence, responses: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, spread), each (N,): the ensemble's scores and the members' standard deviation per response
        (population: divided by K) — their disagreement, which rises where the members' training data ends."""
        scores = self.member_scores(prompts, responses)
        return self.combine(scores), scores.std(dim=0, unbiased=False)

    def score(self, prompts: Sequence, responses: Sequence, normalize: bool = True) -> torch.Tensor:
        """The ensemble's scores of `responses` to `prompts` (str or chat messages), shape (N,).

        `normalize` is accepted for callers written for a `RewardModel` (which ask for raw scores with
        `normalize=False`) and changes nothing: the members' raw scores are on unrelated scales, so there is no raw
        ensemble score — both give the combination of the members' normalised scores.
        """
        return self.combine(self.member_scores(prompts, responses))

    def raw_score(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """The same as `score`: an ensemble has no raw scale of its own (see `score`)."""
        return self.score(prompts, responses)

    def __call__(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """The reward protocol (`rlhf_widgets.runtime.reward_protocol`): the ensemble's scores, shape (N,)."""
        return self.score(prompts, responses)

    def fit_normalization(self, prompts: Sequence, responses: Sequence) -> list[tuple[float, float]]:
        """Normalise every member on these responses (e.g. SFT samples: mean 0 / std 1 each); returns each member's
        (bias, scale)."""
        return [member.fit_normalization(prompts, responses) for member in self.members]

    def save(self, path: str | Path) -> Path:
        """Write `members/0 … K-1` (each `RewardModel.save`) and `rlhf_widgets_ensemble.json` under `path`."""
        path = Path(path)
        for i, member in enumerate(self.members):
            member.save(path / MEMBERS / str(i))
        meta = {"objective": self._objective, "uncertainty_weight": self._uncertainty_weight,
                "members": len(self.members)}
        (path / ENSEMBLE_META).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 32, mixed_precision: str = "auto"
             ) -> RewardEnsemble:
        """Reload what `save` wrote (the members with `load_members` and these settings: LoRA members share one
        base model); scores equal the saved ensemble's."""
        path = Path(path)
        meta_file = path / ENSEMBLE_META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved RewardEnsemble (no {ENSEMBLE_META})")
        meta = json.loads(meta_file.read_text())
        members = load_members([path / MEMBERS / str(i) for i in range(meta["members"])], device=device,
                               batch_size=batch_size, mixed_precision=mixed_precision)
        return cls(members, objective=meta["objective"], uncertainty_weight=meta["uncertainty_weight"])


def weight_averaged(ensemble: RewardEnsemble) -> RewardModel:
    """WARM (Ramé et al. 2024, "Weight Averaged Reward Models"): ONE reward model whose weights are the mean of the
    members' — one model to run instead of K, and (for members fine-tuned from one checkpoint, as
    `train_reward_ensemble`'s are) more robust than any member alone.

    Members must be full models of one architecture (each parameter averaged in float32, kept in its dtype). LoRA
    members are refused: the mean of K adapters is not an adapter of their rank. The result is not normalised (bias
    0, scale 1): fit it on the responses the members were normalised on (`fit_normalization`).
    """
    members = list(ensemble.members)
    if any(not isinstance(m, RewardModel) or isinstance(m.model, PeftModel) for m in members):
        raise ValueError("weight_averaged: every member must be a full-model RewardModel; this ensemble has LoRA "
                         "adapters or other scorers (the mean of K LoRA adapters is not one adapter): average full "
                         "models (ModelConfig(use_peft=False)) or keep the ensemble")
    states = [m.model.state_dict() for m in members]
    for i, state in enumerate(states[1:], start=1):
        if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in states[0].items()}:
            raise ValueError(f"weight_averaged: member {i}'s parameters differ from member 0's in names or shapes "
                             f"({type(members[i].model).__name__} vs {type(members[0].model).__name__}); only "
                             "members of one architecture can be averaged")
    averaged = {k: (torch.stack([s[k].float() for s in states]).mean(dim=0).to(v.dtype)
                    if v.is_floating_point() else v) for k, v in states[0].items()}
    model = copy.deepcopy(members[0].model)
    model.load_state_dict(averaged)
    first = members[0]
    return RewardModel(model, first.tokenizer, batch_size=first.batch_size, max_length=first.max_length,
                       mixed_precision=first.mixed_precision)


def bootstrap_by_prompt(dataset: datasets.Dataset, seed: int) -> datasets.Dataset:
    """A bootstrap resample of preference pairs by prompt: as many prompts as `dataset` has distinct ones, drawn
    with replacement, each with all its pairs (a prompt drawn twice brings its pairs twice).

    Whole prompts, as `split_by_prompt` holds them out: a prompt's pairs are not independent draws (they share the
    prompt and, with K answers per prompt, the answers), so the prompt is the unit to resample. About
    1 − 1/e ≈ 63% of the prompts are in each resample. A dataset without a `prompt` column is resampled by row.
    """
    if len(dataset) == 0:
        raise ValueError("bootstrap_by_prompt: the dataset is empty")
    keys = ([json.dumps(p, sort_keys=True) for p in dataset["prompt"]] if "prompt" in dataset.column_names
            else [str(i) for i in range(len(dataset))])
    rows_of: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        rows_of.setdefault(key, []).append(i)
    groups = list(rows_of.values())
    drawn = np.random.default_rng(seed).integers(len(groups), size=len(groups))
    return dataset.select([i for g in drawn for i in groups[g]])


@dataclass
class RewardEnsembleResult(StageResult):
    """A reward-ensemble run's result: the `StageResult` fields (`model_path`: the saved ensemble), plus the
    ensemble ready to score, the shared held-out pairs and what each member trained on."""

    reward_model: RewardEnsemble | None = None
    """the trained ensemble, ready to score (the same one `RewardEnsemble.load(model_path)` gives)"""
    eval_dataset: datasets.Dataset | None = None
    """the held-out pairs (by prompt), shared by every member and trained on by none; None when `eval_fraction=0`"""
    train_datasets: list[datasets.Dataset] = field(default_factory=list)
    """the pairs member i trained on: a bootstrap resample of the training split, or the split itself"""


def _forwarding_log(target: MetricsLog, member: int, offset: int) -> MetricsLog:
    """A memory-only log for one member's run whose records and events are logged again into `target` as they
    come, their steps shifted by `offset` (so the ensemble's steps keep rising from member to member)."""
    log = MetricsLog()

    def forward(entry: object) -> None:
        if isinstance(entry, MetricRecord):
            target.log(entry.metrics, step=entry.step + offset, stage=entry.stage)
        elif isinstance(entry, Event) and entry.kind != "saved":  # the member's own copy goes: the ensemble saves
            target.log_event(entry.kind, f"member {member}: {entry.message}", step=entry.step + offset,
                             stage=entry.stage, **{**entry.data, "member": member})

    log.subscribe(forward)
    return log


def _last_step(log: MetricsLog) -> int:
    return max((e.step for e in [*log.records, *log.events()]), default=0)


def _drop_member_copy(member_dir: Path) -> None:
    """Remove a member's own `final/` (its weights now live in the ensemble, normalised on the shared responses)
    and the directories that leaves empty."""
    shutil.rmtree(member_dir / FINAL)
    for directory in (member_dir, member_dir.parent):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def train_reward_ensemble(
    data: datasets.Dataset,
    config: RewardStageConfig | None = None,
    *,
    model: ModelConfig | str | os.PathLike = SANDBOX,
    members: int = 4,
    bootstrap: bool = True,
    objective: str = "worst",
    uncertainty_weight: float = 0.5,
    metrics: MetricsLog | None = None,
) -> RewardEnsembleResult:
    """Train `members` reward models on preference pairs `data` and save them as one `RewardEnsemble` under
    `<output_dir>/final` (`RewardEnsemble.load` reads it back).

    Each member is `train_reward_model(..., model=model)` with `config`, seed `config.seed + i`, in
    `<output_dir>/members/i` (TRL's output directory; its own `final/` is removed once the ensemble holds it).
    `config.eval_fraction` of the prompts are held out once, before any resampling (`split_by_prompt`): every
    member is evaluated on the same held-out prompts and none trains on them. Diversity: with `bootstrap=True`
    (default) member i trains on `bootstrap_by_prompt(train split, seed=config.seed + i)`, else on the whole
    training split, differing only by seed. Every member is normalised on the same responses — both of the first
    ⌈normalize_on/2⌉ training pairs (so `config.normalize_on` must be > 0). `objective` and `uncertainty_weight`
    are the ensemble's (see `RewardEnsemble`).

    One `MetricsLog` (`metrics`, default `<output_dir>/metrics.jsonl`) holds every member's training, one after
    another: steps count optimizer steps over the whole run, and each member's events name it. With a held-out
    split, the ensemble's `eval_accuracy`, `eval_disagreement` (share of held-out pairs the members do not all
    order alike) and each member's `eval_accuracy/member_i` are logged at the last step.
    """
    check_members(members)
    check_objective(objective, uncertainty_weight)
    config = copied(config or RewardStageConfig())
    if not config.normalize_on:
        raise ValueError("train_reward_ensemble: RewardStageConfig.normalize_on=0, but members are combined on "
                         "normalised scores (their raw scores are on unrelated scales): set normalize_on > 0")
    split = split_by_prompt(data, config.eval_fraction, seed=config.seed) if config.eval_fraction else None
    train_ds, eval_ds = (split["train"], split["test"]) if split else (data, None)
    output = Path(config.output_dir)
    metrics = stage_metrics(metrics, output, "reward")
    results, train_sets, step, shared = [], [], 0, None
    for i in range(members):
        member_data = bootstrap_by_prompt(train_ds, seed=config.seed + i) if bootstrap else train_ds
        member_config = copied(config)
        member_config.output_dir = str(output / MEMBERS / str(i))
        member_config.seed = config.seed + i
        # held out above, once for all members; normalised below, on the same responses for all members
        member_config.eval_fraction = 0
        member_config.eval_strategy = "no"
        member_config.normalize_on = 0
        metrics.log_event("member", f"member {i} of {members}: {len(member_data)} pairs"
                          f"{' (bootstrap resample by prompt)' if bootstrap else ''}, seed {member_config.seed}",
                          step=step, stage="reward", member=i, pairs=len(member_data), seed=member_config.seed)
        member_log = _forwarding_log(metrics, i, step)
        result = train_reward_model(member_data, member_config, model=model, metrics=member_log)
        if isinstance(result.reward_model.model, PeftModel):  # its own base goes now: reloaded below on one base
            shared = {"batch_size": result.reward_model.batch_size, "device": as_model_config(model).device,
                      "mixed_precision": result.reward_model.mixed_precision}
            result.reward_model = None
        results.append(result)
        train_sets.append(member_data)
        step += _last_step(member_log)
    trained = ([r.reward_model for r in results] if shared is None  # full models: kept as trained
               else load_members([r.model_path for r in results], **shared))  # K adapters on one base
    ensemble = RewardEnsemble(trained, objective=objective, uncertainty_weight=uncertainty_weight)
    fit_normalization_on_pairs(ensemble, train_ds, config.normalize_on)
    final = ensemble.save(output / FINAL)
    for i in range(members):
        _drop_member_copy(output / MEMBERS / str(i))
    metrics.log_event("saved", f"reward ensemble of {members} members saved to {final}", step=step, stage="reward")
    if eval_ds is not None:
        from rlhf_widgets.stages.reward.report import reward_report  # (here: report imports this module)

        report = reward_report(ensemble, eval_ds)
        metrics.log({"eval_accuracy": report["accuracy"], "eval_disagreement": report["ensemble"]["disagreement"],
                     **{f"eval_accuracy/member_{i}": a for i, a in enumerate(report["ensemble"]["member_accuracy"])}},
                    step=step, stage="reward")
    return RewardEnsembleResult(stage="reward", model_path=final, metrics=metrics,
                                train_seconds=sum(r.train_seconds for r in results), reward_model=ensemble,
                                eval_dataset=eval_ds, train_datasets=train_sets)
