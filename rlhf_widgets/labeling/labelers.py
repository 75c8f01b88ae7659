"""AI labelers: fill a PreferenceStore with labels from any `labeler(prompt, a, b)` instead of a human.

The labeler protocol is a callable `(prompt, response_a, response_b) -> "a" | "b" | "tie" | "skip"`;
the sandbox's `SimulatedAnnotator` is one; the judges (`rlhf_widgets.judges`: an LLM judge, a reward model,
the sandbox's gold) are others.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from rlhf_widgets.judges import Labeler, RewardModelJudge, Scorer
from rlhf_widgets.labeling.store import PreferenceStore

RewardModelLabeler = RewardModelJudge
"""The reward-model judge under its earlier name (`rlhf_widgets.judges.RewardModelJudge`)."""

__all__ = ["Labeler", "RewardModelLabeler", "Scorer", "label_with"]


def label_with(
    store: PreferenceStore,
    labeler: Labeler,
    annotator: str,
    limit: int | None = None,
    show_progress: bool = True,
) -> int:
    """Label the pairs `annotator` has not labeled yet (insertion order) with `labeler`; returns how many.

    Args:
        store: pairs in, labels out (each label recorded as soon as it is made).
        labeler: `(prompt, response_a, response_b) -> "a" | "b" | "tie" | "skip"`; anything else raises
            ValueError from `PreferenceStore.record`.
        annotator: the name the labels are recorded under, e.g. "simulated" or "rm-v1".
        limit: label at most this many pairs (default None: all remaining).
        show_progress: show a tqdm progress bar (default True).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    done, total = store.progress(annotator)
    todo = total - done if limit is None else min(limit, total - done)
    labeled = 0
    with tqdm(total=todo, desc=f"labeling as {annotator}", unit="pair", disable=not show_progress) as bar:
        while labeled < todo and (pair := store.next_pair(annotator)) is not None:
            store.record(pair.id, labeler(pair.prompt, pair.response_a, pair.response_b), annotator)
            labeled += 1
            bar.update()
    return labeled
