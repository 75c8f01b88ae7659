"""PreferenceStore: validation, undo, export, agreement, crash safety and two writers; AI labelers.

Every store test runs on both backends: a new SQLite file, and a new schema on a real PostgreSQL server
(`pg_fixtures.py`; skipped, with the reason, when no server can be started).
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from rlhf_widgets.labeling import LabelingSession, PreferenceStore, RewardModelLabeler, label_with
from rlhf_widgets.labeling import team as store_module  # the hand-out's module (`_RESCAN_S`)
from rlhf_widgets.labeling.team import TeamSettings
from rlhf_widgets.labeling.transfer import copy_store

REPO = Path(__file__).resolve().parents[1]


def make_rows(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "response_a": f"a{i}", "response_b": f"b{i}",
             "metadata": {"a": {"model": "sft"}, "b": {"model": "ppo"}}} for i in range(n)]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_target(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Makes empty stores of the parametrised backend: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_schema")
    numbers = itertools.count()
    return lambda: str(tmp_path / f"labels{next(numbers)}.sqlite")


@pytest.fixture
def target(new_target: Callable[[], str]) -> str:
    return new_target()


@pytest.fixture
def store(target: str):
    with PreferenceStore(target) as s:
        yield s


# ---------------------------------------------------------------- pairs and validation
def test_add_pairs_round_trips_prompt_types_and_metadata(store: PreferenceStore) -> None:
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
    ids = store.add_pairs([
        {"prompt": "plain", "response_a": "x", "response_b": "y"},
        {"prompt": chat, "response_a": "x", "response_b": "y", "metadata": {"a": {"temperature": 0.7}}},
    ])
    assert ids == [1, 2] and len(store) == 2
    assert store.get_pair(1).prompt == "plain" and store.get_pair(1).metadata == {}
    assert store.get_pair(2).prompt == chat and store.get_pair(2).metadata == {"a": {"temperature": 0.7}}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("prompt", None, "missing"),
    ("prompt", "  ", "empty"),
    ("prompt", [], "empty"),
    ("prompt", [{"role": "user"}], "message"),
    ("prompt", 3, "string or a list"),
    ("response_a", "", "empty"),
    ("response_b", None, "missing"),
    ("response_b", ["b"], "string"),
    ("metadata", ["not", "a", "dict"], "dict"),
    ("metadata", {"f": object()}, "JSON"),
    ("respnse_a", "typo", "not one of"),
])
def test_a_bad_row_names_row_and_field_and_inserts_nothing(
    store: PreferenceStore, field: str, value: object, message: str
) -> None:
    rows = make_rows(3)
    if value is None:
        del rows[2][field]
    else:
        rows[2][field] = value
    with pytest.raises(ValueError, match=rf"row 2: field '{field}'.*{message}"):
        store.add_pairs(rows)
    assert len(store) == 0


def test_record_validates_choice_and_pair(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(1))
    with pytest.raises(ValueError, match="'left'"):
        store.record(1, "left")
    with pytest.raises(KeyError, match="42"):
        store.record(42, "a")
    with pytest.raises(ValueError, match="annotator"):
        store.record(1, "a", annotator=" ")
    assert store.labels(include_history=True) == []


def test_record_stores_every_field(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(1))
    label = store.record(1, "b", annotator="ann", note="too curt", shown_swapped=True, latency_s=1.5)
    assert store.labels() == [label]
    assert (label.pair_id, label.annotator, label.choice, label.note, label.shown_swapped, label.latency_s,
            label.undone) == (1, "ann", "b", "too curt", True, 1.5, False)
    frame = store.labels_dataframe()
    assert list(frame.columns)[:4] == ["id", "pair_id", "annotator", "choice"]
    assert frame.loc[0, "note"] == "too curt"


# ---------------------------------------------------------------- undo and the queue
def test_undo_returns_the_label_and_the_pair_is_unlabeled_again(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(3))
    assert store.undo("human") is None
    store.record(1, "a")
    last = store.record(2, "b")
    store.record(3, "a", annotator="other")
    assert store.next_pair("human").id == 3
    undone = store.undo("human")
    assert undone == last and store.progress("human") == (1, 3)
    assert store.next_pair("human").id == 2
    assert [lbl.undone for lbl in store.labels(include_history=True)] == [False, True, False]
    assert store.next_pair("human", only_unlabeled_by_anyone=True).id == 2
    assert store.next_pair("human", exclude=[2]).id == 3


def test_undo_of_a_relabel_brings_the_earlier_label_back(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(1))
    store.record(1, "a")
    store.record(1, "b")
    assert [lbl.choice for lbl in store.labels()] == ["b"] and store.progress("human") == (1, 1)
    store.undo("human")
    assert [lbl.choice for lbl in store.labels()] == ["a"]
    store.undo("human")
    assert store.labels() == [] and store.next_pair("human").id == 1


class StoreMachine(RuleBasedStateMachine):
    """Random record / undo sequences by two annotators against a model: per annotator, a stack of the
    labels not undone; the current label of a pair is the topmost one for it."""

    annotators = st.sampled_from(["ann", "bob"])
    new_target: Callable[[], str]  # set by the test: a factory of empty stores of one backend

    @initialize(n=st.integers(1, 6))
    def open_store(self, n: int) -> None:
        self.store = PreferenceStore(self.new_target())
        self.ids = self.store.add_pairs(make_rows(n))
        self.stacks: dict[str, list[tuple[int, str]]] = {"ann": [], "bob": []}

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()

    def current(self, who: str) -> dict[int, str]:
        return dict(self.stacks[who])  # later entries win

    @rule(who=annotators, index=st.integers(0, 5), choice=st.sampled_from(["a", "b", "tie", "skip"]))
    def record(self, who: str, index: int, choice: str) -> None:
        pair_id = self.ids[index % len(self.ids)]
        self.store.record(pair_id, choice, annotator=who)
        self.stacks[who].append((pair_id, choice))

    @rule(who=annotators)
    def label_next(self, who: str) -> None:
        pair = self.store.next_pair(who)
        if pair is not None:
            assert pair.id not in self.current(who)
            self.store.record(pair.id, "a", annotator=who)
            self.stacks[who].append((pair.id, "a"))

    @rule(who=annotators)
    def undo(self, who: str) -> None:
        """Undo pops the model's stack, so the invariant checks the state from before that label is back."""
        label = self.store.undo(who)
        if not self.stacks[who]:
            assert label is None
            return
        pair_id, choice = self.stacks[who].pop()
        assert (label.pair_id, label.choice, label.annotator) == (pair_id, choice, who)

    @invariant()
    def store_matches_model(self) -> None:
        if not hasattr(self, "store"):
            return
        for who in self.stacks:
            current = self.current(who)
            assert self.store.progress(who) == (len(current), len(self.ids))
            assert {lbl.pair_id: lbl.choice for lbl in self.store.labels(who)} == current
            unlabeled = [i for i in self.ids if i not in current]
            nxt = self.store.next_pair(who)
            assert (nxt.id if nxt else None) == (unlabeled[0] if unlabeled else None)
        anyone = {**self.current("ann"), **self.current("bob")}
        nxt = self.store.next_pair("ann", only_unlabeled_by_anyone=True)
        assert (nxt.id if nxt else None) == next((i for i in self.ids if i not in anyone), None)


