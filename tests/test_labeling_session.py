"""LabelingSession: side randomisation, un-randomised recording, undo, prefetch, latency, evaluation tally."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rlhf_widgets.labeling import LabelingSession, PreferenceStore, ShownPair


def make_rows(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "response_a": f"a{i}", "response_b": f"b{i}",
             "metadata": {"a": {"model": "sft"}, "b": {"model": "ppo"}}} for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    with PreferenceStore(tmp_path / "labels.sqlite") as s:
        s.add_pairs(make_rows(4))
        yield s


def session_showing(store: PreferenceStore, swapped: bool, **kwargs) -> LabelingSession:
    """A session whose first pair is shown swapped (or not): the first seed that does it."""
    for seed in range(100):
        session = LabelingSession(store, seed=seed, **kwargs)
        if session.current.swapped == swapped:
            return session
        session.close()
    raise AssertionError("no seed in 0..99 gives that side order")


def test_shown_pair_maps_displayed_sides_back_to_stored_choices(store: PreferenceStore) -> None:
    pair = store.get_pair(1)
    plain, swapped = ShownPair(pair, False, None, None), ShownPair(pair, True, None, None)
    assert (plain.left, plain.right, swapped.left, swapped.right) == ("a0", "b0", "b0", "a0")
    assert [plain.choice(s) for s in ("left", "right", "tie", "skip")] == ["a", "b", "tie", "skip"]
    assert [swapped.choice(s) for s in ("left", "right", "tie", "skip")] == ["b", "a", "tie", "skip"]
    with pytest.raises(ValueError, match="'up'"):
        plain.choice("up")


@pytest.mark.parametrize(("swapped", "side", "stored"), [
    (True, "left", "b"), (True, "right", "a"), (False, "left", "a"), (False, "right", "b"),
])
def test_choose_records_the_un_randomised_choice(store: PreferenceStore, swapped: bool, side: str,
                                                 stored: str) -> None:
    session = session_showing(store, swapped)
    shown = session.current
    assert (shown.left == "b0") == swapped
    label = session.choose(side, note="  ")
    assert (label.pair_id, label.choice, label.shown_swapped, label.note) == (1, stored, swapped, None)
    session.close()


def test_sides_are_random_per_pair_and_fixed_by_the_seed(tmp_path: Path) -> None:
    with PreferenceStore(tmp_path / "many.sqlite") as store:
        store.add_pairs(make_rows(40))

        def orders(seed: int, annotator: str) -> list[bool]:
            session = LabelingSession(store, annotator=annotator, seed=seed)
            out = []
            while not session.done:
                out.append(session.current.swapped)
                session.choose("skip")
            session.close()
            return out

        first = orders(0, "ann")
        assert 5 < sum(first) < 35  # both orders occur
        assert orders(0, "bob") == first and orders(1, "cy") != first


def test_queue_walks_the_pairs_and_ends_done(store: PreferenceStore) -> None:
    session = LabelingSession(store, annotator="ann")
    submitted = []
    session.on_submit(submitted.append)
    seen = []
    while not session.done:
        seen.append(session.current.id)
        session.choose("tie", note="meh")
    assert seen == [1, 2, 3, 4] and session.progress == (4, 4) and session.current is None
    assert [lbl.pair_id for lbl in submitted] == seen and submitted[0].note == "meh"
    with pytest.raises(RuntimeError, match="empty"):
        session.choose("left")
    session.close()


def test_undo_shows_the_pair_again_then_continues(store: PreferenceStore) -> None:
    session = LabelingSession(store, annotator="ann")
    assert session.undo() is None
    session.choose("left")
    session.choose("right")
    assert session.current.id == 3
    undone = session.undo()
    assert undone.pair_id == 2 and session.current.id == 2 and session.progress == (1, 4)
    session.choose("tie")
    assert session.current.id == 3
    session.choose("skip")
    session.choose("skip")
    assert session.done
    assert session.undo().pair_id == 4 and session.current.id == 4 and not session.done
    session.close()


def test_prefetch_fetches_the_next_pair_off_the_main_thread(store: PreferenceStore,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    threads = []
    next_pair = store.next_pair

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return next_pair(*args, **kwargs)

    monkeypatch.setattr(store, "next_pair", spy)
    session = LabelingSession(store, annotator="ann")
    session.choose("left")
    session.choose("left")
    session.close()
    assert threads[0] == threading.main_thread().name  # the first pair, before anything is shown
    # two chooses used two prefetched pairs (a third prefetch may be cancelled by close)
    assert len(threads) >= 3 and all(name.startswith("rlhfw-prefetch") for name in threads[1:])


def test_latency_is_the_time_the_pair_was_on_screen(store: PreferenceStore) -> None:
    session = LabelingSession(store, annotator="ann")
    time.sleep(0.2)
    slow = session.choose("left")
    fast = session.choose("left")
    assert slow.latency_s >= 0.2 and fast.latency_s < slow.latency_s
    session.close()


def test_only_unlabeled_by_anyone_skips_pairs_others_labeled(store: PreferenceStore) -> None:
    store.record(1, "a", annotator="bob")
    mine = LabelingSession(store, annotator="ann")
    fresh = LabelingSession(store, annotator="ann2", only_unlabeled_by_anyone=True)
    assert mine.current.id == 1 and fresh.current.id == 2
    mine.close()
    fresh.close()


def test_sources_are_shown_normally_and_hidden_in_evaluation(store: PreferenceStore) -> None:
    normal = session_showing(store, swapped=True)
    assert (normal.current.left_source, normal.current.right_source) == ("ppo", "sft")
    blind = session_showing(store, swapped=True, evaluation=True)
    assert (blind.current.left_source, blind.current.right_source) == (None, None)
    normal.close()
    blind.close()


def test_tally_counts_wins_per_source(store: PreferenceStore) -> None:
    store.add_pairs([{"prompt": "p", "response_a": "x", "response_b": "y"}])  # no sources in metadata
    session = LabelingSession(store, annotator="judge", evaluation=True)
    for _ in range(5):
        shown = session.current
        # prefer whichever side shows the ppo response ("b"), except: tie on pair 3, a on pair 5
        if shown.id == 3:
            session.choose("tie")
        elif shown.id == 5:
            session.choose("left" if not shown.swapped else "right")
        else:
            session.choose("right" if not shown.swapped else "left")
    tally = session.tally()
    assert tally.wins == {"sft": 0, "ppo": 3, "response_a": 1, "response_b": 0}
    assert (tally.ties, tally.skips) == (1, 0)
    assert tally.win_rate("ppo") == pytest.approx((3 + 0.5) / 5)
    session.close()


class SessionMachine(RuleBasedStateMachine):
    """Random choose / undo sequences: the pair on screen is never one this annotator has labeled, and
    the session is done exactly when the store has nothing left for the annotator."""

    @initialize(n=st.integers(1, 5), seed=st.integers(0, 3))
    def open_session(self, n: int, seed: int) -> None:
        self.dir = tempfile.mkdtemp()
        self.store = PreferenceStore(Path(self.dir) / "labels.sqlite")
        self.store.add_pairs(make_rows(n))
        self.session = LabelingSession(self.store, annotator="ann", seed=seed)
        self.labeled: list[int] = []

    def teardown(self) -> None:
        if hasattr(self, "session"):
            self.session.close()
            self.store.close()
            shutil.rmtree(self.dir)

    @rule(side=st.sampled_from(["left", "right", "tie", "skip"]))
    def choose(self, side: str) -> None:
        if not self.session.done:
            self.labeled.append(self.session.choose(side).pair_id)

    @rule()
    def undo(self) -> None:
        label = self.session.undo()
        if not self.labeled:
            assert label is None
            return
        assert label.pair_id == self.labeled.pop() == self.session.current.id

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "session"):
            return
        shown = self.session.current
        assert self.session.progress[0] == len(set(self.labeled))
        assert self.session.done == (self.store.next_pair("ann") is None)
        if shown is not None:
            assert shown.id not in self.labeled


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(max_examples=20, stateful_step_count=15, deadline=None)
