"""Every figure of the workbench, in one place: static plotly figures, and the live widgets built on them.

Views only: they read a `MetricsLog` (or the plain numbers `evaluation` computes) and draw; they never touch
training state, and training modules never import this one.

- **Static figures** (`go.Figure`; the report embeds them, a notebook shows them): `figure_from_log` (a run's
  metrics), `reward_report_figures`, `overoptimization_figure`.
- **Live widgets** (ipywidgets / `FigureWidget`, following a `MetricsLog` while a trainer writes to it):
  `LiveDashboard` (built from the same figure as `figure_from_log`), `SamplesTable`.

Metric panels group metrics by the prefix before the first "/" (`objective/kl`, `objective/scores` →
"objective"; `loss/policy_avg`, `loss/value_avg` → "loss"). An evaluation metric joins its training twin,
drawn dashed (`eval_loss` → "loss", `eval_rewards/margins` → "rewards"). Other un-prefixed keys (`grad_norm`,
`learning_rate`, `entropy`, PPO's `lr`, `eps`) get one panel each: they have different units, so sharing an
axis would flatten all but the largest. Trainer bookkeeping (`epoch`, runtimes, throughputs, `total_flos`, the
end-of-run `train_loss` average) is hidden unless asked for by name. Events (lr changes, stops, checkpoints)
are dotted vertical lines in every panel, labelled in the first.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlhf_widgets.metrics import Entry, Event, MetricRecord, MetricsLog, SampleBatch

HIDDEN_NAMES = frozenset({"epoch", "total_flos", "train_loss"})
"""Trainer bookkeeping that `metrics=None` leaves out (name it in `metrics` to see it)."""
HIDDEN_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")
"""Suffixes of timing / throughput keys that `metrics=None` leaves out."""

PANEL_HEIGHT = 260
"""Height of one row of panels, pixels."""

Series = dict[str, tuple[list[int], list[float]]]
"""metric name → (steps, values)"""


# ---------------------------------------------------------------------------------------------- static figures
def panel_of(name: str) -> str:
    """Panel a metric is drawn in: its prefix before "/", with a leading "eval_" ignored."""
    return name.removeprefix("eval_").split("/", 1)[0]


def _is_shown(name: str, metrics: Sequence[str] | None) -> bool:
    if metrics is None:
        return name not in HIDDEN_NAMES and not name.endswith(HIDDEN_SUFFIXES)
    return name in metrics or panel_of(name) in metrics


def panels(names: Sequence[str], metrics: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
    """Group metric `names` into (panel, [metric names]) in display order.

    `metrics`: metric names or panel names to show, in the order wanted; default None shows every
    metric but trainer bookkeeping (`HIDDEN_NAMES`, `HIDDEN_SUFFIXES`), panels in first-logged order.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        if _is_shown(name, metrics):
            groups.setdefault(panel_of(name), []).append(name)
    ordered = list(groups.items())
    if metrics is not None:
        def rank(item: tuple[str, list[str]]) -> int:
            panel, members = item
            return min(metrics.index(n) if n in metrics else metrics.index(panel) for n in members)

        ordered.sort(key=rank)
    return ordered


def _axis_ref(axis: str, index: int) -> str:
    """Plotly axis reference of panel `index` (0-based): "x", "x2", …"""
    return axis if index == 0 else f"{axis}{index + 1}"


def _event_shapes(events: Sequence[Event], n_panels: int) -> list[dict[str, Any]]:
    """A dotted vertical line per event in each panel; the first panel's line carries the message."""
    shapes = []
    for event in events:
        text = event.message if len(event.message) <= 32 else event.message[:31] + "…"
        for k in range(n_panels):
            shape: dict[str, Any] = {
                "type": "line", "x0": event.step, "x1": event.step, "y0": 0, "y1": 1,
                "xref": _axis_ref("x", k), "yref": f"{_axis_ref('y', k)} domain",
                "line": {"color": "rgba(90,90,90,0.6)", "width": 1, "dash": "dot"},
            }
            if k == 0:
                shape["label"] = {"text": text, "textposition": "end", "font": {"size": 10}}
            shapes.append(shape)
    return shapes


def _build_figure(
    layout: list[tuple[str, list[str]]], series: Series, events: Sequence[Event], max_cols: int,
    title: str | None,
) -> go.Figure:
    """Static figure: one subplot per panel (row-major, `max_cols` wide), one trace per metric."""
    n = max(len(layout), 1)
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[panel for panel, _ in layout] or None)
    for k, (panel, names) in enumerate(layout):
        row, col = k // cols + 1, k % cols + 1
        for name in names:
            steps, values = series[name]
            fig.add_scatter(
                x=np.asarray(steps, dtype=float), y=np.asarray(values, dtype=float), name=name,
                mode="lines+markers", marker={"size": 4},
                line={"dash": "dash"} if name.startswith("eval_") else None,
                legendgroup=panel, legendgrouptitle_text=panel, hovertemplate="%{y:.4g}",
                row=row, col=col,
            )
        if k + cols >= len(layout):  # lowest panel of its column
            fig.update_xaxes(title_text="step", row=row, col=col)
    fig.update_layout(
        title=title, template="plotly_white", height=60 + rows * PANEL_HEIGHT, hovermode="x unified",
        margin={"l": 50, "r": 20, "t": 70 if title else 40, "b": 40}, legend={"groupclick": "toggleitem"},
        shapes=_event_shapes(events, len(layout)),
    )
    return fig