def test_store_machine(new_target: Callable[[], str]) -> None:
    machine = type("Machine", (StoreMachine,), {"new_target": staticmethod(new_target)})
    run_state_machine_as_test(machine, settings=settings(max_examples=25, stateful_step_count=20, deadline=None))


# ---------------------------------------------------------------- export
def test_to_dataset_maps_choices_and_counts_what_it_leaves_out(store: PreferenceStore) -> None:
    chat = [{"role": "user", "content": "chat prompt"}]
    store.add_pairs([*make_rows(4), {"prompt": chat, "response_a": "ca", "response_b": "cb"}, *make_rows(1)])
    for pair_id, choice in [(1, "a"), (2, "b"), (3, "tie"), (4, "skip"), (5, "b")]:
        store.record(pair_id, choice)
    dataset, counts = store.to_dataset(return_counts=True)
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    def row(prompt: list, chosen: str, rejected: str) -> dict:
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    assert dataset.to_list() == [
        row([{"role": "user", "content": "prompt 0"}], "a0", "b0"),
        row([{"role": "user", "content": "prompt 1"}], "b1", "a1"),
        row(chat, "cb", "ca"),
    ]
    assert (counts.kept, counts.ties, counts.skips, counts.conflicts, counts.unlabeled) == (3, 1, 1, 0, 1)
    assert len(store.to_dataset()) == 3


