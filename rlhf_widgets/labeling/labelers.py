"""AI labelers: fill a PreferenceStore with labels from any `labeler(prompt, a, b)` instead of a human.

The labeler protocol is a callable `(prompt, response_a, response_b) -> "a" | "b" | "tie" | "skip"`;
the sandbox's `SimulatedAnnotator` is one, `RewardModelLabeler` wraps any reward model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rlhf_widgets.labeling.records import Choice
from rlhf_widgets.labeling.store import PreferenceStore
from rlhf_widgets.runtime.quiet import progress
from rlhf_widgets.runtime.types import Prompt

if TYPE_CHECKING:
    from rlhf_widgets.runtime.reward_protocol import RewardFunction

Labeler = Callable[[Prompt, str, str], str]


class JudgeReward:
    """A pairwise judge as a reward function: each response is judged against a reference answer to the same
    prompt — 1 if the judge prefers it, ½ for a tie or a skip, 0 if it prefers the reference.

    Args:
        judge: `(prompt, response_a, response_b) -> "a" | "b" | "tie" | "skip"`; the response under test is
            always shown as "a" (a judge that cancels position bias asks both orders itself).
        reference: `reference(prompts) -> answers`, e.g. an SFT policy's sampler, called once per batch.
    """

    def __init__(self, judge: Labeler, reference: Callable[[list[Prompt]], Sequence[str]]) -> None:
        self.judge, self.reference = judge, reference
        self.__name__ = f"judge_{getattr(judge, '__name__', None) or type(judge).__name__}"

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        references = list(self.reference(list(prompts)))
        if len(references) != len(prompts):
            raise ValueError(f"JudgeReward: the reference gave {len(references)} answers for {len(prompts)} prompts")
        value = {"a": 1.0, "b": 0.0, "tie": 0.5, "skip": 0.5}
        scores = []
        for prompt, response, ref in zip(prompts, responses, references, strict=True):
            verdict = self.judge(prompt, response, ref)
            if verdict not in value:
                raise ValueError(f"JudgeReward: the judge answered {verdict!r}; expected 'a', 'b', 'tie' or 'skip'")
            scores.append(value[verdict])
        return scores


class RewardModelLabeler:
    """Labels a pair by comparing the reward of both responses to the prompt.

    Args:
        reward_model: a reward function `(prompts, responses) -> scores` (a `RewardModel`, `sandbox.gold_reward`).
        tie_margin: score differences at or below this are a "tie" (default 0.0: only exact equality).
    """

    def __init__(self, reward_model: RewardFunction, tie_margin: float = 0.0) -> None:
        if tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
        self.reward_model = reward_model
        self.tie_margin = tie_margin

    def __call__(self, prompt: Prompt, a: str, b: str) -> Choice:
        # torch: loaded only when a reward model labels
        from rlhf_widgets.runtime.reward_protocol import score_responses

        score_a, score_b = score_responses(self.reward_model, [prompt, prompt], [a, b]).tolist()
        if abs(score_a - score_b) <= self.tie_margin:
            return "tie"
        return "a" if score_a > score_b else "b"


def label_with(
    store: PreferenceStore,
    labeler: Labeler,
    annotator: str,
    limit: int | None = None,
    show_progress: bool = True,
    *,
    only_unlabeled_by_anyone: bool = False,
) -> int:
    """Label the pairs `annotator` has not labeled yet (insertion order) with `labeler`; returns how many.

    Args:
        store: pairs in, labels out (each label recorded as soon as it is made).
        labeler: `(prompt, response_a, response_b) -> "a" | "b" | "tie" | "skip"`; anything else raises
            ValueError from `PreferenceStore.record`.
        annotator: the name the labels are recorded under, e.g. "simulated" or "rm-v1".
        limit: label at most this many pairs (default None: all remaining).
        show_progress: show a tqdm progress bar (default True).
        only_unlabeled_by_anyone: leave pairs that anyone (e.g. a human) has labeled (default False) — an AI
            labeler filling what the human left.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    done, total = store.progress(annotator)
    todo = total - done if limit is None else min(limit, total - done)
    labeled = 0
    with progress(total=todo, desc=f"labeling as {annotator}", unit="pair", disable=not show_progress) as bar:
        while labeled < todo and (pair := store.next_pair(annotator, only_unlabeled_by_anyone)) is not None:
            store.record(pair.id, labeler(pair.prompt, pair.response_a, pair.response_b), annotator)
            labeled += 1
            bar.update()
    return labeled
