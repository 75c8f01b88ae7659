"""Policies against each other on held-out prompts: win rates under a judge (gold, a reward model), KL to a
reference model on the policy's own samples, length; and blind pairs for a human evaluator."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlhf_widgets.labeling import PreferenceStore
from rlhf_widgets.runtime.data import as_messages, prompt_list, words
from rlhf_widgets.runtime.generation import generate
from rlhf_widgets.runtime.logprobs import logprobs_from_logits
from rlhf_widgets.runtime.models import ModelLike, load_causal_lm
from rlhf_widgets.runtime.reward_protocol import RewardFunction, score_responses

if TYPE_CHECKING:
    import pandas as pd

    from rlhf_widgets.evaluation.probes import ProbeReport


def win_rate(
    prompts: Sequence[str],
    responses: Sequence[str],
    baseline: Sequence[str],
    judge: RewardFunction,
) -> dict:
    """Share of prompts where `responses` beat `baseline` under `judge` (ties count ½).

    `judge` is a reward function `(prompts, responses) -> scores` (`sandbox.gold_reward`, a `RewardModel`, …).
    Returns win_rate, wins, ties, losses, n, and the mean judge score of each side.
    """
    if not len(prompts) == len(responses) == len(baseline):
        raise ValueError(f"win_rate: {len(prompts)} prompts, {len(responses)} responses, {len(baseline)} baseline")
    a = score_responses(judge, prompts, responses).tolist()
    b = score_responses(judge, prompts, baseline).tolist()
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    ties = sum(x == y for x, y in zip(a, b, strict=True))
    n = len(a)
    return {"win_rate": (wins + ties / 2) / n if n else float("nan"), "wins": wins, "ties": ties,
            "losses": n - wins - ties, "n": n, "mean_score": float(np.mean(a)),
            "baseline_mean_score": float(np.mean(b))}


@torch.no_grad()
def sequence_kl(policy, reference, tokenizer, prompts: Sequence, responses: Sequence[str],
                batch_size: int = 32) -> torch.Tensor:
    """KL(policy ‖ reference) of each response (sum over its tokens of log π − log π_ref), shape (N,).

    Unbiased for the sequence KL when `responses` are samples of `policy` at temperature 1.
    """
    out = []
    device = next(policy.parameters()).device
    for start in range(0, len(prompts), batch_size):
        rows = []
        for prompt, response in zip(prompts[start:start + batch_size], responses[start:start + batch_size],
                                    strict=True):
            msgs = as_messages(prompt)
            query = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)
            full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}],
                                                 tokenize=True, return_dict=True)
            rows.append((full["input_ids"], len(query["input_ids"])))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        resp = torch.zeros_like(ids, dtype=torch.float)
        for i, (row, q) in enumerate(rows):  # right padding; position ids are then the defaults
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            resp[i, q : len(row)] = 1
        ids, mask, resp = ids.to(device), mask.to(device), resp.to(device)
        lp = logprobs_from_logits(policy(input_ids=ids, attention_mask=mask).logits[:, :-1], ids[:, 1:])
        lr = logprobs_from_logits(reference(input_ids=ids, attention_mask=mask).logits[:, :-1], ids[:, 1:])
        out.append(((lp - lr) * resp[:, 1:]).sum(1).float().cpu())
    return torch.cat(out)


def sample_policy(policy: ModelLike | Callable[[list], Sequence[str]], prompts: Sequence, seed: int = 0,
                  settings=None, batch_size: int = 32) -> list[str]:
    """Responses of `policy` to `prompts`: a model (anything `models.ModelLike` names; sampled at temperature 1)
    or any `callable(prompts) -> list[str]` (e.g. a `BestOfNSampler`)."""
    if _is_sampler(policy):
        out = list(policy(list(prompts)))
        if len(out) != len(prompts):
            raise ValueError(f"sample_policy: the callable returned {len(out)} responses for {len(prompts)} prompts")
        return out

    return _sample_loaded(*load_causal_lm(policy), prompts, seed, settings, batch_size)


def _is_sampler(policy: object) -> bool:
    """A `callable(prompts) -> responses` rather than a model (a loaded torch model is callable too)."""
    return callable(policy) and not isinstance(policy, (torch.nn.Module, tuple))


def _sample_loaded(model, tokenizer, prompts: Sequence, seed: int, settings=None, batch_size: int = 32) -> list[str]:
    return [g.text for g in generate(model, tokenizer, list(prompts), settings, batch_size=batch_size, seed=seed)]


@dataclass
class PolicyComparison:
    """What `measure_policies` measured: the table (one row per policy), and what it was computed from."""

    table: pd.DataFrame
    responses: dict[str, list[str]]
    """policy name → its response to each prompt"""
    probes: dict[str, ProbeReport] = field(default_factory=dict)
    """policy name → its failure-mode probe report (empty without probes)"""

    def as_table(self) -> pd.DataFrame:
        """The table, carrying the responses (and probe reports) in `attrs` as `compare_policies` returns it."""
        table = self.table
        table.attrs["responses"] = self.responses  # name → responses, e.g. for a blind human comparison
        if self.probes:
            table.attrs["probes"] = self.probes
        return table


def compare_policies(policies: dict, prompts: Sequence[str], baseline: str, **options: Any) -> pd.DataFrame:
    """A comparison table (pandas DataFrame, one row per policy) on the same held-out prompts: `measure_policies`'
    table, with every policy's responses in `table.attrs["responses"]` (name → list), e.g. for `evaluation_store`,
    and with probes each policy's `ProbeReport` in `table.attrs["probes"]` (name → report). `options` (`gold=`,
    `reward_model=`, `kl_reference=`, `seed=`, `probes=`, `probe_classifier=`) and the columns: see
    `measure_policies`."""
    return measure_policies(policies, prompts, baseline, **options).as_table()


def measure_policies(
    policies: dict,
    prompts: Sequence[str],
    baseline: str,
    gold: RewardFunction | None = None,
    reward_model: RewardFunction | None = None,
    kl_reference: ModelLike | None = None,
    seed: int = 0,
    probes: str | Path | Iterable | None = None,
    probe_classifier: Callable[[str, str], str] | None = None,
) -> PolicyComparison:
    """Every policy sampled on the same held-out prompts and measured: a `PolicyComparison`.

    Args:
        policies: name → a model (`models.ModelLike`: a directory, hub id, `ModelConfig`, loaded model) or a
            `callable(prompts) -> responses` (e.g. a `BestOfNSampler`).
        prompts: held-out prompts.
        baseline: the name in `policies` every win rate is measured against (e.g. "SFT").
        gold: a held-out reward function, e.g. the sandbox's `gold_reward` (adds `gold_win_rate`, `gold_mean`).
        reward_model: the reward function trained on (a `RewardModel`; adds `rm_win_rate`, `rm_mean`).
        kl_reference: a model; adds `kl_to_reference`, the mean sequence KL of each model policy's own samples to
            it (nats); a callable reports its `kl` attribute if it has one (best-of-N: log N − (N−1)/N), else NaN.
        seed: sampling seed (the baseline is sampled with `seed`, the others with `seed + 1`).
        probes: a failure-mode probe set (`evaluation.probes.load_probes`: "sandbox", a file, rows); adds the
            columns `sycophancy_rate`, `refusal_rate`, `correct_refusal_rate` and `probe_words` (default None: none).
        probe_classifier: labels each probe answer, `(prompt, response) -> label` (default: the sandbox's clause
            matcher, for sandbox probes; see `evaluation.probes`).

    Columns: gold/RM win rate over the baseline (ties ½), mean scores, KL, mean words, the share of
    non-empty responses, the probe rates when asked for, and the first response as an example.
    """
    import pandas as pd

    if baseline not in policies:
        raise ValueError(f"compare_policies: baseline {baseline!r} is not one of {list(policies)}")

    prompts = prompt_list(prompts)
    ref = load_causal_lm(kl_reference) if kl_reference is not None else None
    probe_set, probe_reports = None, {}
    if probes is not None:
        # (here, not at the top: probes imports this module)
        from rlhf_widgets.evaluation.probes import default_classifier, load_probes, probe_report

        probe_set = load_probes(probes)
        probe_classifier = probe_classifier or default_classifier(probe_set)
    # one pass per policy: load it once, sample, and measure its KL while it is in memory
    responses, kls = {}, {}
    for name, policy in policies.items():
        policy_seed = seed if name == baseline else seed + 1
        if _is_sampler(policy):  # e.g. best-of-N: its analytic KL when it knows one
            if probe_set is not None:  # probes first: a sampler's state (best-of-N's `last`) is then the prompts'
                answers = sample_policy(policy, [p.prompt for p in probe_set], seed=policy_seed)
                probe_reports[name] = probe_report(probe_set, answers, probe_classifier)
            responses[name] = sample_policy(policy, prompts, seed=policy_seed)
            kls[name] = float(getattr(policy, "kl", float("nan")))
            continue
        model, tokenizer = load_causal_lm(policy)
        responses[name] = _sample_loaded(model, tokenizer, prompts, policy_seed)
        if ref is not None:
            kls[name] = float(sequence_kl(model, ref[0], ref[1], prompts, responses[name]).mean())
        if probe_set is not None:
            answers = _sample_loaded(model, tokenizer, [p.prompt for p in probe_set], policy_seed)
            probe_reports[name] = probe_report(probe_set, answers, probe_classifier)
        del model
    base = responses[baseline]
    rows = {}
    for name, resp in responses.items():
        row: dict = {}
        if gold is not None:
            wr = win_rate(prompts, resp, base, gold)
            row["gold_win_rate"], row["gold_mean"] = wr["win_rate"], wr["mean_score"]
        if reward_model is not None:
            wr = win_rate(prompts, resp, base, reward_model)
            row["rm_win_rate"], row["rm_mean"] = wr["win_rate"], wr["mean_score"]
        if ref is not None:
            row["kl_to_reference"] = kls[name]
        row["mean_words"] = float(np.mean([words(r) for r in resp]))
        row["non_empty"] = float(np.mean([bool(r.strip()) for r in resp]))
        if name in probe_reports:
            row.update(probe_reports[name].rates)
        row["example"] = resp[0]
        rows[name] = row
    return PolicyComparison(pd.DataFrame.from_dict(rows, orient="index"), responses, probe_reports)


def evaluation_store(path, prompts: Sequence[str], candidate: Sequence[str], baseline: Sequence[str],
                     candidate_name: str, baseline_name: str):
    """A `PreferenceStore` of blind pairs (candidate vs baseline per prompt) for human evaluation.

    Label it with `LabelingPanel(store, evaluation=True)` (sources hidden, sides randomised); the
    session's `tally()` then gives the candidate's win rate. Pairs are added only to an empty store,
    so re-running a notebook does not duplicate them; prompts where either response is empty are
    left out (nothing to judge).
    """
    store = PreferenceStore(path)
    if len(store) == 0:
        store.add_pairs(
            {"prompt": p, "response_a": a, "response_b": b,
             "metadata": {"a": {"model": candidate_name}, "b": {"model": baseline_name}}}
            for p, a, b in zip(prompts, candidate, baseline, strict=True) if a.strip() and b.strip()
        )
    return store