def test_to_dataset_pools_annotators_by_majority_or_reference(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(5))
    votes = {  # pair → choices of x, y, z
        1: "aab",      # majority a
        2: "abt",      # one vote each: conflict
        3: "tts",      # majority tie
        4: "ss",       # only skips
        5: "ab",       # a/b split: conflict, unless the reference decides
    }
    code = {"a": "a", "b": "b", "t": "tie", "s": "skip"}
    for pair_id, choices in votes.items():
        for who, c in zip("xyz", choices, strict=False):
            store.record(pair_id, code[c], annotator=who)
    assert store.decisions() == {1: "a", 2: "conflict", 3: "tie", 4: "skip", 5: "conflict"}
    dataset, counts = store.to_dataset(return_counts=True)
    assert [row["chosen"][0]["content"] for row in dataset] == ["a0"]
    assert (counts.kept, counts.ties, counts.skips, counts.conflicts, counts.unlabeled) == (1, 1, 1, 2, 0)
    assert store.decisions(reference="y")[5] == "b" and store.decisions(reference="y")[1] == "a"
    assert store.decisions(annotator="z") == {1: "b", 2: "tie", 3: "skip"}
    with pytest.raises(ValueError, match="either"):
        store.to_dataset(annotator="x", reference="y")


def test_to_dataset_with_nothing_labeled_keeps_the_columns(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(2))
    dataset, counts = store.to_dataset(annotator="nobody", return_counts=True)
    assert dataset.column_names == ["prompt", "chosen", "rejected"] and len(dataset) == 0
    assert counts.unlabeled == 2


# ---------------------------------------------------------------- agreement
def test_cohens_kappa_matches_a_hand_computed_value(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(11))
    x = "aaaaaabbbb"
    y = "aaaabbbbba"
    # observed 7/10; P(a) = .6 and .5 → chance = .6·.5 + .4·.5 = .5; kappa = (.7 - .5) / (1 - .5) = 0.4
    for pair_id, (cx, cy) in enumerate(zip(x, y, strict=True), start=1):
        store.record(pair_id, cx, annotator="x")
        store.record(pair_id, cy, annotator="y")
    store.record(11, "a", annotator="x")
    store.record(11, "tie", annotator="y")  # not an a/b pair for both: left out
    store.record(1, "a", annotator="gold")
    table = store.agreement()
    row = table[(table.annotator == "x") & (table.other == "y")].iloc[0]
    assert row.n == 10 and row.agreement == pytest.approx(0.7) and row.kappa == pytest.approx(0.4)
    assert len(table) == 3  # x-y, x-gold, y-gold
    against_gold = store.agreement(reference="gold")
    assert list(against_gold.annotator) == ["x", "y"] and list(against_gold.n) == [1, 1]
    assert list(against_gold.agreement) == [1.0, 1.0]
    assert against_gold.kappa.isna().all()  # one shared pair, all "a": chance agreement is 1


