"""Static plotly figures of runs' metrics: `figure_from_log` (one run, its panels from `views.traces`) and
`overlay_figure` (one metric of several runs); `build_figure` draws the panels that `LiveDashboard` also draws.

Events (setting changes, pauses, stops, checkpoints) are dotted lines with a ▲ marker whose hover text says what
happened. Figures take the width of the output area (`autosize`, no fixed width). Axes read: plotly chooses round
ticks on every axis (a right-hand axis picks its own, never the left one's grid); an axis holding only quantities
that cannot be negative (`NON_NEGATIVE`: β, counts, lengths, rates) never extends below 0; steps, updates, rounds
and counts are ticked at whole numbers only. Each panel with several traces has its own legend, inside the panel's
top-left corner. A figure with no data says so instead of drawing an empty grid.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlhf_widgets.runtime.metrics import Event, MetricsLog
from rlhf_widgets.views.stage_views import Panel
from rlhf_widgets.views.style import EMPTY_MESSAGE, PALETTE, PLOT_TEMPLATE, plot_text
from rlhf_widgets.views.traces import TraceData, curve_records, metric_names, resolve_view, stage_of, view_traces

PANEL_HEIGHT = 250
"""Height of one row of panels, pixels."""
EVENT_COLOURS = {"setting": "#1f77b4", "paused": "#7f7f7f", "resumed": "#7f7f7f", "stopped": "#d62728",
                 "error": "#d62728", "saved": "#2ca02c", "alert": "#ff7f0e", "rollback": "#d62728"}
"""Marker colour per event kind (others: dark grey)."""
NON_NEGATIVE = ("objective/kl_coef", "*response_length", "*mean_length", "loop/words", "*_labels", "*num_eos_tokens",
                "episode", "*clipfrac*", "*accurac*", "*win_rate*", "*agreement*", "frac_*", "*clipped_ratio",
                "learning_rate", "lr", "grad_norm", "policy/approxkl_avg", "reward/ensemble_spread", "reward_std")
"""Metrics (`fnmatch` patterns) that cannot be negative; an axis holding only these starts at 0 or above."""
COUNTS = ("*_labels", "*num_eos_tokens", "episode")
"""Metrics that count things; their axis is ticked at whole numbers."""


def _hover(trace: TraceData, panel: Panel) -> dict[str, Any]:
    if panel.x is None:
        return {"hovertemplate": f"{plot_text(trace.name)}: %{{y:.4g}}<extra></extra>"}
    return {"customdata": trace.steps,
            "hovertemplate": (f"update %{{customdata}}<br>{plot_text(panel.x)} %{{x:.4g}}<br>"
                              f"{plot_text(trace.name)} %{{y:.4g}}<extra></extra>")}


def _marker(trace: TraceData, panel: Panel) -> dict[str, Any]:
    """Eval points: diamonds. x–y panels: dots shading from pale (first update) to full colour (latest)."""
    if panel.x is not None:
        pale = "#" + "".join(f"{int(trace.color[i:i + 2], 16) // 4 + 191:02x}" for i in (1, 3, 5))
        return {"size": 7, "color": trace.steps, "colorscale": [[0, pale], [1, trace.color]], "showscale": False}
    if trace.dashed:
        return {"size": 7, "color": trace.color, "symbol": "diamond"}
    return {"size": 4, "color": trace.color}


def event_decorations(events: Sequence[Event], refs: Sequence[tuple[str, str] | None]) -> tuple[list, list]:
    """(shapes, annotations): per step with events, a dotted line in every step panel and a ▲ at its foot whose
    hover text lists the events at that step. `refs`: (x axis, y axis) per panel, None for x–y panels."""
    by_step: dict[int, list[Event]] = {}
    for event in events:
        by_step.setdefault(event.step, []).append(event)
    shapes, annotations = [], []
    for step, group in by_step.items():
        text = "<br>".join(plot_text(e.message) for e in group)
        color = EVENT_COLOURS.get(group[-1].kind, "#555555")
        for ref in refs:
            if ref is None:
                continue
            xref, yref = ref
            shapes.append({"type": "line", "x0": step, "x1": step, "y0": 0, "y1": 1, "xref": xref,
                           "yref": f"{yref} domain", "line": {"color": "rgba(90,90,90,0.45)", "width": 1,
                                                               "dash": "dot"}})
            annotations.append({"x": step, "y": 0, "xref": xref, "yref": f"{yref} domain", "text": "▲",
                                "showarrow": False, "yanchor": "bottom", "font": {"size": 12, "color": color},
                                "hovertext": f"step {step}<br>{text}", "captureevents": True})
    return shapes, annotations


def _axis_name(ref: str) -> str:
    """"x2" → "xaxis2" (the layout key of an axis reference)."""
    return f"{ref[0]}axis{ref[1:]}"


def _is(metric: str, patterns: Sequence[str]) -> bool:
    """`metric` (or the training metric an `eval_` one twins) matches one of the `fnmatch` `patterns`."""
    return any(fnmatch.fnmatchcase(metric.removeprefix("eval_"), p) for p in patterns)


def whole_number_ticks(values: Sequence[float]) -> dict[str, Any]:
    """Axis settings that tick `values` (steps, rounds, counts) at whole numbers only.

    Plotly draws at most 10 ticks on an axis, at a step of 1, 2 or 5 × 10ⁿ: from a span of 10 up its own choice is
    whole; below, it would tick 1, 1.5, 2 — so there the step is fixed at 1."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and max(finite) - min(finite) >= 10:
        return {"tickmode": "auto", "tick0": None, "dtick": None}
    return {"tickmode": "linear", "tick0": 0, "dtick": 1}


