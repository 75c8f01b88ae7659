"""Team labeling on a real PostgreSQL server, and what the session and panel do when a store stops answering.

The server comes from `pg_fixtures.py` (tests marked `postgres` skip, with the reason, without one). The
first part needs no server: a store whose connection can be cut on demand.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from rlhf_widgets.labeling import LabelingPanel, LabelingSession, PreferenceStore
from rlhf_widgets.labeling.backends import Database, StoreUnavailable, Transaction
from rlhf_widgets.labeling.postgres import create_annotator_role, display_url, main
from rlhf_widgets.labeling.transfer import copy_store

REPO = Path(__file__).resolve().parents[1]


def make_rows(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "response_a": f"a{i}", "response_b": f"b{i}",
             "metadata": {"a": {"model": "sft"}, "b": {"model": "ppo"}}} for i in range(n)]


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.05)


# ---------------------------------------------------------------- a store that stops answering (no server)
class Outage(Database):
    """Wraps a store's database: while `down`, every call raises StoreUnavailable (with `reads_down`, only
    reads do); with `lose_ack`, the next write commits and *then* raises, as when a connection drops between
    COMMIT and its acknowledgement."""

    def __init__(self, inner: Database) -> None:
        self.inner, self.dialect, self.target = inner, inner.dialect, inner.target
        self.down = False
        self.reads_down = False
        self.lose_ack = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable(f"can't reach {self.target}: simulated outage")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list:
        self._check()
        if self.reads_down:
            raise StoreUnavailable(f"can't reach {self.target}: simulated outage of reads")
        return self.inner.query(sql, params)

    def write(self, work: Callable[[Transaction], Any], *, idempotent: bool) -> Any:
        self._check()
        result = self.inner.write(work, idempotent=idempotent)
        if self.lose_ack:
            self.lose_ack = False
            raise StoreUnavailable("lost the connection: simulated lost acknowledgement")
        return result

    def timestamp(self, value: Any) -> Any:
        return self.inner.timestamp(value)

    def reset_ids(self, tx: Transaction) -> None:
        self.inner.reset_ids(tx)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def flaky(tmp_path: Path):
    with PreferenceStore(tmp_path / "labels.sqlite") as store:
        store.add_pairs(make_rows(4))
        outage = Outage(store._db)
        store._db = outage
        yield store, outage


def test_session_keeps_a_label_the_store_never_got_and_stores_it_once(flaky) -> None:
    store, outage = flaky
    session = LabelingSession(store, annotator="ann")
    first = session.choose("left")
    shown = session.current
    outage.down = True
    with pytest.raises(StoreUnavailable, match="simulated outage"):
        session.choose("tie", note="kept")
    assert session.waiting and session.pending.shown == shown and session.pending.choice == "tie"
    assert session.current == shown  # the pair stays on screen until its label is stored
    with pytest.raises(RuntimeError, match="still waiting"):
        session.choose("left")
    with pytest.raises(StoreUnavailable):
        session.retry()
    outage.down = False
    outage.lose_ack = True  # the retry commits, but its answer is lost: the next retry must not add a label
    with pytest.raises(StoreUnavailable, match="acknowledgement"):
        session.retry()
    saved = session.retry()
    assert (saved.pair_id, saved.choice, saved.note) == (shown.id, "tie", "kept")
    assert not session.waiting and session.current.id == 3
    assert [lbl.id for lbl in store.labels(include_history=True)] == [first.id, saved.id]
    session.close()


def test_a_pending_label_can_be_dropped_instead(flaky) -> None:
    store, outage = flaky
    session = LabelingSession(store, annotator="ann")
    outage.down = True
    with pytest.raises(StoreUnavailable):
        session.choose("right")
    with pytest.raises(RuntimeError, match="never stored"):
        session.undo()
    assert session.discard_pending().choice in ("a", "b") and session.discard_pending() is None
    outage.down = False
    assert session.current.id == 1 and session.retry() is None and store.labels() == []
    session.close()


def test_a_label_stored_when_the_next_pair_cannot_be_fetched_waits_for_that_pair(flaky) -> None:
    store, outage = flaky
    panel = LabelingPanel(store, annotator="ann", retry_every_s=0.05)
    panel.session._upcoming.result()  # pair 2 is prefetched
    outage.reads_down = True
    assert panel._choose("left").pair_id == 1 and panel.session.current.id == 2  # the prefetched pair
    second = panel._choose("right")  # stored; the pair after it can't be fetched
    assert second.pair_id == 2 and panel.session.waiting and not panel.session.done
    assert panel.session.current is None and panel.session.pending is None
    assert "label is saved, but the next pair can't be fetched" in panel._status.value
    assert "Waiting for the label store" in panel._done.value  # not "All done"
    with pytest.raises(RuntimeError, match="still to be fetched"):
        panel.session.choose("left")
    outage.reads_down = False
    wait_for(lambda: panel._status.value == "The store is back.", what="fetching the next pair")
    assert panel.session.current.id == 3 and not panel.session.waiting
    assert [lbl.pair_id for lbl in store.labels(include_history=True)] == [1, 2]
    panel.close()


def test_panel_says_the_store_is_gone_keeps_the_label_and_saves_it_when_back(flaky) -> None:
    store, outage = flaky
    panel = LabelingPanel(store, annotator="ann", retry_every_s=0.05)
    panel._choose("left")
    outage.down = True
    assert panel._choose("right") is None
    pending = panel.session.pending
    assert pending.shown.id == 2
    status = panel._status.value
    assert "not answering" in status and "pair 2" in status and "kept" in status
    assert all(button.disabled for button in panel._choices.children)
    assert panel._choose("left") is None and panel.session.pending == pending  # clicks wait
    wait_for(lambda: "tries so far" in panel._status.value, what="a failed retry")
    outage.down = False
    wait_for(lambda: not panel.session.waiting, what="the retry")
    wait_for(lambda: "saved your label of pair 2" in panel._status.value, what="the panel saying so")
    assert not any(button.disabled for button in panel._choices.children)
    assert panel.session.current.id == 3 and panel._count.value == "2 / 4 labeled"
    labels = store.labels(include_history=True)
    assert [lbl.pair_id for lbl in labels] == [1, 2] and labels[1].choice == pending.choice
    panel.close()


def test_panel_undo_drops_the_unsaved_label(flaky) -> None:
    store, outage = flaky
    panel = LabelingPanel(store, annotator="ann", retry_every_s=0.05)
    outage.down = True
    panel._choose("left")
    panel._undo_last()
    assert "Dropped your unsaved label of pair 1" in panel._status.value and not panel.session.waiting
    outage.down = False
    time.sleep(0.2)  # a retry thread that outlived the drop would store it now
    assert store.labels(include_history=True) == [] and panel.session.current.id == 1
    panel.close()


# ---------------------------------------------------------------- a real server
TEAM_WORKER = """
import sys
from rlhf_widgets.labeling.store import PreferenceStore

