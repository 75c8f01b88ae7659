"""Preference datasets once loaded: SFT demonstrations from them, a split that keeps each prompt on one side, and
one pair per prompt."""

from __future__ import annotations

import json

import datasets
import numpy as np

from rlhf_widgets.runtime.data.messages import as_messages, message_text


def demonstrations(pairs: datasets.Dataset) -> datasets.Dataset:
    """SFT demonstrations from preference pairs: each pair's prompt with its chosen answer, as TRL's
    prompt–completion format (one row per distinct prompt and answer). A common first step when the only data are
    preferences (SFT on the preferred answers, then a reward model and RL on the same pairs)."""
    seen: set[str] = set()
    rows = []
    for prompt, chosen in zip(pairs["prompt"], pairs["chosen"], strict=True):
        key = json.dumps([prompt, chosen], sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append({"prompt": as_messages(prompt), "completion": [{"role": "assistant",
                                                                        "content": message_text(chosen)}]})
    return datasets.Dataset.from_list(rows)


def split_by_prompt(dataset: datasets.Dataset, test_size: float, seed: int = 0) -> datasets.DatasetDict:
    """Hold out `test_size` of the *prompts* with all their pairs: `DatasetDict(train=…, test=…)`.

    With several pairs per prompt (K answers, pairs among them, as in InstructGPT) a row-wise split
    would evaluate on answers the model was trained on; this keeps every prompt on one side. A dataset
    without a `prompt` column (or with fewer than two distinct prompts) is split by row, as
    `Dataset.train_test_split` does. The prompts are drawn at random with `seed`; order is kept.
    """
    if not 0 < test_size < 1:
        raise ValueError(f"split_by_prompt: test_size={test_size} must be in (0, 1)")
    keys = [json.dumps(p, sort_keys=True) for p in dataset["prompt"]] if "prompt" in dataset.column_names else []
    unique = sorted(set(keys))
    if len(unique) < 2:
        return dataset.train_test_split(test_size=test_size, seed=seed)
    n_test = min(max(1, round(test_size * len(unique))), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    held = {unique[i] for i in order[:n_test]}
    test = [i for i, key in enumerate(keys) if key in held]
    train = [i for i, key in enumerate(keys) if key not in held]
    return datasets.DatasetDict(train=dataset.select(train), test=dataset.select(test))


def one_pair_per_prompt(dataset: datasets.Dataset) -> datasets.Dataset:
    """The first pair of each prompt, in order (a dataset without a `prompt` column is returned as is)."""
    if "prompt" not in dataset.column_names:
        return dataset
    seen: set[str] = set()
    keep = []
    for i, prompt in enumerate(dataset["prompt"]):
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return dataset.select(keep)
