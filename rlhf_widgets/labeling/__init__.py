"""Preference labeling: store (persistence) ← session (queue logic) ← widget (view), plus AI labelers.

    store = prepare_pairs("sandbox", "labels.sqlite", model="runs/sft/final")  # a policy's sample pairs, once
    store = PreferenceStore("postgresql://alice@host/labels")  # or a team's shared PostgreSQL database
    LabelingPanel(store)                                      # label in the notebook
    label_with(store, SimulatedAnnotator(), "simulated")      # or let a labeler do it
    store.to_dataset()                                        # TRL conversational preference Dataset
"""

from typing import Any

from rlhf_widgets.labeling.backends import StoreUnavailable
from rlhf_widgets.labeling.export import ExportCounts
from rlhf_widgets.labeling.labelers import JudgeReward, RewardModelLabeler, label_with
from rlhf_widgets.labeling.records import Label, Pair
from rlhf_widgets.labeling.session import LabelingSession, ShownPair, Tally
from rlhf_widgets.labeling.store import PreferenceStore
from rlhf_widgets.labeling.team import TeamProgress, TeamSettings
from rlhf_widgets.labeling.transfer import copy_store

__all__ = [
    "ExportCounts",
    "JudgeReward",
    "Label",
    "LabelingPanel",
    "LabelingSession",
    "Pair",
    "PreferenceStore",
    "RewardModelLabeler",
    "ShownPair",
    "StoreUnavailable",
    "Tally",
    "TeamProgress",
    "TeamSettings",
    "copy_store",
    "label_with",
    "prepare_pairs",
]


def __getattr__(name: str) -> Any:
    """Import `LabelingPanel` and `prepare_pairs` on first use: scripts that only store and export never
    load ipywidgets, torch or transformers."""
    if name == "LabelingPanel":
        from rlhf_widgets.labeling.widget import LabelingPanel

        return LabelingPanel
    if name == "prepare_pairs":
        from rlhf_widgets.labeling.pairs import prepare_pairs

        return prepare_pairs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