def test_team_agreement_takes_the_team_from_the_store(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(12))
    store.set_team(3, exempt=["simulated"])
    for pair_id in range(1, 13):
        truth, other = ("a", "b") if pair_id % 2 else ("b", "a")
        for who, choice in [("ann", truth), ("bob", truth), ("cy", other), ("dan", truth), ("gold", truth),
                            ("simulated", "tie")]:
            store.record(pair_id, choice, annotator=who)
    store.undo("bob")  # bob's label of pair 12 no longer counts
    result = store.team_agreement(reference="gold")
    rows = result.annotators.set_index("annotator")
    assert list(rows.index) == ["ann", "bob", "cy", "dan"]  # neither the reference nor the exempt labeler
    assert list(rows.n_majority) == [11, 11, 12, 11]  # pair 12 without bob: cy against dan, no majority
    assert list(rows.flagged) == [False, False, True, False]
    assert list(rows.with_reference) == [1.0, 1.0, 0.0, 1.0] and list(rows.n_reference) == [12, 11, 12, 12]


# ---------------------------------------------------------------- crash safety and concurrency
WORKER = """
import sys
from rlhf_widgets.labeling.store import PreferenceStore

path, annotator, count, pause_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = PreferenceStore(path)
for i in range(count):
    label = store.record(1 + i % 5, "ab"[i % 2], annotator=annotator, note=str(i))
    print(label.id, flush=True)
    if i + 1 == pause_after:
        sys.stdin.read()  # wait here until killed
"""


