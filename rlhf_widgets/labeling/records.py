"""What a preference store holds, as Python values: `Pair`, `Label` and the choices a label can make, and how a
database row becomes one of them (`pair_from_row`, `label_from_row`).

Kept apart from `PreferenceStore` so that the store and its team hand-out (`team.py`) can both build records
from rows without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rlhf_widgets.labeling.backends import Row, as_datetime
from rlhf_widgets.runtime.types import Prompt

Choice = Literal["a", "b", "tie", "skip"]
CHOICES: tuple[str, ...] = ("a", "b", "tie", "skip")

CURRENT_IDS = "SELECT MAX(id) FROM labels WHERE NOT undone GROUP BY pair_id, annotator"
"""SQL: the ids of the current label of every (pair, annotator): its latest label that is not undone"""


@dataclass(frozen=True)
class Pair:
    """A prompt with two candidate responses; `metadata` says e.g. which model/settings made each side."""

    id: int
    prompt: Prompt
    response_a: str
    response_b: str
    metadata: dict[str, Any]
    round: int | None = None
    """the round of the iterative loop (`rlhf_widgets.workflows.loop`) the pair was made in; None outside a loop"""


@dataclass(frozen=True)
class Label:
    """One labeling act. `choice` is un-randomised ("a" is always `Pair.response_a`, whatever side it was
    shown on); `shown_swapped` records that response_a was displayed on the right."""

    id: int
    pair_id: int
    annotator: str
    choice: Choice
    note: str | None
    shown_swapped: bool
    latency_s: float | None
    created_at: datetime
    undone: bool
    round: int | None = None
    """the loop round the label was given in (`PreferenceStore.round` when it was recorded); None outside a loop"""


def pair_from_row(row: Row) -> Pair:
    """A `pairs` table row as a `Pair`."""
    return Pair(id=row["id"], prompt=json.loads(row["prompt"]), response_a=row["response_a"],
                response_b=row["response_b"], metadata=json.loads(row["metadata"]), round=row["round"])


def label_from_row(row: Row) -> Label:
    """A `labels` table row as a `Label`."""
    return Label(id=row["id"], pair_id=row["pair_id"], annotator=row["annotator"], choice=row["choice"],
                 note=row["note"], shown_swapped=bool(row["shown_swapped"]), latency_s=row["latency_s"],
                 created_at=as_datetime(row["created_at"]), undone=bool(row["undone"]), round=row["round"])
