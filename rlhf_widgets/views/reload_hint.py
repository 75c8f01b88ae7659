"""A line under a panel that survives a page reload: the panel's widgets may not, the run behind them does.

A notebook saved without its widget state (JupyterLab's default) shows a widget's output after a reload as "Error
displaying widget: model not found": JupyterLab's widget renderer answers for the widget's mime type and never
falls back to the bundle's text/plain. So the hint is an output of its own — text/plain and text/html, no widget —
displayed right after the panel, kept in the saved notebook and shown by every frontend.
"""

from __future__ import annotations

import html

import ipywidgets


def hint_bundle(hint: str) -> dict[str, str]:
    """`hint` as a raw mimebundle: the text, and a muted HTML line (class `rlhfw-reload-hint`)."""
    return {"text/plain": hint,
            "text/html": f'<div class="rlhfw-reload-hint" style="color:#777;font-size:0.9em">{html.escape(hint)}</div>'}


def display_with_hint(widget: ipywidgets.Widget, hint: str) -> None:
    """Display `widget` (its own mimebundle: a panel may call this from its `_ipython_display_`), then `hint` as a
    separate plain output."""
    from IPython.display import display

    display(widget._repr_mimebundle_(), raw=True)
    display(hint_bundle(hint), raw=True)