def start_worker(path: Path | str, annotator: str, count: int, pause_after: int = 0) -> subprocess.Popen:
    """A process recording `count` labels, printing each id once `record` returned (pausing after
    `pause_after` labels; 0: never)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), annotator, str(count), str(pause_after)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


@pytest.mark.parametrize("pause_after", [37, 0], ids=["killed-between-labels", "killed-while-writing"])
def test_sigkill_loses_no_acknowledged_label(target: str, pause_after: int) -> None:
    path = target
    with PreferenceStore(path) as store:
        store.add_pairs(make_rows(5))
    worker = start_worker(path, "crashy", 100_000, pause_after)
    acknowledged = [int(worker.stdout.readline()) for _ in range(pause_after or 60)]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    acknowledged += [int(line) for line in worker.stdout.read().split()]
    assert worker.returncode == -signal.SIGKILL
    with PreferenceStore(path) as store:
        stored = {label.id: label for label in store.labels(include_history=True)}
    assert set(acknowledged) <= set(stored)
    for n, label_id in enumerate(acknowledged):
        assert (stored[label_id].note, stored[label_id].annotator) == (str(n), "crashy")


def test_two_processes_writing_at_once_lose_nothing(target: str) -> None:
    path = target
    with PreferenceStore(path) as store:
        store.add_pairs(make_rows(5))
    workers = [start_worker(path, name, 500) for name in ("left-kernel", "right-kernel")]
    outputs = [w.communicate(timeout=300)[0].split() for w in workers]
    assert [w.returncode for w in workers] == [0, 0] and [len(o) for o in outputs] == [500, 500]
    with PreferenceStore(path) as store:
        labels = store.labels(include_history=True)
    assert len(labels) == 1000 and len({lbl.id for lbl in labels}) == 1000
    assert sum(lbl.annotator == "left-kernel" for lbl in labels) == 500


# ---------------------------------------------------------------- idempotent writes
def test_record_with_the_same_request_id_stores_one_label(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(2))
    first = store.record(1, "a", annotator="ann", request_id="click-1")
    assert store.record(1, "a", annotator="ann", request_id="click-1") == first  # a retry finds it
    assert len(store.labels(include_history=True)) == 1
    with pytest.raises(ValueError, match="click-1"):
        store.record(2, "b", annotator="ann", request_id="click-1")
    assert store.record(1, "b", annotator="ann").id != first.id  # without one, every call is a new label


def test_add_pairs_if_empty_prepares_a_store_once_even_when_racing(new_target: Callable[[], str]) -> None:
    target = new_target()
    stores = [PreferenceStore(target) for _ in range(4)]
    start = threading.Barrier(len(stores))

    def prepare(store: PreferenceStore) -> list[int]:
        start.wait()
        return store.add_pairs(make_rows(3), if_empty=True)

    with ThreadPoolExecutor(len(stores)) as pool:
        results = list(pool.map(prepare, stores))
    assert sorted(results) == [[], [], [], [1, 2, 3]] and len(stores[0]) == 3
    assert stores[0].add_pairs(make_rows(1), if_empty=True) == [] and stores[0].add_pairs(make_rows(1)) == [4]
    for store in stores:
        store.close()


# ---------------------------------------------------------------- teams: hand-out, leases, progress
def test_team_hands_each_pair_to_overlap_annotators_and_never_twice_to_one(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(4))
    assert store.team() is None
    store.set_team(2)
    assert store.team() == TeamSettings(overlap=2, lease_s=1800.0, exempt=())
    assert [store.next_pair(name).id for name in ("ann", "bob", "cy")] == [1, 1, 2]
    assert store.next_pair("ann").id == 1  # a pair leased to her comes back first (a restarted kernel)
    assert store.next_pair("ann", exclude=[1]).id == 2  # the prefetch: cy holds one place of pair 2
    assert store.next_pair("dan").id == 3  # 1 and 2 are held by two annotators each
    store.record(1, "a", annotator="ann")
    store.record(1, "b", annotator="bob")
    assert store.next_pair("ann").id == 2 and store.next_pair("bob").id == 3
    assert store.next_pair("eve").id == 4
    store.release("dan", [3])
    assert store.next_pair("eve", exclude=[4]).id == 3
    progress = store.team_progress()
    assert (progress.pairs, progress.complete, progress.started) == (4, 1, 1)
    rows = progress.annotators.set_index("annotator")
    assert rows.loc["ann", "labeled"] == 1 and rows.loc["ann", "holding"] == 1
    assert rows.loc["eve", "labeled"] == 0 and rows.loc["eve", "holding"] == 2
    store.set_team(None)
    assert store.team() is None and store.next_pair("ann").id == 2 and store.next_pair("zed").id == 1


def test_hand_out_scans_on_from_its_last_find_and_looks_back_from_time_to_time(
    store: PreferenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_pairs(make_rows(4))
    store.set_team(1)
    assert store.next_pair("ann").id == 1 and store.next_pair("bob").id == 2
    store.record(2, "a", annotator="bob")
    store.release("ann", [1])
    assert store.next_pair("bob").id == 3  # bob's scan starts at his last find: pair 1 waits for a full look
    store.record(3, "a", annotator="bob")
    monkeypatch.setattr(store_module, "_RESCAN_S", 0.0)
    assert store.next_pair("bob").id == 1  # a full look finds it


def test_team_exempt_annotators_get_every_pair_and_take_no_place(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(2))
    store.set_team(1, exempt=["gold"])
    for pair in store.pairs():
        assert store.next_pair("gold").id == pair.id
        store.record(pair.id, "a", annotator="gold")
    assert store.next_pair("ann").id == 1 and store.next_pair("bob").id == 2 and store.next_pair("cy") is None
    assert store.team_progress().started == 0  # gold's labels don't count for the team


def test_undo_in_a_team_keeps_the_annotators_place_on_the_pair(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(2))
    store.set_team(1)
    store.record(store.next_pair("ann").id, "a", annotator="ann")
    store.undo("ann")
    assert store.next_pair("bob").id == 2  # pair 1 is still ann's, to label again
    assert store.next_pair("ann").id == 1


def test_an_expired_lease_frees_the_pair_and_a_late_label_is_still_kept(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(3))
    store.set_team(1, lease_s=0.5)
    assert store.next_pair("ann").id == 1 and store.next_pair("bob").id == 2
    assert store.next_pair("cy").id == 3 and store.next_pair("dan") is None
    time.sleep(0.7)
    assert store.next_pair("dan").id == 1
    late = store.record(1, "b", annotator="ann")  # human work is never thrown away
    assert late in store.labels()


def test_closing_a_session_gives_back_its_unlabeled_pairs(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(4))
    store.set_team(1)
    session = LabelingSession(store, annotator="ann")
    assert session.current.id == 1
    session.choose("left")  # labels 1, shows the prefetched 2, prefetches 3
    assert session.current.id == 2
    deadline = time.monotonic() + 10
    while store.team_progress().annotators.set_index("annotator").loc["ann", "holding"] < 2:  # the prefetch
        assert time.monotonic() < deadline, "the session never prefetched a second pair"
        time.sleep(0.01)
    assert store.next_pair("bob").id == 4
    session.close()
    assert store.next_pair("bob", exclude=[4]).id == 2 and store.next_pair("cy").id == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"overlap": 0}, "overlap"), ({"overlap": True}, "overlap"), ({"overlap": 2.5}, "overlap"),
    ({"overlap": 2, "lease_s": 0}, "lease_s"), ({"overlap": 2, "lease_s": float("inf")}, "lease_s"),
    ({"overlap": 2, "exempt": "gold"}, "exempt"),
])
def test_set_team_rejects_bad_settings(store: PreferenceStore, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.set_team(**kwargs)
    assert store.team() is None


# ---------------------------------------------------------------- schema versions and copying
OLD_SCHEMA = """
CREATE TABLE pairs (id INTEGER PRIMARY KEY AUTOINCREMENT, prompt TEXT NOT NULL, response_a TEXT NOT NULL,
    response_b TEXT NOT NULL, metadata TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE labels (id INTEGER PRIMARY KEY AUTOINCREMENT, pair_id INTEGER NOT NULL REFERENCES pairs(id),
    annotator TEXT NOT NULL, choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')), note TEXT,
    shown_swapped INTEGER NOT NULL, latency_s REAL, created_at TEXT NOT NULL, undone INTEGER NOT NULL DEFAULT 0);
INSERT INTO pairs VALUES (1, '"old prompt"', 'x', 'y', '{}', '2026-01-02T03:04:05+00:00');
INSERT INTO labels VALUES (1, 1, 'ann', 'a', NULL, 0, 1.5, '2026-01-02T03:04:06+00:00', 1);
INSERT INTO labels VALUES (2, 1, 'ann', 'b', 'second', 1, NULL, '2026-01-02T03:04:07+00:00', 0);
"""


def test_a_store_from_before_schema_versions_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    with PreferenceStore(path) as store:
        assert [(lbl.id, lbl.choice, lbl.undone) for lbl in store.labels(include_history=True)] == [
            (1, "a", True), (2, "b", False)]
        assert store.labels()[0].note == "second" and store.get_pair(1).prompt == "old prompt"
        assert store.record(1, "tie", annotator="bob", request_id="r").id == 3
        store.set_team(2)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [(1,), (2,), (3,)]
        assert conn.execute("SELECT round FROM pairs").fetchall() == [(None,)]  # the loop's columns were added
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', '')")
    with pytest.raises(RuntimeError, match="version 99.*upgrade rlhf-widgets"):
        PreferenceStore(path)


def test_copy_store_moves_everything_into_an_empty_store(tmp_path: Path, target: str) -> None:
    chat = [{"role": "system", "content": "Be <b>kind</b>."}, {"role": "user", "content": "Hi?"}]
    hostile = "<script>alert(1)</script> 'quotes'; DROP TABLE labels; -- ünïcode \\ 100%"
    with PreferenceStore(tmp_path / "source.sqlite") as source:
        source.add_pairs([*make_rows(2), {"prompt": chat, "response_a": hostile, "response_b": "b",
                                          "metadata": {"a": {"model": hostile}}}])
        source.record(1, "a", annotator="ann", note=hostile, latency_s=2.5)
        source.record(3, "b", annotator="ann", shown_swapped=True)
        source.undo("ann")
        source.round = 4
        source.record(2, "tie", annotator="bob")
        source.add_pairs([{**make_rows(1)[0], "round": 4}])
        source.set_team(2, exempt=["gold"])
        counts = copy_store(source, target)
        assert counts == {"pairs": 4, "labels": 3, "settings": 1}
        with PreferenceStore(target) as copy:
            assert copy.pairs() == source.pairs() and copy.get_pair(4).round == 4
            assert copy.labels(include_history=True) == source.labels(include_history=True)
            assert copy.labels("bob")[0].round == 4
            assert copy.team() == source.team()
            assert copy.add_pairs(make_rows(1)) == [5] and copy.record(5, "a").id == 4  # ids go on after the copy
        with pytest.raises(ValueError, match="already holds 5 pairs and 4 labels"):
            copy_store(source, target)


# ---------------------------------------------------------------- provenance of the iterative loop
def test_pairs_and_labels_record_their_round_and_export_by_round(store: PreferenceStore) -> None:
    store.add_pairs([{**row, "round": 1, "metadata": {"a": {"model": "round-1/policy"}}} for row in make_rows(2)])
    store.add_pairs([{**row, "round": 2} for row in make_rows(2)] + make_rows(1))
    assert [p.round for p in store.pairs()] == [1, 1, 2, 2, None]
    assert [p.id for p in store.pairs(rounds=[2])] == [3, 4] and store.pairs(rounds=[]) == []
    assert store.get_pair(1).metadata == {"a": {"model": "round-1/policy"}}
    store.round = 2
    for pair_id in (1, 3):
        store.record(pair_id, "a", annotator="ann")
    store.round = None
    store.record(4, "b", annotator="ann")
    assert [(lbl.pair_id, lbl.round) for lbl in store.labels("ann")] == [(1, 2), (3, 2), (4, None)]
    dataset, counts = store.to_dataset(annotator="ann", rounds=[2], return_counts=True)
    assert len(dataset) == 2 and (counts.kept, counts.unlabeled) == (2, 0)
    assert len(store.to_dataset(annotator="ann", rounds=[1])) == 1
    with pytest.raises(ValueError, match=r"row 0: field 'round' must be an int >= 0"):
        store.add_pairs([{**make_rows(1)[0], "round": -1}])


def test_label_with_can_leave_what_anyone_labeled(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(4))
    store.record(2, "a", annotator="human")
    assert label_with(store, lambda p, a, b: "b", "ai", only_unlabeled_by_anyone=True, show_progress=False) == 3
    assert sorted(lbl.pair_id for lbl in store.labels("ai")) == [1, 3, 4]


# ---------------------------------------------------------------- AI labelers
def test_label_with_labels_the_remaining_pairs_up_to_the_limit(store: PreferenceStore) -> None:
    store.add_pairs(make_rows(5))
    store.record(2, "a", annotator="bot")
    seen = []

    def labeler(prompt: str, a: str, b: str) -> str:
        seen.append(prompt)
        return "b"

    assert label_with(store, labeler, "bot", limit=2, show_progress=False) == 2
    assert seen == ["prompt 0", "prompt 2"]
    assert label_with(store, labeler, "bot", show_progress=False) == 2
    assert store.progress("bot") == (5, 5) and label_with(store, labeler, "bot", show_progress=False) == 0
    assert [lbl.choice for lbl in store.labels("bot")] == ["a", "b", "b", "b", "b"]
    with pytest.raises(ValueError, match="'maybe'"):
        store.add_pairs(make_rows(1))
        label_with(store, lambda *_: "maybe", "bot", show_progress=False)


class FakeRewardModel:
    """A reward function (the protocol of `runtime.reward_protocol`) scoring a response by its length; records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, list]] = []

    def __call__(self, prompts: list, responses: list) -> torch.Tensor:
        self.calls.append((prompts, responses))
        return torch.tensor([float(len(r)) for r in responses])


def test_reward_model_labeler_prefers_the_higher_score() -> None:
    rm = FakeRewardModel()
    labeler = RewardModelLabeler(rm)
    assert labeler("p", "long answer", "short") == "a"
    assert labeler("p", "short", "long answer") == "b"
    assert labeler("p", "same", "size") == "tie"
    assert RewardModelLabeler(rm, tie_margin=10)("p", "long answer", "short") == "tie"
    assert rm.calls[0] == (["p", "p"], ["long answer", "short"])
    with pytest.raises(ValueError, match="tie_margin"):
        RewardModelLabeler(rm, tie_margin=-1)
