"""LabelingSession: the labeling queue of one annotator, in plain Python (no widgets).

The session shows one pair at a time with its sides in a seeded random order (so position bias
averages out), turns "left"/"right" back into the stored, un-randomised "a"/"b", measures how long
each label took, and prefetches the next pair on a worker thread so it is ready the moment a label
is recorded.

When the store cannot be reached (a PostgreSQL server restarting, a dropped network), `choose` raises
`StoreUnavailable` and keeps the label as `pending`; `retry()` saves it — under the same request id, so
it is stored once however many tries it takes — and moves on. Nothing is acknowledged before the store
has it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from rlhf_widgets.labeling.backends import StoreUnavailable
from rlhf_widgets.labeling.records import Choice, Label, Pair
from rlhf_widgets.labeling.store import PreferenceStore
from rlhf_widgets.runtime.types import Prompt

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
class PendingLabel:
    """A label chosen while the store could not be reached: not stored yet, kept until `retry()` stores it."""

    shown: ShownPair
    choice: Choice
    note: str | None
    latency_s: float
    request_id: str
    """sent with every try, so the store keeps one label however many tries reach it"""


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
        self._lock = threading.RLock()  # the panel's retry thread and its clicks may call in at once
        self._current: ShownPair | None = None
        self._pending: PendingLabel | None = None
        self._stalled = False  # a label was stored, but the pair after it could not be fetched yet
        self._shown_at = time.monotonic()
        self._leased = store.team() is not None  # pairs are handed out: give back the unlabeled ones on close
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
        return self._current is None and not self._stalled

    @property
    def pending(self) -> PendingLabel | None:
        """The label chosen while the store was unreachable, until `retry()` stores it (None: none)."""
        return self._pending

    @property
    def waiting(self) -> bool:
        """True while the session waits for the store: a label to save, or the next pair to fetch."""
        return self._pending is not None or self._stalled

    @property
    def progress(self) -> tuple[int, int]:
        """(pairs this annotator has labeled — skips included, number of pairs)."""
        return self.store.progress(self.annotator)

    def choose(self, side: Side, note: str | None = None) -> Label:
        """Label the current pair and move on; returns the stored label.

        If the store cannot be reached, raises `StoreUnavailable` and keeps the label as `pending`
        (the pair stays current); `retry()` stores it later. If the label is stored but the next pair
        cannot be fetched, returns the label with `waiting` True and no current pair until `retry()`.

        Args:
            side: "left" or "right" (the better response as displayed), "tie" or "skip".
            note: optional remark stored with the label (default None; blank counts as None).
        """
        with self._lock:
            if self._pending is not None:
                raise RuntimeError(f"the label of pair {self._pending.shown.id} is still waiting for the store: "
                                   "retry() stores it, discard_pending() drops it")
            shown = self._current
            if shown is None:
                raise RuntimeError("nothing to label: the next pair is still to be fetched (retry() fetches it)"
                                   if self._stalled else "nothing to label: the queue is empty")
            self._pending = PendingLabel(shown, shown.choice(side), (note or "").strip() or None,
                                         time.monotonic() - self._shown_at, uuid.uuid4().hex)
            return self._store_pending()

    def retry(self) -> Label | None:
        """Store the pending label and fetch the next pair, whichever is waiting; returns the label stored
        (None if none was pending). Raises `StoreUnavailable` (keeping what waits) if the store is still
        unreachable."""
        with self._lock:
            if self._pending is not None:
                return self._store_pending()
            if self._stalled:
                self._show(self.store.next_pair(self.annotator, self.only_unlabeled_by_anyone))
                self._stalled = False
                self._upcoming = self._prefetch()
            return None

    def discard_pending(self) -> PendingLabel | None:
        """Drop the pending label (it was never stored); its pair stays current. Returns it (None: none)."""
        with self._lock:
            pending, self._pending = self._pending, None
            return pending

    def undo(self) -> Label | None:
        """Undo this annotator's latest label and show its pair again; returns it (None: nothing to undo).

        A pending label is not undone (it was never stored): drop it with `discard_pending()`.
        """
        with self._lock:
            if self._pending is not None:
                raise RuntimeError(f"the label of pair {self._pending.shown.id} was never stored: "
                                   "discard_pending() drops it")
            label = self.store.undo(self.annotator)
            if label is None:
                return None
            self._show(self.store.get_pair(label.pair_id))
            self._stalled = False
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
        """Stop the prefetch worker and, in a team, give back the pairs handed out but not labeled (the store
        stays open)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if not self._leased:
            return
        unlabeled = {self._current.id} if self._current is not None else set()
        if self._upcoming.done() and not self._upcoming.cancelled() and self._upcoming.exception() is None:
            upcoming = self._upcoming.result()
            unlabeled |= {upcoming.id} if upcoming is not None else set()
        try:
            self.store.release(self.annotator, unlabeled)
        except StoreUnavailable:
            pass  # the leases run out by themselves

    # ------------------------------------------------------------------ internals
    def _store_pending(self) -> Label:
        """Record the pending label (same request id on every try), then show the next pair."""
        pending = self._pending
        label = self.store.record(
            pending.shown.id, pending.choice, self.annotator, note=pending.note,
            shown_swapped=pending.shown.swapped, latency_s=pending.latency_s, request_id=pending.request_id,
        )
        self._pending = None
        try:
            upcoming = self._upcoming.result()
        except StoreUnavailable:
            try:  # the prefetch failed while the store was away; it may be back now
                upcoming = self.store.next_pair(self.annotator, self.only_unlabeled_by_anyone)
            except StoreUnavailable:
                self._current, self._stalled = None, True
                upcoming = None
        if not self._stalled:
            self._show(upcoming)
            self._upcoming = self._prefetch()
        for callback in self._callbacks:
            callback(label)
        return label

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
