"""Candidate pairs for labeling: k sampled responses per prompt, paired up, duplicates dropped.

Each side can use its own sampling settings (e.g. a cooler and a hotter temperature) so the two
responses differ; which settings produced each side is kept in the pair's metadata.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_widgets.generation import SamplingSettings, generate

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
            if made >= max_pairs_per_prompt or not ta.strip() or not tb.strip() or len(key) < 2 or key in seen:
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
