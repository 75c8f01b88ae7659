"""LabelingSession: the labeling queue of one annotator, in plain Python (no widgets).

The session shows one pair at a time with its sides in a seeded random order (so position bias
averages out), turns "left"/"right" back into the stored, un-randomised "a"/"b", measures how long
each label took, and prefetches the next pair on a worker thread so it is ready the moment a label
is recorded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from rlhf_widgets.labeling.store import Choice, Label, Pair, PreferenceStore, Prompt

Side = Literal["left", "right", "tie", "skip"]
SIDES: tuple[str, ...] = ("left", "right", "tie", "skip")


@dataclass(frozen=True)
class ShownPair:
    """A pair as displayed: `swapped` means response_b is on the left.

    `left_source` / `right_source` describe where each displayed side came from (its metadata
    `source_key`, e.g. the model name); None in evaluation mode (blind) or when the metadata lacks it.
    """

    pair: Pair
    swapped: bool
    left_source: str | None
    right_source: str | None

    @property
    def id(self) -> int:
        return self.pair.id

    @property
    def prompt(self) -> Prompt:
        return self.pair.prompt

    @property
    def left(self) -> str:
        return self.pair.response_b if self.swapped else self.pair.response_a

    @property
    def right(self) -> str:
        return self.pair.response_a if self.swapped else self.pair.response_b

    def choice(self, side: Side) -> Choice:
        """The stored choice for a displayed side: "left" is "b" when swapped; "tie"/"skip" unchanged."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        if side in ("tie", "skip"):
            return side
        return "b" if (side == "left") == self.swapped else "a"


@dataclass(frozen=True)
class Tally:
    """Wins per source over an annotator's current labels.

    A side's source is its metadata `source_key` value, or "response_a" / "response_b" when missing.
    """

    wins: dict[str, int]
    """source → pairs where that source's response was preferred (0 for sources that never won)"""
    ties: int
    skips: int

    def win_rate(self, source: str) -> float:
        """(wins + ties / 2) / (decided pairs + ties) for `source`; NaN when nothing is decided."""
        total = sum(self.wins.values()) + self.ties
        return (self.wins.get(source, 0) + self.ties / 2) / total if total else float("nan")


class LabelingSession:
    """One annotator's labeling queue over a `PreferenceStore`.

    Args:
        store: where pairs come from and labels go.
        annotator: the name labels are recorded under (default "human").
        seed: seeds the per-pair side order (default 0); a pair is always shown the same way for a seed.
        evaluation: blind comparison of two policies (default False): sources are hidden from
            `current`; use `tally()` for wins per source.
        only_unlabeled_by_anyone: queue only pairs nobody has labeled yet (default False: pairs this
            annotator has not labeled).
        source_key: the key in each side's metadata (`metadata["a"][source_key]`) naming its source
            (default "model").
    """

    def __init__(
        self,
        store: PreferenceStore,
        annotator: str = "human",
        seed: int = 0,
        evaluation: bool = False,
        only_unlabeled_by_anyone: bool = False,
        source_key: str = "model",
    ) -> None:
        if not isinstance(annotator, str) or not annotator.strip():
            raise ValueError(f"annotator must be a non-empty string, got {annotator!r}")
        self.store = store
        self.annotator = annotator
        self.seed = seed
        self.evaluation = evaluation
        self.only_unlabeled_by_anyone = only_unlabeled_by_anyone
        self.source_key = source_key
        self._callbacks: list[Callable[[Label], Any]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhfw-prefetch")
        self._current: ShownPair | None = None
        self._shown_at = time.monotonic()
        self._show(store.next_pair(annotator, only_unlabeled_by_anyone))
        self._upcoming = self._prefetch()

    # ------------------------------------------------------------------ queue
    @property
    def current(self) -> ShownPair | None:
        """The pair on screen, or None when the queue is empty."""
        return self._current

    @property
    def done(self) -> bool:
        """True when there is nothing left to label."""
        return self._current is None

    @property
    def progress(self) -> tuple[int, int]:
        """(pairs this annotator has labeled — skips included, number of pairs)."""
        return self.store.progress(self.annotator)

    def choose(self, side: Side, note: str | None = None) -> Label:
        """Label the current pair and move on; returns the stored label.

        Args:
            side: "left" or "right" (the better response as displayed), "tie" or "skip".
            note: optional remark stored with the label (default None; blank counts as None).
        """
        shown = self._current
        if shown is None:
            raise RuntimeError("nothing to label: the queue is empty")
        choice = shown.choice(side)
        label = self.store.record(
            shown.id, choice, self.annotator, note=(note or "").strip() or None,
            shown_swapped=shown.swapped, latency_s=time.monotonic() - self._shown_at,
        )
        self._show(self._upcoming.result())
        self._upcoming = self._prefetch()
        for callback in self._callbacks:
            callback(label)
        return label

    def undo(self) -> Label | None:
        """Undo this annotator's latest label and show its pair again; returns it (None: nothing to undo)."""
        label = self.store.undo(self.annotator)
        if label is None:
            return None
        self._show(self.store.get_pair(label.pair_id))
        self._upcoming = self._prefetch()
        return label

    def on_submit(self, callback: Callable[[Label], Any]) -> None:
        """Call `callback(label)` after every `choose`."""
        self._callbacks.append(callback)

    def tally(self) -> Tally:
        """Wins per source over this annotator's current labels (sources without a win count 0)."""
        pairs = {pair.id: pair for pair in self.store.pairs()}
        wins: dict[str, int] = {}
        ties = skips = 0
        for label in self.store.labels(self.annotator):
            metadata = pairs[label.pair_id].metadata
            source = {side: self._source(metadata, side) or f"response_{side}" for side in ("a", "b")}
            for name in source.values():
                wins.setdefault(name, 0)
            if label.choice in ("a", "b"):
                wins[source[label.choice]] += 1
            ties += label.choice == "tie"
            skips += label.choice == "skip"
        return Tally(wins=wins, ties=ties, skips=skips)

    def close(self) -> None:
        """Stop the prefetch worker (the store stays open)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _show(self, pair: Pair | None) -> None:
        if pair is None:
            self._current = None
        else:
            swapped = random.Random(f"{self.seed}/{pair.id}").random() < 0.5
            sources = (None, None) if self.evaluation else (
                self._source(pair.metadata, "a"), self._source(pair.metadata, "b")
            )
            self._current = ShownPair(pair, swapped, *(sources[::-1] if swapped else sources))
        self._shown_at = time.monotonic()

    def _prefetch(self) -> Future[Pair | None]:
        """Start fetching the pair after the current one (the current one is excluded)."""
        exclude = () if self._current is None else (self._current.id,)
        return self._executor.submit(
            self.store.next_pair, self.annotator, self.only_unlabeled_by_anyone, exclude
        )

    def _source(self, metadata: dict[str, Any], side: str) -> str | None:
        """metadata[side][source_key] as text, None when the metadata does not say."""
        entry = metadata.get(side)
        if isinstance(entry, dict) and self.source_key in entry:
            return str(entry[self.source_key])
        return None
