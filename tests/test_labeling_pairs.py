"""prepare_pairs fills a store once (re-running adds nothing); gold_preference follows the gold scorer."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from rlhf_widgets.labeling import PreferenceStore, prepare_pairs
from rlhf_widgets.sandbox import (
    base_model_path,
    gold_preference,
    ideal_response,
    make_prompts,
    random_response,
)


def test_prepare_pairs_fills_the_store_once(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "labels.sqlite"  # the parent directory does not exist yet
    model = str(base_model_path())
    with prepare_pairs("sandbox", path, model=model, n_prompts=8, show_progress=False) as store:
        first = store.pairs()
    assert 0 < len(first) <= 8
    assert all(pair.response_a.strip() != pair.response_b.strip() for pair in first)
    assert len({(p.prompt, p.response_a, p.response_b) for p in first}) == len(first)
    assert len({pair.prompt for pair in first}) == len(first)  # at most one pair per prompt

    # re-running the notebook
    with prepare_pairs("sandbox", path, model=model, n_prompts=8, show_progress=False) as store:
        assert store.pairs() == first
    with PreferenceStore(path) as store:  # a store object works as well as a path, and is returned as is
        assert prepare_pairs("sandbox", store, model="no/such-model", n_prompts=8) is store  # not even loaded
        assert len(store) == len(first)


def test_gold_preference_picks_the_higher_gold_score() -> None:
    prompt = make_prompts(1, seed=3)[0]
    good, bad = ideal_response(prompt), random_response(prompt, random.Random(0))
    assert gold_preference(prompt, good, bad) == "a"
    assert gold_preference(prompt, bad, good) == "b"
    assert gold_preference(prompt.text, good, good) == "tie"


def test_several_pairs_per_prompt_among_k_answers(tmp_path: Path) -> None:
    model = str(base_model_path())
    with prepare_pairs("sandbox", tmp_path / "labels.sqlite", model=model, n_prompts=6, k=4, pairs_per_prompt=3,
                       show_progress=False) as store:
        pairs = store.pairs()
    per_prompt = Counter(pair.prompt for pair in pairs)
    assert max(per_prompt.values()) == 3 and len(per_prompt) == 6, per_prompt
    assert len({frozenset((p.prompt, p.response_a, p.response_b)) for p in pairs}) == len(pairs)  # all distinct
    for prompt in per_prompt:  # the pairs of a prompt are drawn among (at most) 4 answers
        answers = {a for p in pairs if p.prompt == prompt for a in (p.response_a, p.response_b)}
        assert 2 <= len(answers) <= 4
    with pytest.raises(ValueError, match="max_pairs_per_prompt=0"):
        prepare_pairs("sandbox", tmp_path / "other.sqlite", model=model, n_prompts=2, pairs_per_prompt=0,
                      show_progress=False)