def figure_from_log(
    source: MetricsLog | str | Path, metrics: Sequence[str] | None = None, max_cols: int = 3,
    title: str | None = None,
) -> go.Figure:
    """A static plotly figure of a run (a MetricsLog or its JSONL path), grouped like `LiveDashboard`.

    `metrics`: metric or panel names to show (default None: all but bookkeeping); `max_cols`: panels
    per row (default 3); `title`: default the log's run name. Save it with `fig.write_html(path)`.
    """
    log = source if isinstance(source, MetricsLog) else MetricsLog.load(source)
    names = log.names()
    series = {name: log.series(name) for name in names}
    return _build_figure(panels(names, metrics), series, log.events(), max_cols, title or log.run_name)


CHOSEN, REJECTED = "#1f77b4", "#d62728"
PROXY, GOLD = "#ff7f0e", "#2ca02c"


def _bin_label(low: float, high: float) -> str:
    if math.isinf(low):
        return f"< {high:g}"
    if math.isinf(high):
        return f"≥ {low:g}"
    return f"[{low:g}, {high:g})"


def reward_report_figures(report: Mapping) -> dict[str, go.Figure]:
    """Figures of an `evaluation.reward_report` dict.

    Returns `{"scores": …, "calibration": …, "length": …}`: histograms of chosen vs rejected rewards,
    predicted P(chosen ≻ rejected) against the observed rate (the diagonal is perfect calibration;
    marker size = pairs in the bin), and held-out accuracy per bin of word-count difference
    (chosen − rejected) with the share of pairs where the RM picks the longer response in the title.
    """
    scores = go.Figure()
    scores.add_histogram(x=report["chosen_scores"], name="chosen", marker_color=CHOSEN, opacity=0.6)
    scores.add_histogram(x=report["rejected_scores"], name="rejected", marker_color=REJECTED, opacity=0.6)
    scores.update_layout(barmode="overlay", title=(
        f"Reward of chosen vs rejected (accuracy {report['accuracy']:.1%}, mean margin "
        f"{report['mean_margin']:.2f}, n={report['n_pairs']})"),
        xaxis_title="reward (raw)", yaxis_title="pairs")

    cal = report["calibration"]
    calibration = go.Figure()
    calibration.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot", "color": "gray"})
    biggest = max((c["count"] for c in cal), default=1)
    calibration.add_scatter(
        x=[c["predicted"] for c in cal], y=[c["observed"] for c in cal], mode="lines+markers", name="reward model",
        marker={"size": [6 + 18 * c["count"] / biggest for c in cal]},
        text=[f"{c['count']} comparisons" for c in cal],
    )
    calibration.update_layout(
        title=f"Calibration (ECE {report['expected_calibration_error']:.3f})",
        xaxis_title="predicted P(first ≻ second) = σ(r₁ − r₂)", yaxis_title="observed rate",
        xaxis_range=[0, 1], yaxis_range=[0, 1],
    )

    length_info = report["length"]
    bins = length_info["bins"]
    length = go.Figure()
    length.add_bar(x=[_bin_label(b["low"], b["high"]) for b in bins], y=[b["accuracy"] for b in bins],
                   text=[f"n={b['count']}" for b in bins], name="accuracy")
    title = f"Accuracy by length difference — RM picks the longer response {length_info['prefers_longer']:.0%}"
    if "gold_prefers_longer" in length_info:
        title += f" (gold: {length_info['gold_prefers_longer']:.0%})"
    length.update_layout(title=title, xaxis_title="words(chosen) − words(rejected)",
                         yaxis_title="held-out accuracy", yaxis_range=[0, 1])
    return {"scores": scores, "calibration": calibration, "length": length}