def _axis_settings(traces: Sequence[TraceData], step_axis: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(x, y) axis settings for `traces`, the traces on one y axis: whole-number ticks for steps and counts, a range
    from 0 up when every trace is a quantity that cannot be negative."""
    x = whole_number_ticks([v for t in traces for v in t.x]) if step_axis else {}
    y: dict[str, Any] = {"tickmode": "auto"}  # (not plotly.js 3's "sync" for a right-hand axis: the left one's grid)
    if all(_is(t.name, COUNTS) for t in traces):
        y = whole_number_ticks([v for t in traces for v in t.y])
    if all(_is(t.name, NON_NEGATIVE) for t in traces):
        y["rangemode"] = "nonnegative"
    return x, y


def build_figure(panels: Sequence[Panel], traces: Sequence[TraceData], events: Sequence[Event] = (),
                 max_cols: int = 3, title: str | None = None, empty_message: str = EMPTY_MESSAGE) -> go.Figure:
    """The figure of drawn `panels` and their `traces` (from `view_traces`): row-major, `max_cols` wide (default
    3), the width of wherever it is shown. Multi-trace panels carry their own legend inside the panel. With no
    panels, the figure shows `empty_message` (default "no data yet") and no axes."""
    return build_figure_parts(panels, traces, events, max_cols, title, empty_message)[0]


def build_figure_parts(panels: Sequence[Panel], traces: Sequence[TraceData], events: Sequence[Event], max_cols: int,
                       title: str | None, empty_message: str = EMPTY_MESSAGE,
                       ) -> tuple[go.Figure, list[tuple[str, str] | None], tuple]:
    """(figure, (x, y) axis references per panel — None for x–y panels —, the subplot-title annotations): what
    `build_figure` draws, with what a live figure needs to place later events (`event_decorations`)."""
    n = max(len(panels), 1)
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    with_right = {t.panel for t in traces if t.right}
    specs = [[{"secondary_y": (r * cols + c) in with_right} for c in range(cols)] for r in range(rows)]
    fig = make_subplots(rows=rows, cols=cols, specs=specs, subplot_titles=[p.title for p in panels] or None,
                        horizontal_spacing=min(0.13 if with_right else 0.08, 0.9 / cols),
                        vertical_spacing=min(110 / (rows * PANEL_HEIGHT), 0.9 / max(rows - 1, 1)))
    refs: list[tuple[str, str] | None] = []
    legends: dict[str, Any] = {}
    for k, panel in enumerate(panels):
        row, col = k // cols + 1, k % cols + 1
        own = [t for t in traces if t.panel == k]
        legend = f"legend{k + 2}" if len({t.name for t in own}) > 1 else None
        for trace in own:
            fig.add_trace(go.Scatter(
                x=np.asarray(trace.x, dtype=float), y=np.asarray(trace.y, dtype=float), name=trace.label,
                meta=trace.name, mode="markers" if panel.x else "lines+markers", marker=_marker(trace, panel),
                line={"color": trace.color, "dash": "dash" if trace.dashed else "solid"},
                showlegend=legend is not None, legend=legend or "legend", **_hover(trace, panel),
            ), row=row, col=col, secondary_y=trace.right if k in with_right else None)
        cell = fig.get_subplot(row, col)
        x_ref = cell.xaxis.plotly_name.replace("axis", "")
        y_ref = cell.yaxis.plotly_name.replace("axis", "")
        refs.append((x_ref, y_ref) if panel.x is None else None)
        x_axis, left_axis = _axis_settings([t for t in own if not t.right], panel.x is None)
        fig.update_xaxes(title_text=panel.x_title, title_standoff=2, row=row, col=col, **x_axis)
        fig.update_yaxes(title_text=panel.left_title, title_standoff=4, range=panel.left_range, row=row, col=col,
                         secondary_y=False, **left_axis)
        right_colors = {t.color for t in own if t.right}
        if k in with_right:
            _, right_axis = _axis_settings([t for t in own if t.right], False)
            fig.update_yaxes(title_text=panel.right_title, title_standoff=4, showgrid=False, row=row, col=col,
                             secondary_y=True, range=panel.right_range,
                             color=right_colors.pop() if len(right_colors) == 1 else None, **right_axis)
        if legend:  # inside the panel's top-left corner, one entry a line: it never reaches another panel
            x_dom = fig.layout[_axis_name(x_ref)].domain
            y_dom = fig.layout[_axis_name(y_ref)].domain
            legends[legend] = {"x": x_dom[0], "y": y_dom[1], "xanchor": "left", "yanchor": "top",
                               "orientation": "v", "font": {"size": 10}, "bgcolor": "rgba(255,255,255,0.75)",
                               "tracegroupgap": 0}
    for annotation in fig.layout.annotations:  # subplot titles
        annotation.update(yshift=6, font={"size": 14})
    titles = tuple(fig.layout.annotations)
    shapes, annotations = event_decorations(events, refs)
    if not panels:  # a message, not an empty grid
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        annotations.append({"text": plot_text(empty_message), "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                            "showarrow": False, "font": {"size": 16, "color": "#7f7f7f"}})
    fig.update_layout(
        title=title, template=PLOT_TEMPLATE, autosize=True, height=70 + rows * PANEL_HEIGHT,
        hovermode="x unified", margin={"l": 55, "r": 55, "t": 80 if title else 45, "b": 40},
        shapes=shapes, annotations=[*titles, *annotations], **legends,
    )
    return fig, refs, titles


def _load(source: MetricsLog | str | Path) -> MetricsLog:
    return source if isinstance(source, MetricsLog) else MetricsLog.load(source)


def figure_from_log(
    source: MetricsLog | str | Path, view: str | Sequence[Panel] | None = "auto", *,
    metrics: Sequence[str] | None = None, max_cols: int = 3, title: str | None = None,
) -> go.Figure:
    """A static plotly figure of a run (a MetricsLog or its JSONL path), the same as `LiveDashboard` draws.

    `view`: "auto" (default: the designed view of the run's stage, else all metrics), "all" (every metric, one
    per panel), a stage name ("ppo", "sft", "reward", "dpo", "grpo", "rloo") or a sequence of `Panel`s.
    `metrics`: show only these metrics (names, `fnmatch` patterns, or prefixes such as "objective"), one per
    panel. `max_cols`: panels per row (default 3); `title`: default None, the log's run name ("" for none).
    Save it with `fig.write_html(path)`.
    """
    log = _load(source)
    records = curve_records(log.records)
    panels = resolve_view(view, stage_of(log), metric_names(records), metrics)
    drawn, traces = view_traces(panels, records)
    return build_figure(drawn, traces, log.events(), max_cols, log.run_name if title is None else title or None)


def overlay_traces(runs: Mapping[str, MetricsLog], metric: str) -> list[go.Scatter]:
    """One line per run: `metric` against the step, coloured by run in order."""
    traces = []
    for k, (name, log) in enumerate(runs.items()):
        steps, values = [], []
        for step, metrics in curve_records(log.records):
            if metric in metrics:
                steps.append(step)
                values.append(metrics[metric])
        traces.append(go.Scatter(
            x=np.asarray(steps, dtype=float), y=np.asarray(values, dtype=float), name=name, mode="lines+markers",
            marker={"size": 4}, line={"color": PALETTE[k % len(PALETTE)]},
            hovertemplate=f"{plot_text(name)}: %{{y:.4g}}<extra></extra>"))
    return traces


def overlay_figure(runs: Mapping[str, MetricsLog | str | Path], metric: str, title: str | None = None) -> go.Figure:
    """One metric of several runs on one axis (the same quantity, so one scale): `runs` maps a run's name to its
    MetricsLog or JSONL path. Raises ValueError when no run logged `metric` (the message lists what they did)."""
    logs = {name: _load(source) for name, source in runs.items()}
    if logs and not any(metric in log.names() for log in logs.values()):
        known = sorted({n for log in logs.values() for n in log.names()})
        raise ValueError(f"overlay_figure: no run logged {metric!r}; logged metrics: {known}")
    fig = go.Figure(overlay_traces(logs, metric))
    fig.update_layout(title=title or metric, template=PLOT_TEMPLATE, autosize=True, height=360,
                      hovermode="x unified", xaxis_title="step", yaxis_title=metric, legend_title_text="run",
                      margin={"l": 55, "r": 20, "t": 60, "b": 40})
    return fig

