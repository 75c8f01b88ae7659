"""`copy_store`: every pair, label and setting of one preference store into an empty one, e.g. an SQLite file
into a team's PostgreSQL database.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_widgets.labeling.backends import Row, Transaction, as_datetime
from rlhf_widgets.labeling.store import PreferenceStore


def copy_store(source: str | Path | PreferenceStore, target: str | Path | PreferenceStore) -> dict[str, int]:
    """Copy every pair, label (undone ones and ids included) and setting of `source` into the empty `target`.

    The usual move: `copy_store("runs/labels.sqlite", "postgresql://owner@db/labels")` (also
    `python -m rlhf_widgets.labeling.postgres copy SOURCE URL`). One transaction: all or nothing. Pair
    and label ids, timestamps and texts are kept as they are. Returns {"pairs": n, "labels": n,
    "settings": n}. ValueError if `target` already holds pairs or labels.
    """
    src = source if isinstance(source, PreferenceStore) else PreferenceStore(source)
    try:
        dst = target if isinstance(target, PreferenceStore) else PreferenceStore(target)
        try:
            pairs = src._read("SELECT * FROM pairs ORDER BY id")
            labels = src._read("SELECT * FROM labels ORDER BY id")
            settings = src._read("SELECT key, value FROM settings ORDER BY key")
            dst._db.write(lambda tx: _copy_into(dst, tx, pairs, labels, settings), idempotent=False)
        finally:
            if dst is not target:
                dst.close()
    finally:
        if src is not source:
            src.close()
    return {"pairs": len(pairs), "labels": len(labels), "settings": len(settings)}


def _copy_into(dst: PreferenceStore, tx: Transaction, pairs: list[Row], labels: list[Row], settings: list[Row]) -> None:
    """`copy_store`'s one transaction on the target."""
    held = tx.execute("SELECT (SELECT COUNT(*) FROM pairs) AS pairs, (SELECT COUNT(*) FROM labels) AS labels")[0]
    if held["pairs"] or held["labels"]:
        raise ValueError(f"copy_store: {dst.target} already holds {held['pairs']} pairs and "
                         f"{held['labels']} labels; copy into an empty store")
    stamp = dst._db.timestamp
    tx.executemany(
        "INSERT INTO pairs (id, prompt, response_a, response_b, metadata, round, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(r["id"], r["prompt"], r["response_a"], r["response_b"], r["metadata"], r["round"],
          stamp(as_datetime(r["created_at"]))) for r in pairs],
    )
    tx.executemany(
        "INSERT INTO labels (id, pair_id, annotator, choice, note, shown_swapped, latency_s, created_at, undone, "
        "request_id, round) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r["id"], r["pair_id"], r["annotator"], r["choice"], r["note"], bool(r["shown_swapped"]), r["latency_s"],
          stamp(as_datetime(r["created_at"])), bool(r["undone"]), r["request_id"], r["round"]) for r in labels],
    )
    tx.execute("DELETE FROM settings")
    tx.executemany("INSERT INTO settings (key, value) VALUES (?, ?)", [(r["key"], r["value"]) for r in settings])
    dst._db.reset_ids(tx)
