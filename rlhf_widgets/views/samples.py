"""The samples a run logged, for people: `samples_html` (an HTML table of one `SampleBatch`, every cell escaped)
and `SamplesTable`, the widget that shows the newest batch while a trainer logs."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets

from rlhf_widgets.runtime.metrics import Entry, MetricsLog, SampleBatch


def _format_cell(value: Any) -> str:
    """A table cell's text, HTML-escaped: floats to 4 significant digits, everything else via str()."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return html.escape(text, quote=True)


def samples_html(batch: SampleBatch | None, max_rows: int = 8) -> str:
    """HTML table of the first `max_rows` (default 8) rows of `batch`; every cell and header is escaped.

    Model output is untrusted text: `<script>` or markdown in a response shows as literal characters.
    """
    if batch is None or not batch.rows:
        return "<p><i>No samples logged yet.</i></p>"
    columns = list(dict.fromkeys(key for row in batch.rows for key in row))
    shown = batch.rows[:max_rows]
    stage = f" ({html.escape(batch.stage)})" if batch.stage else ""
    caption = f"Samples at step {batch.step}{stage}: {len(shown)} of {len(batch.rows)}"
    cell = ("padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top;text-align:left;"
            "white-space:pre-wrap;max-width:40em")
    head = "".join(f'<th style="{cell}">{html.escape(c)}</th>' for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td style="{cell}">{_format_cell(row.get(c, ""))}</td>' for c in columns) + "</tr>"
        for row in shown
    )
    return (f'<table style="border-collapse:collapse;font-size:13px">'
            f'<caption style="text-align:left;font-weight:bold">{caption}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


class SamplesTable:
    """The latest logged samples (prompt, response, score, kl, …) as an HTML table widget.

    Shows the first `max_rows` (default 8) rows of the newest `log_samples` batch and follows new
    batches until `close()`. All text is HTML-escaped. `.widget` is the `ipywidgets.HTML` shown.
    """

    def __init__(self, metrics_log: MetricsLog, max_rows: int = 8) -> None:
        self.max_rows = max_rows
        self._latest: SampleBatch | None = None
        self.widget = ipywidgets.HTML()
        self.widget.add_class("rlhfw-samples")
        self._live = False  # during the replay of old batches only the newest is kept, then drawn once
        self._unsubscribe = metrics_log.subscribe(self._remember, replay=True)
        self._live = True
        self._render()

    def _remember(self, entry: Entry) -> None:
        if isinstance(entry, SampleBatch):
            self._latest = entry
            if self._live:
                self._render()

    def _render(self) -> None:
        self.widget.value = samples_html(self._latest, self.max_rows)

    def close(self) -> None:
        """Stop following the log; the last table stays shown."""
        self._unsubscribe()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self.widget._repr_mimebundle_(**kwargs)
