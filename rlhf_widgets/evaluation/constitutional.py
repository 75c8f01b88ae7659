"""Constitutional AI's supervised step: a chat model critiques and revises answers against written principles,
and the (revised ≻ original) pairs are stored as an AI labeler's labels."""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlhf_widgets.evaluation.judges import checked_pairs
from rlhf_widgets.runtime.data import as_messages
from rlhf_widgets.runtime.generation import SamplingSettings, generate
from rlhf_widgets.runtime.models import load_chat_model

if TYPE_CHECKING:
    from rlhf_widgets.labeling.store import PreferenceStore
    from rlhf_widgets.runtime.generation import SamplingSettings
    from rlhf_widgets.runtime.types import Prompt


CRITIQUE_REQUEST = (
    "Critique your previous answer against this principle: {principle}\n"
    "Say concretely what in the answer goes against the principle, if anything. Do not rewrite the answer yet."
)
"""The user turn that asks for a critique; `{principle}` is one of the principles."""
REVISION_REQUEST = (
    "Now rewrite your answer so that it follows the principle ({principle}) and fixes what your critique "
    "found. Reply with the rewritten answer only."
)
"""The user turn that asks for the revision, after the critique."""


@dataclass(frozen=True)
class RevisionStep:
    """One principle's critique and the revision it led to."""

    principle: str
    critique: str
    revision: str
    """the model's rewrite ("" if it produced none; the answer then stays as it was)"""


@dataclass(frozen=True)
class Revision:
    """An answer before and after critique → revise against every principle in turn."""

    prompt: Prompt
    original: str
    revised: str
    """the last non-empty revision, or the original when the model never produced one"""
    steps: tuple[RevisionStep, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        """Whether the revision differs from the original (ignoring surrounding whitespace)."""
        return self.revised.strip() != self.original.strip()


def critique_and_revise(
    prompts: Sequence[Prompt], responses: Sequence[str], principles: Sequence[str], *, model: Any,
    settings: SamplingSettings | None = None, seed: int = 0,
    batch_size: int = 16, critique_request: str = CRITIQUE_REQUEST, revision_request: str = REVISION_REQUEST,
) -> list[Revision]:
    """Constitutional AI's supervised step (Bai et al. 2022): a chat model critiques each answer against a
    written principle, then rewrites it; repeated for every principle in turn, each on the latest answer.

    The conversation the model sees is the prompt, the answer as its own assistant turn, the critique
    request, its critique, and the revision request. Bai et al. draw one principle at random per round;
    pass a shuffled subset to do the same.

    It needs a model that follows instructions (a 0.5B+ instruct model at least). On the sandbox's 4M
    model — trained only to answer support requests — the "critiques" and "revisions" are noise: it cannot
    read a principle, so the revised answers are other samples of its usual replies, no better than the
    originals. There the code runs (and tests run it) but shows nothing about Constitutional AI.

    Args:
        prompts, responses: the answers to revise, one per prompt.
        principles: a list of non-empty strings, e.g. "Do not promise what the company cannot do.".
        model: the chat model that critiques and revises: a hub id, a local path, a `ModelConfig`, or a
            loaded `(model, tokenizer)` pair — see `runtime.models.load_chat_model`.
        settings: sampling of critiques and revisions (default greedy, up to 256 new tokens).
        seed: sampling seed (default 0).
        batch_size: conversations per generate call (default 16).
        critique_request, revision_request: the user turns asking for each, with a `{principle}` field.
    """
    if isinstance(principles, str) or not principles:
        raise ValueError("critique_and_revise: principles must be a non-empty list of strings, got "
                         f"{principles!r}")
    for i, principle in enumerate(principles):
        if not isinstance(principle, str) or not principle.strip():
            raise ValueError(f"critique_and_revise: principles[{i}] must be a non-empty string, got {principle!r}")
    for name, request in (("critique_request", critique_request), ("revision_request", revision_request)):
        names = {n for _, n, _, _ in string.Formatter().parse(request) if n is not None}
        if names != {"principle"}:
            raise ValueError(f"critique_and_revise: {name} must use exactly the field {{principle}}, "
                             f"uses {sorted(names)}")
    prompts, responses, _ = checked_pairs(prompts, responses, responses)
    model, tokenizer = load_chat_model(model)
    settings = settings or SamplingSettings(max_new_tokens=256, temperature=0.0)
    current = list(responses)
    steps: list[list[RevisionStep]] = [[] for _ in prompts]
    for round_index, principle in enumerate(principles):
        talks = [as_messages(p) + [{"role": "assistant", "content": answer},
                                   {"role": "user", "content": critique_request.format(principle=principle)}]
                 for p, answer in zip(prompts, current, strict=True)]
        critiques = [g.text for g in generate(model, tokenizer, talks, settings, batch_size=batch_size,
                                              seed=seed + 2 * round_index)]
        talks = [talk + [{"role": "assistant", "content": critique},
                         {"role": "user", "content": revision_request.format(principle=principle)}]
                 for talk, critique in zip(talks, critiques, strict=True)]
        revisions = [g.text for g in generate(model, tokenizer, talks, settings, batch_size=batch_size,
                                              seed=seed + 2 * round_index + 1)]
        for i, (critique, revision) in enumerate(zip(critiques, revisions, strict=True)):
            steps[i].append(RevisionStep(principle, critique, revision))
            if revision.strip():
                current[i] = revision
    return [Revision(prompt, original, revised, tuple(pair_steps))
            for prompt, original, revised, pair_steps in zip(prompts, responses, current, steps, strict=True)]


def record_revisions(store: PreferenceStore, revisions: Sequence[Revision], annotator: str = "constitutional-ai",
                     *, seed: int = 0) -> list[int]:
    """Add (revised, original) pairs to `store` and label the revised side as preferred by `annotator`.

    Revisions that changed nothing (or whose original is empty) are left out. The revised answer goes on a
    random side (seeded), so a later human labeling or an agreement score sees no side pattern;
    `metadata["a"]["source"]` / `metadata["b"]["source"]` say which side is "revised" and which "original",
    and `metadata["principles"]` lists the principles. Returns the new pairs' ids.
    """
    rng = random.Random(seed)
    rows, revised_side = [], []
    for i, revision in enumerate(revisions):
        if not isinstance(revision, Revision):
            raise ValueError(f"record_revisions: revisions[{i}] is a {type(revision).__name__}, not a Revision "
                             "(pass what critique_and_revise returned)")
        if not revision.changed or not revision.original.strip():
            continue
        side = rng.choice("ab")
        answers = {"a": revision.revised, "b": revision.original} if side == "a" else \
            {"a": revision.original, "b": revision.revised}
        sources = {s: {"source": "revised" if s == side else "original"} for s in "ab"}
        rows.append({"prompt": revision.prompt, "response_a": answers["a"], "response_b": answers["b"],
                     "metadata": {**sources, "principles": [step.principle for step in revision.steps]}})
        revised_side.append(side)
    ids = store.add_pairs(rows)
    for pair_id, side in zip(ids, revised_side, strict=True):
        store.record(pair_id, side, annotator=annotator)
    return ids