def overoptimization_figure(curves: Mapping[str, Sequence[Mapping[str, float]]]) -> go.Figure:
    """Proxy and gold reward against √KL, one pair of lines per method (Gao et al. 2022).

    `curves` maps a method name ("PPO", "best-of-N") to points `{"sqrt_kl", "proxy", "gold"}` as
    `evaluation.ppo_overoptimization_curve` / `best_of_n_curve` return them. Proxy and gold have
    different units, so each gets its own axis: proxy on the left panel, gold on the right.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("proxy reward (reward model)", "gold reward"),
                        horizontal_spacing=0.12)
    dashes = ["solid", "dash", "dot", "dashdot"]
    for i, (name, points) in enumerate(curves.items()):
        x = [p["sqrt_kl"] for p in points]
        dash = dashes[i % len(dashes)]
        fig.add_scatter(x=x, y=[p["proxy"] for p in points], mode="lines+markers", name=f"{name} proxy",
                        line={"color": PROXY, "dash": dash}, row=1, col=1)
        fig.add_scatter(x=x, y=[p["gold"] for p in points], mode="lines+markers", name=f"{name} gold",
                        line={"color": GOLD, "dash": dash}, row=1, col=2)
    fig.update_xaxes(title_text="√KL(policy ‖ SFT)  [√nats]")
    fig.update_layout(title="Overoptimization: the proxy keeps rising while gold peaks and falls")
    return fig


# ---------------------------------------------------------------------------------------------- live widgets
class LiveDashboard:
    """Live plotly dashboard of a MetricsLog, updated in place while a trainer logs.

    Display it by ending a cell with it (or `display(dashboard)`); `.widget` is the ipywidgets VBox
    that is shown. Each new point extends its trace inside `batch_update()`; redraws happen at most
    every `min_interval` seconds (default 0.5) — points arriving in between are drawn together by a
    timer, so the last point always appears. When a metric arrives that has no trace yet, a fresh
    FigureWidget with the new panel layout replaces the old one inside the same VBox (zoom resets).

    `metrics`: metric or panel names to show, in order (default None: all but trainer bookkeeping);
    `max_cols`: panels per row (default 3); `title`: default the log's run name.
    The dashboard subscribes on creation (drawing the history so far); `close()` stops it.
    """

    def __init__(
        self, metrics_log: MetricsLog, metrics: Sequence[str] | None = None, max_cols: int = 3,
        title: str | None = None, min_interval: float = 0.5,
    ) -> None:
        if max_cols < 1:
            raise ValueError(f"LiveDashboard: max_cols={max_cols} must be at least 1")
        self.metrics_log = metrics_log
        self.metrics = list(metrics) if metrics is not None else None
        self.max_cols = max_cols
        self.title = title or metrics_log.run_name
        self.min_interval = min_interval
        self._series: Series = {}
        self._events: list[Event] = []
        self._pending: list[Entry] = []
        self._drawn: list[str] = []  # metric names that have a trace, in trace order
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._last_draw = time.monotonic()  # the history replayed below is drawn by one flush()
        self._closed = False
        self.figure = go.FigureWidget(_build_figure([], {}, [], max_cols, self.title))
        self.widget = ipywidgets.VBox([self.figure])
        self._unsubscribe = metrics_log.subscribe(self._on_entry, replay=True)
        self.flush()

    def _on_entry(self, entry: Entry) -> None:
        with self._lock:
            if self._closed or isinstance(entry, SampleBatch):
                return
            self._pending.append(entry)
            wait = self._last_draw + self.min_interval - time.monotonic()
            if wait <= 0:
                self.flush()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Draw every point and event received so far now (the throttle does this on its own)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            pending, self._pending = self._pending, []
            self._last_draw = time.monotonic()
            if not pending:
                return
            changed: set[str] = set()
            new_events = False
            for entry in pending:
                if isinstance(entry, MetricRecord):
                    for name, value in entry.metrics.items():
                        steps, values = self._series.setdefault(name, ([], []))
                        steps.append(entry.step)
                        values.append(value)
                        changed.add(name)
                else:
                    self._events.append(entry)
                    new_events = True
            layout = panels(list(self._series), self.metrics)
            names = [name for _, members in layout for name in members]
            if names != self._drawn:
                self._replace_figure(layout, names)
                return
            with self.figure.batch_update():
                for index, name in enumerate(names):
                    if name in changed:
                        steps, values = self._series[name]
                        self.figure.data[index].x = np.asarray(steps, dtype=float)
                        self.figure.data[index].y = np.asarray(values, dtype=float)
                if new_events:
                    self.figure.layout.shapes = _event_shapes(self._events, len(layout))

    def _replace_figure(self, layout: list[tuple[str, list[str]]], names: list[str]) -> None:
        """New panels or traces: build a new FigureWidget and swap it into the displayed VBox."""
        static = _build_figure(layout, self._series, self._events, self.max_cols, self.title)
        old, self.figure = self.figure, go.FigureWidget(static)
        self.widget.children = (self.figure,)
        old.close()
        self._drawn = names

    def close(self) -> None:
        """Stop following the log: unsubscribe, draw what was pending, keep the last picture shown."""
        self._unsubscribe()
        with self._lock:
            self.flush()
            self._closed = True

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self.widget._repr_mimebundle_(**kwargs)


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
