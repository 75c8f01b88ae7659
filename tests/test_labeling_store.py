"""PreferenceStore: validation, undo, export, agreement, crash safety and two writers; AI labelers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rlhf_widgets.labeling import PreferenceStore, RewardModelLabeler, label_with

REPO = Path(__file__).resolve().parents[1]


def make_rows(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "response_a": f"a{i}", "response_b": f"b{i}",
             "metadata": {"a": {"model": "sft"}, "b": {"model": "ppo"}}} for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    with PreferenceStore(tmp_path / "labels.sqlite") as s:
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

    @initialize(n=st.integers(1, 6))
    def open_store(self, n: int) -> None:
        self.dir = tempfile.mkdtemp()
        self.store = PreferenceStore(Path(self.dir) / "labels.sqlite")
        self.ids = self.store.add_pairs(make_rows(n))
        self.stacks: dict[str, list[tuple[int, str]]] = {"ann": [], "bob": []}

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir)

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


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)


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


def start_worker(path: Path, annotator: str, count: int, pause_after: int = 0) -> subprocess.Popen:
    """A process recording `count` labels, printing each id once `record` returned (pausing after
    `pause_after` labels; 0: never)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), annotator, str(count), str(pause_after)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


@pytest.mark.parametrize("pause_after", [37, 0], ids=["killed-between-labels", "killed-while-writing"])
def test_sigkill_loses_no_acknowledged_label(tmp_path: Path, pause_after: int) -> None:
    path = tmp_path / "labels.sqlite"
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


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    with PreferenceStore(path) as store:
        store.add_pairs(make_rows(5))
    workers = [start_worker(path, name, 500) for name in ("left-kernel", "right-kernel")]
    outputs = [w.communicate(timeout=300)[0].split() for w in workers]
    assert [w.returncode for w in workers] == [0, 0] and [len(o) for o in outputs] == [500, 500]
    with PreferenceStore(path) as store:
        labels = store.labels(include_history=True)
    assert len(labels) == 1000 and len({lbl.id for lbl in labels}) == 1000
    assert sum(lbl.annotator == "left-kernel" for lbl in labels) == 500


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
    """A reward function (the protocol of `rlhf_widgets.rewards`) scoring a response by its length; records calls."""

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
