"""Candidate pairs for labeling: k sampled responses per prompt, paired up, duplicates dropped.

Each side can use its own sampling settings (e.g. a cooler and a hotter temperature) so the two
responses differ; which settings produced each side is kept in the pair's metadata. `prepare_pairs`
fills a `PreferenceStore` with pairs of a policy's samples on sandbox prompts, once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from rlhf_widgets.labeling.backends import is_postgres_url
from rlhf_widgets.labeling.store import PreferenceStore
from rlhf_widgets.runtime.data import SANDBOX, PromptSource, load_prompts
from rlhf_widgets.runtime.generation import SamplingSettings, generate
from rlhf_widgets.runtime.models import ModelLike, load_causal_lm, model_name

DEFAULT_SIDES = (SamplingSettings(temperature=1.0), SamplingSettings(temperature=0.7))


def generate_pairs(
    prompts: Sequence,
    *,
    model: ModelLike,
    k: int = 2,
    sides: Sequence[SamplingSettings] = DEFAULT_SIDES,
    name: str | None = None,
    max_pairs_per_prompt: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict]:
    """Sample `k` responses per prompt from `model` and return up to `max_pairs_per_prompt` distinct pairs per
    prompt.

    Response i uses `sides[i % len(sides)]`. Rows are ready for `PreferenceStore.add_pairs`: `prompt`,
    `response_a`, `response_b`, `metadata` (the model's `name` — default `models.model_name(model)` — and the
    sampling settings of each side). Pairs whose two responses are identical (after stripping whitespace) or
    empty are dropped.
    """
    if k < 2:
        raise ValueError(f"generate_pairs: k={k}; need at least 2 responses per prompt to make a pair")
    if max_pairs_per_prompt < 1:
        raise ValueError(f"generate_pairs: max_pairs_per_prompt={max_pairs_per_prompt}; need at least 1")
    if not sides:
        raise ValueError("generate_pairs: `sides` is empty")
    name = name or model_name(model)
    loaded, tokenizer = load_causal_lm(model)
    samples: list[list] = [[] for _ in prompts]
    for i in range(k):
        setting = sides[i % len(sides)]
        outs = generate(loaded, tokenizer, list(prompts), setting, batch_size=batch_size, seed=seed + i,
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
                    "a": {"model": name, "temperature": sa.temperature, "ended_with_eos": ea},
                    "b": {"model": name, "temperature": sb.temperature, "ended_with_eos": eb},
                },
            })
            made += 1
    return rows


def prepare_pairs(
    prompts: PromptSource,
    store: PreferenceStore | str | Path,
    *,
    model: ModelLike,
    n_prompts: int | None = None,
    split: str = "train",
    seed: int = 0,
    k: int = 2,
    pairs_per_prompt: int = 1,
    show_progress: bool = True,
) -> PreferenceStore:
    """Fill `store` with pairs of `model`'s samples on `prompts`, unless it already has pairs.

    Idempotent: a store that already holds pairs is returned untouched (the model is not even loaded), so
    re-running a notebook never duplicates pairs or orphans labels. To make new pairs, use a new store file.

    Args:
        prompts: your prompts: a list (strings or chat messages), or any source `data.load_prompts` reads — a
            file, a dataset, a hub id, or "sandbox" (the sandbox's `split`, "train" or "test", drawn with `seed`).
        n_prompts: use the first `n_prompts` prompts (default None: all; for the sandbox, how many to make).
        store: a `PreferenceStore`, the path of its SQLite file (created, with its parent directory, if missing), or
            a `postgresql://` URL.
        model: the policy whose answers are compared, usually the SFT model (`models.ModelLike`).
        seed: seeds the sampling (and the sandbox prompts).
        k: samples per prompt (default 2), see `generate_pairs`.
        pairs_per_prompt: pairs per prompt among its k samples, at most (default 1; up to k·(k−1)/2). Fewer when
            samples come out identical or empty. Several comparisons per prompt (InstructGPT ranked 4–9 answers)
            teach a reward model more per sampled answer.
        show_progress: show generation progress bars (default True).
    """
    if not isinstance(store, PreferenceStore):
        if not is_postgres_url(store):
            Path(store).parent.mkdir(parents=True, exist_ok=True)
        store = PreferenceStore(store)
    if len(store):
        return store
    if isinstance(prompts, (list, tuple)):
        prompts = list(prompts)[:n_prompts]
    else:
        sandbox_seed = {"seed": seed} if prompts == SANDBOX else {}
        prompts = load_prompts(prompts, split=split, n=n_prompts, **sandbox_seed)
    rows = generate_pairs(prompts, model=model, k=k, seed=seed, max_pairs_per_prompt=pairs_per_prompt,
                          show_progress=show_progress)
    store.add_pairs(rows, if_empty=True)  # several annotators preparing one shared store at once: one set of pairs
    return store
