"""The look every figure shares: one plotly template (`PLOT_TEMPLATE`), the colours of traces and of the things
figures compare (chosen / rejected, proxy / gold), what an empty figure says, and `plot_text`, the one escape of text
that plotly shows."""

from __future__ import annotations

import html
from typing import Any

PLOT_TEMPLATE = "plotly_white"
"""The one plotly template of every figure (notebooks and the report)."""
PALETTE = ("#1f77b4", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
"""Trace colours in a panel, in order (left axis)."""
CHOSEN, REJECTED = "#1f77b4", "#d62728"
PROXY, GOLD = "#ff7f0e", "#2ca02c"
ENSEMBLE_MEAN, SPREAD = "#222222", "#7f7f7f"
EMPTY_MESSAGE = "no data yet"
"""What a figure with nothing to draw says."""


def plot_text(text: Any) -> str:
    """`text` escaped for a plotly label, title or hover text: `&`, `<`, `>` only. Plotly.js reads its labels as a
    little HTML and decodes only a few entities (`&lt;`, `&gt;`, `&amp;`, numeric ones): `&quot;` would show as it
    is, so quotes stay quotes."""
    return html.escape(str(text), quote=False)
