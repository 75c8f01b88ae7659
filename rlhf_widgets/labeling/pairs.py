"""Candidate pairs for labeling: k sampled responses per prompt, paired up, duplicates dropped.

Each side can use its own sampling settings (e.g. a cooler and a hotter temperature) so the two
responses differ; which settings produced each side is kept in the pair's metadata. `prepare_pairs`
fills a `PreferenceStore` with pairs of a policy's samples on sandbox prompts, once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_widgets.generation import SamplingSettings, generate
from rlhf_widgets.labeling.store import PreferenceStore
from rlhf_widgets.models import load_causal_lm
from rlhf_widgets.sandbox import make_prompts

DEFAULT_SIDES = (SamplingSettings(temperature=1.0), SamplingSettings(temperature=0.7))


def generate_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    k: int = 2,
    sides: Sequence[SamplingSettings] = DEFAULT_SIDES,
    *,
    model_name: str = "policy",
    max_pairs_per_prompt: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict]:
    """Sample `k` responses per prompt and return up to `max_pairs_per_prompt` distinct pairs per prompt.

    Response i uses `sides[i % len(sides)]`. Rows are ready for `PreferenceStore.add_pairs`: `prompt`,
    `response_a`, `response_b`, `metadata` (model name and sampling settings of each side). Pairs whose
    two responses are identical (after stripping whitespace) or empty are dropped.
    """
    if k < 2:
        raise ValueError(f"generate_pairs: k={k}; need at least 2 responses per prompt to make a pair")
    if max_pairs_per_prompt < 1:
        raise ValueError(f"generate_pairs: max_pairs_per_prompt={max_pairs_per_prompt}; need at least 1")
    if not sides:
        raise ValueError("generate_pairs: `sides` is empty")
    samples: list[list] = [[] for _ in prompts]
    for i in range(k):
        setting = sides[i % len(sides)]
        outs = generate(model, tokenizer, list(prompts), setting, batch_size=batch_size, seed=seed + i,
                        show_progress=show_progress)
        for j, out in enumerate(outs):
            samples[j].append((out.text, setting, out.ended_with_eos))
    rows = []
    for prompt, responses in zip(prompts, samples, strict=True):
        made, seen = 0, set()
        for (ta, sa, ea), (tb, sb, eb) in itertools.combinations(responses, 2):
            key = frozenset((ta.strip(), tb.strip()))
            empty = not ta.strip() or not tb.strip()
            if made >= max_pairs_per_prompt or empty or len(key) < 2 or key in seen:
                continue
            seen.add(key)
            rows.append({
                "prompt": prompt,
                "response_a": ta,
                "response_b": tb,
                "metadata": {
                    "a": {"model": model_name, "temperature": sa.temperature, "ended_with_eos": ea},
                    "b": {"model": model_name, "temperature": sb.temperature, "ended_with_eos": eb},
                },
            })
            made += 1
    return rows


def prepare_pairs(
    model: str,
    store: PreferenceStore | str | Path,
    n_prompts: int = 64,
    *,
    split: str = "train",
    seed: int = 0,
    k: int = 2,
    pairs_per_prompt: int = 1,
    show_progress: bool = True,
) -> PreferenceStore:
    """Fill `store` with pairs of `model`'s samples on `n_prompts` sandbox prompts, unless it has pairs.

    Idempotent: a store that already holds pairs is returned untouched (the model is not even loaded),
    so re-running a notebook never duplicates pairs or orphans labels. To make new pairs, use a new
    store file.

    Args:
        model: a local checkpoint directory (e.g. the SFT model) or a hub id, loaded with
            `rlhf_widgets.models.load_causal_lm`.
        store: a `PreferenceStore`, or the path of its SQLite file (created, with its parent directory,
            if missing).
        n_prompts: how many prompts from `rlhf_widgets.sandbox.make_prompts` (default 64).
        split: prompt split, "train" (default) or "test".
        seed: seeds the prompts and the sampling (default 0).
        k: samples per prompt (default 2), see `generate_pairs`.
        pairs_per_prompt: pairs per prompt among its k samples, at most (default 1; up to k·(k−1)/2).
            Fewer when samples come out identical or empty. Several comparisons per prompt (InstructGPT
            ranked 4–9 answers) teach a reward model more per sampled answer.
        show_progress: show generation progress bars (default True).
    """
    if not isinstance(store, PreferenceStore):
        Path(store).parent.mkdir(parents=True, exist_ok=True)
        store = PreferenceStore(store)
    if len(store):
        return store
    policy, tokenizer = load_causal_lm(model)
    prompts = [prompt.text for prompt in make_prompts(n_prompts, seed=seed, split=split)]
    rows = generate_pairs(policy, tokenizer, prompts, k=k, model_name=_short_name(model), seed=seed,
                          max_pairs_per_prompt=pairs_per_prompt, show_progress=show_progress)
    store.add_pairs(rows)
    return store


def _short_name(model: str | Path) -> str:
    """A model's name as the panel shows it: a hub id as is, a local path by its last two parts."""
    path = Path(model)
    return "/".join(path.parts[-2:]) if path.exists() else str(model)