url, annotator, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with PreferenceStore(url) as store:
    for _ in range(count):
        pair = store.next_pair(annotator)
        print(store.record(pair.id, "ab"[pair.id % 2], annotator=annotator).id, flush=True)
"""


@pytest.mark.postgres
def test_four_annotator_processes_share_the_pairs_with_overlap_two(pg_url: str) -> None:
    # 750 pairs: whatever the speeds, an annotator always finds one (others fill at most 900 / 2 = 450,
    # and she has labeled at most 299), so every process labels its 300
    with PreferenceStore(pg_url) as store:
        store.add_pairs(make_rows(750))
        store.set_team(2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    names = ["ann", "bob", "cy", "dan"]
    workers = [subprocess.Popen([sys.executable, "-c", TEAM_WORKER, pg_url, name, "300"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for name in names]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [w.returncode for w in workers] == [0] * 4, [err[-2000:] for _, err in outputs]
    acknowledged = {int(line) for out, _ in outputs for line in out.split()}
    with PreferenceStore(pg_url) as store:
        labels = store.labels(include_history=True)
        progress = store.team_progress()
    assert len(labels) == 1200 and {lbl.id for lbl in labels} == acknowledged
    assert Counter(lbl.annotator for lbl in labels) == dict.fromkeys(names, 300)
    by_pair = Counter(lbl.pair_id for lbl in labels)
    assert max(by_pair.values()) == 2  # never more than r
    assert len({(lbl.pair_id, lbl.annotator) for lbl in labels}) == 1200  # nobody got a pair twice
    assert (progress.complete, progress.started) == (sum(n == 2 for n in by_pair.values()), len(by_pair))
    assert progress.annotators.holding.sum() == 0  # every lease ended in a label


@pytest.mark.postgres
def test_a_dropped_connection_is_reopened_without_the_caller_noticing(pg_url: str, postgres_server) -> None:
    with PreferenceStore(pg_url) as store:
        store.add_pairs(make_rows(2))
        store.record(1, "a")
        backend_pid = store._read("SELECT pg_backend_pid() AS pid")[0]["pid"]
        postgres_server.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        assert store.record(2, "b").pair_id == 2  # re-run on a new connection
        second_pid = store._read("SELECT pg_backend_pid() AS pid")[0]["pid"]
        assert second_pid != backend_pid
        postgres_server.execute("SELECT pg_terminate_backend(%s)", (second_pid,))
        assert [lbl.pair_id for lbl in store.labels()] == [1, 2]  # a read is re-run too


@pytest.mark.postgres
def test_panel_recovers_from_a_server_restart_and_loses_nothing_acknowledged(pg_url: str, postgres_server) -> None:
    with PreferenceStore(pg_url, connect_timeout_s=2) as store:
        store.add_pairs(make_rows(6))
        panel = LabelingPanel(store, annotator="ann", retry_every_s=0.2)
        acknowledged = [panel._choose(side).id for side in ("left", "right")]
        postgres_server.stop()
        try:
            assert panel._choose("tie") is None
            pending = panel.session.pending
            assert pending.shown.id == 3 and "kept" in panel._status.value
            wait_for(lambda: "tries so far" in panel._status.value, what="a retry against the stopped server")
            assert "127.0.0.1" in panel._status.value  # the message names the server
        finally:
            postgres_server.start()
        wait_for(lambda: "saved your label of pair 3" in panel._status.value, what="saving the kept label")
        assert panel.session.current.id == 4 and not panel.session.waiting
        acknowledged.append(panel._choose("left").id)
        labels = store.labels(include_history=True)
        assert set(acknowledged) <= {lbl.id for lbl in labels}
        assert [(lbl.pair_id, lbl.choice) for lbl in labels if lbl.pair_id == 3] == [(3, "tie")]
        assert len(labels) == 4
        panel.close()


@pytest.mark.postgres
def test_an_unreachable_server_raises_store_unavailable_naming_it_without_the_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=rf"postgresql://ann@127\.0\.0\.1:{port}/labels") as caught:
        PreferenceStore(f"postgresql://ann:s3cret@127.0.0.1:{port}/labels", connect_timeout_s=2)
    assert "s3cret" not in str(caught.value) and time.monotonic() - started < 10
    assert display_url("postgresql://u:pw@h:5/db?sslmode=require") == "postgresql://u@h:5/db"


# ---------------------------------------------------------------- roles: an annotator can only label
@pytest.fixture
def annotator_url(pg_url: str, postgres_server) -> str:
    """A store with 3 pairs and labels by 'gold', and the URL of the same store for role 'rlhfw_test_ann'."""
    with PreferenceStore(pg_url) as store:
        store.add_pairs(make_rows(3))
        store.record(1, "a", annotator="gold", note="secret reasoning")
        store.set_team(2, exempt=["gold"])
    create_annotator_role(pg_url, "rlhfw_test_ann")
    create_annotator_role(pg_url, "rlhfw_test_ann")  # again: idempotent
    return pg_url.replace("postgres@", "rlhfw_test_ann@", 1)


@pytest.mark.postgres
def test_an_annotator_role_labels_as_itself_and_touches_nothing_else(annotator_url: str, pg_url: str) -> None:
    import psycopg

    with PreferenceStore(annotator_url) as mine:
        assert len(mine) == 3 and mine.labels() == []  # reads pairs, never others' choices
        pair = mine.next_pair("rlhfw_test_ann")  # the hand-out works under row security
        label = mine.record(pair.id, "b", annotator="rlhfw_test_ann")
        assert mine.labels() == [label] and mine.undo("rlhfw_test_ann") == label
        assert mine.next_pair("rlhfw_test_ann") == pair  # undo kept its place
        mine.record(pair.id, "a", annotator="rlhfw_test_ann")
        progress = mine.team_progress()  # pair counts come from everyone's (choice-free) labeler list
        assert (progress.started, list(progress.annotators.annotator)) == (1, ["rlhfw_test_ann"])
        with pytest.raises(PermissionError, match="only as itself"):
            mine.record(2, "a", annotator="gold")
        with pytest.raises(PermissionError):
            mine.add_pairs(make_rows(1))
        with pytest.raises(PermissionError):
            mine.set_team(1)
    with psycopg.connect(annotator_url, autocommit=True) as conn:  # straight SQL, past the store's API
        for statement in (
            "UPDATE labels SET choice = 'b'", "UPDATE labels SET annotator = 'rlhfw_test_ann'", "DELETE FROM labels",
            "TRUNCATE labels", "DROP TABLE labels", "DELETE FROM pairs", "UPDATE pairs SET response_a = 'x'",
            "INSERT INTO labels (pair_id, annotator, choice, shown_swapped, created_at) "
            "VALUES (1, 'gold', 'b', false, now())",
            "UPDATE settings SET value = '{}'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # the one column it may update, and the leases it may drop, are its own: others' rows stay out of reach
        assert conn.execute("UPDATE labels SET undone = TRUE WHERE annotator = 'gold'").rowcount == 0
        assert conn.execute("SELECT COUNT(*) FROM labels WHERE annotator = 'gold'").fetchone()[0] == 0
    with PreferenceStore(pg_url) as owner:
        gold = owner.labels("gold")
        assert [(lbl.choice, lbl.note, lbl.undone) for lbl in gold] == [("a", "secret reasoning", False)]


@pytest.mark.postgres
def test_an_annotator_cannot_migrate_an_old_schema_and_is_told_who_can(annotator_url: str, postgres_server) -> None:
    schema = annotator_url.split("search_path%3D")[1]
    postgres_server.execute(f"DELETE FROM {schema}.schema_migrations WHERE version >= 2")
    with pytest.raises(PermissionError, match="schema version 1.*as the owner"):
        PreferenceStore(annotator_url)


# ---------------------------------------------------------------- the command line
@pytest.mark.postgres
def test_cli_copies_an_sqlite_store_and_adds_an_annotator(tmp_path: Path, pg_url: str, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with PreferenceStore(tmp_path / "labels.sqlite") as source:
        source.add_pairs(make_rows(3))
        source.record(2, "b", annotator="ann")
    assert main(["copy", str(tmp_path / "labels.sqlite"), pg_url]) == 0
    assert "copied 3 pairs, 1 labels and 0 settings" in capsys.readouterr().out
    assert main(["migrate", pg_url]) == 0 and "3 pairs" in capsys.readouterr().out
    monkeypatch.setenv("RLHF_WIDGETS_ANNOTATOR_PASSWORD", "")
    assert main(["add-annotator", pg_url, "rlhfw_test_cli"]) == 0
    with PreferenceStore(pg_url.replace("postgres@", "rlhfw_test_cli@", 1)) as store:
        assert store.record(1, "a", annotator="rlhfw_test_cli").pair_id == 1
    with pytest.raises(ValueError, match="already holds 3 pairs"):
        copy_store(tmp_path / "labels.sqlite", pg_url)


@pytest.mark.postgres
def test_sigkill_of_a_team_annotator_loses_no_acknowledged_label(pg_url: str) -> None:
    with PreferenceStore(pg_url) as store:
        store.add_pairs(make_rows(400))
        store.set_team(2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen([sys.executable, "-c", TEAM_WORKER, pg_url, "crashy", "400"], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=REPO)
    acknowledged = [int(worker.stdout.readline()) for _ in range(50)]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    acknowledged += [int(line) for line in worker.stdout.read().split()]
    with PreferenceStore(pg_url) as store:
        stored = {lbl.id for lbl in store.labels(include_history=True)}
    assert set(acknowledged) <= stored and len(stored) - len(acknowledged) <= 1  # at most one unprinted commit
