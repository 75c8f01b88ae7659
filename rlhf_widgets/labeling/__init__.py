"""Preference labeling: store (persistence) ← session (queue logic) ← widget (view), plus AI labelers.

    store = PreferenceStore("labels.sqlite"); store.add_pairs(rows)
    LabelingPanel(store)                                  # label in the notebook
    label_with(store, SimulatedAnnotator(), "simulated")  # or let a labeler do it
    store.to_dataset()                                    # TRL conversational preference Dataset
"""

from typing import Any

from rlhf_widgets.labeling.labelers import RewardModelLabeler, label_with
from rlhf_widgets.labeling.session import LabelingSession, ShownPair, Tally
from rlhf_widgets.labeling.store import ExportCounts, Label, Pair, PreferenceStore

__all__ = [
    "ExportCounts",
    "Label",
    "LabelingPanel",
    "LabelingSession",
    "Pair",
    "PreferenceStore",
    "RewardModelLabeler",
    "ShownPair",
    "Tally",
    "label_with",
]


def __getattr__(name: str) -> Any:
    """Import `LabelingPanel` on first use: scripts that only store and export never load ipywidgets."""
    if name == "LabelingPanel":
        from rlhf_widgets.labeling.widget import LabelingPanel

        return LabelingPanel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
