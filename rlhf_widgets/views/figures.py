"""Every figure of the workbench, in one place: static plotly figures, and the live widgets built on them.

Views only: they read a `MetricsLog` (or the plain numbers `evaluation` computes) and draw; they never touch
training state, and training modules never import this one.

- **Static figures** (`go.Figure`; the report embeds them, a notebook shows them): `figure_from_log` (a run's
  metrics), `overlay_figure` (one metric of several runs), `reward_report_figures`, `overoptimization_figure`.
- **Live widgets** (ipywidgets / `FigureWidget`, following a `MetricsLog` while a trainer writes to it):
  `LiveDashboard` (built from the same figure as `figure_from_log`), `RunComparison` (several runs overlaid),
  `SamplesTable`.

A run is drawn in a **designed view** when its stage is known (`STAGE_VIEWS`: SFT, reward model, DPO, GRPO /
RLOO, PPO): panels that answer the stage's questions — for PPO, is the reward going up and at what KL, is the
policy update healthy, is the value function learning. Each panel keeps metrics of one scale on one axis: a
metric of another unit or scale goes on the panel's right-hand axis (the gold score beside the reward model's,
β beside the KL), never on the same linear axis. Evaluation metrics (`eval_loss`, …) are their own dashed trace
beside their training twin. The **all-metrics view** (`view="all"`) draws every logged metric, one per panel.
Events (setting changes, pauses, stops, checkpoints) are dotted lines with a ▲ marker whose hover text says
what happened. Figures take the width of the output area (`autosize`, no fixed width).

Axes read: plotly chooses round ticks on every axis (a right-hand axis picks its own, never the left one's grid); an
axis holding only quantities that cannot be negative (`NON_NEGATIVE`: β, counts, lengths, rates) never extends
below 0; steps, updates, rounds and counts are ticked at whole numbers only. Each panel with several traces has its
own legend, inside the panel's top-left corner. Every figure uses one template (`PLOT_TEMPLATE`); text shown by
plotly is escaped once, with `plot_text`. A figure with no data says so instead of drawing an empty grid.
"""

from __future__ import annotations

import fnmatch
import html
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ipywidgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlhf_widgets.runtime.metrics import Entry, Event, MetricRecord, MetricsLog, SampleBatch

HIDDEN_NAMES = frozenset({"epoch", "total_flos", "train_loss"})
"""Trainer bookkeeping the all-metrics view leaves out (name it in `metrics` to see it)."""
HIDDEN_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")
"""Suffixes of timing / throughput keys the all-metrics view leaves out."""
SUMMARY_KEY = "train_runtime"
"""A record holding this key is a trainer's end-of-run summary (see `curve_records`)."""

PANEL_HEIGHT = 250
"""Height of one row of panels, pixels."""
PALETTE = ("#1f77b4", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
"""Trace colours in a panel, in order (left axis)."""
CHOSEN, REJECTED = "#1f77b4", "#d62728"
PROXY, GOLD = "#ff7f0e", "#2ca02c"
ENSEMBLE_MEAN, SPREAD = "#222222", "#7f7f7f"
EVENT_COLOURS = {"setting": "#1f77b4", "paused": "#7f7f7f", "resumed": "#7f7f7f", "stopped": "#d62728",
                 "error": "#d62728", "saved": "#2ca02c", "alert": "#ff7f0e", "rollback": "#d62728"}
"""Marker colour per event kind (others: dark grey)."""
PLOT_TEMPLATE = "plotly_white"
"""The one plotly template of every figure (notebooks and the report)."""
NON_NEGATIVE = ("objective/kl_coef", "*response_length", "*mean_length", "loop/words", "*_labels", "*num_eos_tokens",
                "episode", "*clipfrac*", "*accurac*", "*win_rate*", "*agreement*", "frac_*", "*clipped_ratio",
                "learning_rate", "lr", "grad_norm", "policy/approxkl_avg", "reward/ensemble_spread", "reward_std")
"""Metrics (`fnmatch` patterns) that cannot be negative; an axis holding only these starts at 0 or above."""
COUNTS = ("*_labels", "*num_eos_tokens", "episode")
"""Metrics that count things; their axis is ticked at whole numbers."""
EMPTY_MESSAGE = "no data yet"
"""What a figure with nothing to draw says."""


@dataclass(frozen=True)
class Panel:
    """One subplot of a designed view.

    `left` / `right`: metric names (or `fnmatch` patterns such as `rewards/*/mean`) on the left and on the
    right-hand y axis; `left_title` / `right_title` name their units. `x`: a metric drawn on the x axis instead
    of the step (an x–y panel: each point is one logged record holding both). `colors`: fixed colours per metric
    (default: `PALETTE` in order on the left, green on the right). `labels`: short legend names per metric, or
    per pattern with one `*`, whose `*` in the label stands for what it matched (`("reward/member_*", "member *")`
    names `reward/member_0` "member 0"); default the metric name; the hover text always names the metric.
    `left_range` / `right_range`: fixed axis ranges (a share from 0 to 1), default autoscaled.
    """

    title: str
    left: tuple[str, ...]
    right: tuple[str, ...] = ()
    left_title: str = ""
    right_title: str = ""
    x: str | None = None
    x_title: str = "step"
    colors: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    left_range: tuple[float, float] | None = None
    right_range: tuple[float, float] | None = None




def _against(title: str, view: tuple[Panel, ...]) -> tuple[Panel, ...]:
    """`view` with every panel drawn against the step titled `title` ("update", "round")."""
    return tuple(replace(p, x_title=title) if p.x is None else p for p in view)


PPO_VIEW = _against("update", (
    Panel("Reward", ("objective/scores", "objective/rlhf_reward"), ("gold/score",), "reward model",
          "gold (never trained on)", colors=(("objective/scores", PROXY), ("gold/score", GOLD)),
          labels=(("objective/scores", "RM score"), ("objective/rlhf_reward", "RM score − β·KL"),
                  ("gold/score", "gold"))),
    Panel("KL to the reference", ("objective/kl",), ("objective/kl_coef",), "nats / response", "β",
          labels=(("objective/kl", "KL"), ("objective/kl_coef", "β"))),
    Panel("Reward vs KL", ("objective/scores",), ("gold/score",), "reward model", "gold", x="objective/kl",
          x_title="KL (nats / response)", colors=(("objective/scores", PROXY), ("gold/score", GOLD)),
          labels=(("objective/scores", "RM score"), ("gold/score", "gold"))),
    Panel("Reward-model ensemble", ("reward/member_*", "reward/ensemble_mean"), ("reward/ensemble_spread",),
          "reward model", "spread (std across members)",
          colors=(("reward/ensemble_mean", ENSEMBLE_MEAN), ("reward/ensemble_spread", SPREAD)),
          labels=(("reward/member_*", "member *"), ("reward/ensemble_mean", "ensemble mean"),
                  ("reward/ensemble_spread", "spread"))),
    Panel("Response length", ("val/response_length",), (), "tokens"),
    Panel("Entropy", ("policy/entropy_avg",), (), "nats / token"),
    Panel("Policy update: clipping", ("policy/clipfrac_avg",), ("policy/approxkl_avg",), "clip fraction",
          "approx. KL", labels=(("policy/clipfrac_avg", "clip fraction"), ("policy/approxkl_avg", "approx. KL"))),
    Panel("Policy ratio", ("val/ratio",), (), "new / old probability"),
    Panel("Policy loss", ("loss/policy_avg",), ()),
    Panel("Value function", ("loss/value_avg",), ("val/var_explained",), "value loss", "explained variance",
          labels=(("loss/value_avg", "value loss"), ("val/var_explained", "explained variance"))),
))
SFT_VIEW = (
    Panel("Loss", ("loss",), (), "cross-entropy"),
    Panel("Token accuracy", ("mean_token_accuracy",), (), "share of tokens"),
    Panel("Entropy", ("entropy",), (), "nats / token"),
    Panel("Learning rate", ("learning_rate",)),
    Panel("Gradient norm", ("grad_norm",)),
)
REWARD_VIEW = (
    Panel("Loss", ("loss",), (), "Bradley–Terry loss"),
    Panel("Accuracy", ("accuracy",), (), "share of pairs"),
    Panel("Margin", ("margin",), (), "r(chosen) − r(rejected)"),
    Panel("Rewards", ("mean_reward", "min_reward", "max_reward"), (), "reward",
          labels=(("mean_reward", "mean"), ("min_reward", "min"), ("max_reward", "max"))),
    Panel("Learning rate", ("learning_rate",)),
    Panel("Gradient norm", ("grad_norm",)),
)
DPO_VIEW = (
    Panel("Loss", ("loss",), (), "DPO loss"),
    Panel("Preference accuracy", ("rewards/accuracies",), (), "share of pairs"),
    Panel("Reward margin", ("rewards/margins",), (), "β·log-ratio"),
    Panel("Implicit rewards", ("rewards/chosen", "rewards/rejected"), (), "β·log-ratio",
          colors=(("rewards/chosen", CHOSEN), ("rewards/rejected", REJECTED)),
          labels=(("rewards/chosen", "chosen"), ("rewards/rejected", "rejected"))),
    Panel("Log-probabilities", ("logps/chosen",), ("logps/rejected",), "chosen (nats)", "rejected (nats)",
          colors=(("logps/chosen", CHOSEN), ("logps/rejected", REJECTED)),
          labels=(("logps/chosen", "chosen"), ("logps/rejected", "rejected"))),
    Panel("Learning rate", ("learning_rate",)),
)
ONLINE_VIEW = (
    Panel("Reward", ("reward", "rewards/*/mean"), (), "reward"),
    Panel("KL to the reference", ("kl",), (), "nats / token"),
    Panel("Completion length", ("completions/mean_length",), (), "tokens"),
    Panel("Reward spread in a group", ("reward_std",), ("frac_reward_zero_std",), "std", "groups with std 0",
          labels=(("reward_std", "std"), ("frac_reward_zero_std", "share with std 0")), right_range=(0, 1)),
    Panel("Entropy", ("entropy",), (), "nats / token"),
    Panel("Loss", ("loss",)),
    Panel("Clipped completions", ("completions/clipped_ratio",), (), "share", left_range=(0, 1)),
    Panel("Learning rate", ("learning_rate",)),
)
LOOP_VIEW = _against("round", (  # the iterative loop: one point per round (step = round)
    Panel("Win rate vs SFT", ("loop/gold_win_rate_vs_sft", "loop/rm_win_rate_vs_sft"), (), "share of prompts",
          colors=(("loop/gold_win_rate_vs_sft", GOLD), ("loop/rm_win_rate_vs_sft", PROXY)),
          labels=(("loop/gold_win_rate_vs_sft", "gold"), ("loop/rm_win_rate_vs_sft", "reward model")),
          left_range=(0, 1)),
    Panel("Win rate vs previous round", ("loop/win_rate_vs_previous",), (), "share of prompts",
          left_range=(0, 1)),
    Panel("Reward model on new answers", ("loop/rm_gold_agreement_before", "loop/rm_gold_agreement_after",
                                          "loop/rm_accuracy_before", "loop/rm_accuracy_after"),
          (), "agrees with gold / labels", left_range=(0, 1),  # before and after retraining on the round's labels
          labels=(("loop/rm_gold_agreement_before", "gold, before"), ("loop/rm_gold_agreement_after", "gold, after"),
                  ("loop/rm_accuracy_before", "labels, before"), ("loop/rm_accuracy_after", "labels, after"))),
    Panel("KL to SFT", ("loop/kl_to_sft",), (), "nats / response"),
    Panel("Answer length", ("loop/words",), (), "words"),
    Panel("Labels", ("loop/ai_labels",), ("loop/human_labels",), "pairs labeled by the AI labeler",
          "pairs labeled by people", labels=(("loop/ai_labels", "AI labeler"), ("loop/human_labels", "people"))),
))
STAGE_VIEWS: dict[str, tuple[Panel, ...]] = {
    "ppo": PPO_VIEW, "sft": SFT_VIEW, "reward": REWARD_VIEW, "dpo": DPO_VIEW, "grpo": ONLINE_VIEW,
    "rloo": ONLINE_VIEW, "loop": LOOP_VIEW,
}
"""The designed view of each stage (keys are the stage names trainers log under)."""
STEP_NAMES = {"ppo": "update", "loop": "round"}
"""What a step is, per stage (others: "step")."""

Records = Sequence[tuple[int, Mapping[str, float]]]
"""(step, metrics) per logged record, in order."""


# ---------------------------------------------------------------------------------------------- data
def curve_records(records: Iterable[MetricRecord]) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) of every record, ready to draw as curves.

    A trainer's end-of-run summary (a record with `train_runtime`) also carries whatever its trainer averaged
    since the last regular log (DPO's `logps/chosen` of the last few batches, …); drawn on the training line it
    makes a jump that is not a training point. Only the summary's own keys (`train_*`, runtimes) are kept from it.
    """
    out = []
    for record in records:
        metrics = record.metrics
        if SUMMARY_KEY in metrics:
            metrics = {k: v for k, v in metrics.items() if k.startswith("train_") or k in HIDDEN_NAMES
                       or k.endswith(HIDDEN_SUFFIXES)}
        out.append((record.step, dict(metrics)))
    return out


def _names(records: Records) -> list[str]:
    seen: dict[str, None] = {}
    for _, metrics in records:
        seen.update(dict.fromkeys(metrics))
    return list(seen)


def _is_bookkeeping(name: str) -> bool:
    return name in HIDDEN_NAMES or name.endswith(HIDDEN_SUFFIXES)


def _matching(patterns: Sequence[str], names: Sequence[str]) -> list[str]:
    """Names matching `patterns` (exact names or fnmatch patterns), in the patterns' order."""
    out: list[str] = []
    for pattern in patterns:
        for name in names:
            if name not in out and (name == pattern or fnmatch.fnmatchcase(name, pattern)):
                out.append(name)
    return out


def _label(metric: str, labels: Sequence[tuple[str, str]]) -> str:
    """`metric`'s legend name from a panel's `labels` (see `Panel`): its own, else its pattern's with the `*` filled
    in, else the metric name."""
    named = dict(labels)
    if metric in named:
        return named[metric]
    for pattern, label in labels:
        head, star, tail = pattern.partition("*")
        if star and "*" not in tail and fnmatch.fnmatchcase(metric, pattern):
            return label.replace("*", metric[len(head):len(metric) - len(tail)])
    return metric


def stage_of(log: MetricsLog) -> str | None:
    """The stage a log belongs to: the `stage` its records were logged under, else its run name; None if neither
    names a stage with a designed view."""
    for record in log.records:
        if record.stage in STAGE_VIEWS:
            return record.stage
    return log.run_name if log.run_name in STAGE_VIEWS else None


def all_metrics_view(names: Sequence[str], metrics: Sequence[str] | None = None,
                     x_title: str = "step") -> tuple[Panel, ...]:
    """One panel per metric (its eval twin beside it): every metric but bookkeeping, in first-logged order; or
    only `metrics` (names, `fnmatch` patterns or prefixes before "/"), in the order given. `x_title`: what a step
    is (default "step")."""
    base = [n.removeprefix("eval_") for n in names]
    if metrics is None:
        chosen = [n for n in dict.fromkeys(base) if not _is_bookkeeping(n)]
    else:
        prefixed = [f"{m}/*" for m in metrics]
        chosen = _matching([p for pair in zip(metrics, prefixed, strict=True) for p in pair],
                           list(dict.fromkeys(base)))
    return tuple(Panel(name, (name,), x_title=x_title) for name in chosen)


def resolve_view(view: str | Sequence[Panel] | None, stage: str | None, names: Sequence[str],
                 metrics: Sequence[str] | None = None) -> tuple[Panel, ...]:
    """The panels to draw. `metrics` given → those metrics, one per panel. `view`: "auto" / None (the stage's
    designed view when it has one, else all metrics), "all", a stage name, or a sequence of `Panel`s."""
    x_title = STEP_NAMES.get(stage or "", "step")
    if metrics is not None:
        return all_metrics_view(names, metrics, x_title)
    if view is None or view == "auto":
        view = stage if stage in STAGE_VIEWS else "all"
    if isinstance(view, str):
        if view == "all":
            return all_metrics_view(names, x_title=x_title)
        if view not in STAGE_VIEWS:
            raise ValueError(f"view={view!r}: expected 'auto', 'all', a stage ({sorted(STAGE_VIEWS)}) or Panels")
        return STAGE_VIEWS[view]
    return tuple(view)


@dataclass(frozen=True)
class TraceData:
    """One trace of a panel: what it shows, where, and its points."""

    name: str
    """the metric (an eval series keeps its `eval_` name)"""
    label: str
    """its legend name"""
    panel: int
    """index of its panel among the drawn panels"""
    right: bool
    """on the panel's right-hand axis"""
    x: list[float]
    y: list[float]
    steps: list[int]
    color: str
    dashed: bool


def panel_traces(panel: Panel, index: int, records: Records) -> list[TraceData]:
    """The traces of `panel` (drawn as panel number `index`) from `records`; metrics never logged are left out, and
    a series identical to one already in the panel (GRPO's one reward function beside the total) is drawn once."""
    names = _names(records)
    colors = dict(panel.colors)
    traces = []
    for right, patterns in ((False, panel.left), (True, panel.right)):
        for k, metric in enumerate(_matching(patterns, [n for n in names if not n.startswith("eval_")])):
            color = colors.get(metric, GOLD if right else PALETTE[k % len(PALETTE)])
            variants = [(metric, False)] if panel.x else [(metric, False), (f"eval_{metric}", True)]
            for name, dashed in variants:
                steps, x, y = [], [], []
                for step, values in records:
                    if name in values and (panel.x is None or panel.x in values):
                        steps.append(step)
                        x.append(float(step) if panel.x is None else values[panel.x])
                        y.append(values[name])
                if steps and not any(t.steps == steps and t.y == y for t in traces):  # (a sum of one term)
                    label = _label(metric, panel.labels) + (" (eval)" if dashed else "")
                    traces.append(TraceData(name, label, index, right, x, y, steps, color, dashed))
    return traces


def view_traces(view: Sequence[Panel], records: Records) -> tuple[list[Panel], list[TraceData]]:
    """(panels that have data, their traces), panels numbered in drawing order."""
    drawn: list[Panel] = []
    traces: list[TraceData] = []
    for panel in view:
        found = panel_traces(panel, len(drawn), records)
        if found:
            drawn.append(panel)
            traces.extend(found)
    return drawn, traces


# ---------------------------------------------------------------------------------------------- static figures
def plot_text(text: Any) -> str:
    """`text` escaped for a plotly label, title or hover text: `&`, `<`, `>` only. Plotly.js reads its labels as a
    little HTML and decodes only a few entities (`&lt;`, `&gt;`, `&amp;`, numeric ones): `&quot;` would show as it
    is, so quotes stay quotes."""
    return html.escape(str(text), quote=False)


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


def _event_decorations(events: Sequence[Event], refs: Sequence[tuple[str, str] | None]) -> tuple[list, list]:
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
    return _build(panels, traces, events, max_cols, title, empty_message)[0]


def _build(panels: Sequence[Panel], traces: Sequence[TraceData], events: Sequence[Event], max_cols: int,
           title: str | None, empty_message: str = EMPTY_MESSAGE,
           ) -> tuple[go.Figure, list[tuple[str, str] | None], tuple]:
    """(figure, (x, y) axis references per panel — None for x–y panels —, the subplot-title annotations)."""
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
    shapes, annotations = _event_decorations(events, refs)
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
    log = source if isinstance(source, MetricsLog) else MetricsLog.load(source)
    records = curve_records(log.records)
    panels = resolve_view(view, stage_of(log), _names(records), metrics)
    drawn, traces = view_traces(panels, records)
    return build_figure(drawn, traces, log.events(), max_cols, log.run_name if title is None else title or None)


def _load(source: MetricsLog | str | Path) -> MetricsLog:
    return source if isinstance(source, MetricsLog) else MetricsLog.load(source)


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
        xaxis_title="reward (raw)", yaxis_title="pairs", yaxis_rangemode="nonnegative", autosize=True,
        template=PLOT_TEMPLATE)

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
        xaxis_range=[0, 1], yaxis_range=[0, 1], autosize=True, template=PLOT_TEMPLATE,
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
                         yaxis_title="held-out accuracy", yaxis_range=[0, 1], autosize=True, template=PLOT_TEMPLATE)
    return {"scores": scores, "calibration": calibration, "length": length}


def describe_overoptimization(name: str, points: Sequence[Mapping[str, float]]) -> str:
    """One sentence on what a proxy/gold curve did: how the proxy moved, and whether gold peaked and fell."""
    if len(points) < 2:
        return f"{name}: one point only"
    proxy = [p["proxy"] for p in points]
    gold = [p["gold"] for p in points]
    proxy_move = "rose" if proxy[-1] > proxy[0] else "fell"
    peak = int(np.argmax(gold))
    if 0 < peak < len(gold) - 1 and gold[-1] < gold[peak]:
        shape = (f"gold peaked at √KL {points[peak]['sqrt_kl']:.2f} ({gold[peak]:.3g}) and fell to {gold[-1]:.3g}")
    elif gold[-1] >= gold[0]:
        shape = f"gold rose too ({gold[0]:.3g} → {gold[-1]:.3g})"
    else:
        shape = f"gold fell ({gold[0]:.3g} → {gold[-1]:.3g})"
    return f"{name}: proxy {proxy_move} ({proxy[0]:.3g} → {proxy[-1]:.3g}); {shape}"


def overoptimization_figure(curves: Mapping[str, Sequence[Mapping[str, float]]]) -> go.Figure:
    """Proxy and gold reward against √KL, one pair of lines per method (Gao et al. 2022).

    `curves` maps a method name ("PPO", "best-of-N") to points `{"sqrt_kl", "proxy", "gold"}` as
    `evaluation.ppo_overoptimization_curve` / `best_of_n_curve` return them. Proxy and gold have
    different units, so each gets its own axis: proxy on the left panel, gold on the right. The title says what
    these curves did (`describe_overoptimization`), not what they are expected to do.
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
    summary = "<br>".join(plot_text(describe_overoptimization(n, p)) for n, p in curves.items())
    fig.update_layout(title={"text": f"Proxy and gold reward against KL<br><sup>{summary}</sup>"}, autosize=True,
                      margin={"t": 60 + 18 * len(curves)}, template=PLOT_TEMPLATE)
    return fig


# ---------------------------------------------------------------------------------------------- live widgets
def full_width_figure(figure: go.Figure | None = None) -> go.FigureWidget:
    """A FigureWidget that follows the window's width once sized (`fit_width`)."""
    widget = go.FigureWidget(figure)
    widget._config = {**widget._config, "responsive": True}
    return widget


def snapshot(widget: go.FigureWidget) -> None:
    """Store a FigureWidget's figure as it is now in its saved state (what a reloaded or saved notebook shows), as
    plotly does when a FigureWidget is displayed: later changes reach the page but not that state."""
    widget._widget_layout = deepcopy(widget._layout_obj._props)
    widget._widget_data = deepcopy(widget._data)


def fit_width(widget: go.FigureWidget, lock: threading.RLock, delays: Sequence[float] = (1.0, 3.0)) -> None:
    """Size `widget` to the output area now and after each of `delays` seconds.

    Plotly's widget draws a figure as soon as its view is created, which in JupyterLab can be before the page has
    laid the element out: plotly then falls back to 700 px and keeps that width, and the view reports nothing back.
    Switching `autosize` off and on (what plotly's own resize does) makes it measure the element again; the delays
    give the page time to show the view first.
    """

    def fit() -> None:
        with lock:
            widget.plotly_relayout({"autosize": False})
            widget.plotly_relayout({"autosize": True})

    fit()
    for delay in delays:
        timer = threading.Timer(delay, fit)
        timer.daemon = True
        timer.start()


def _trace_key(trace: TraceData) -> tuple:
    """What a live figure's layout depends on per trace: its metric, panel and axis, and whether its x and y span
    reach 10 (where `whole_number_ticks` leaves the ticks to plotly). A change of any redraws the figure."""
    return (trace.name, trace.panel, trace.right, whole_number_ticks(trace.x)["tickmode"],
            whole_number_ticks(trace.y)["tickmode"])


class LiveDashboard:
    """Live plotly dashboard of a MetricsLog, updated in place while a trainer logs.

    Display it by ending a cell with it (or `display(dashboard)`); `.widget` is the ipywidgets VBox that is
    shown: a "show all metrics" toggle above the figure. Each new point extends its trace inside
    `batch_update()`; redraws happen at most every `min_interval` seconds (default 0.5) — points arriving in
    between are drawn together by a timer, so the last point always appears. When a trace or panel appears, the
    same FigureWidget is redrawn with the new layout (zoom resets).

    `view`: as `figure_from_log` (default "auto": the stage's designed view, else all metrics); `metrics`:
    only these metrics, one per panel; `max_cols`: panels per row (default 3); `title`: default the log's run
    name; `empty_message`: what the figure says before the first point (default "no data yet"). The dashboard
    subscribes on creation (drawing the history so far); `close()` stops it.
    """

    def __init__(
        self, metrics_log: MetricsLog, metrics: Sequence[str] | None = None, max_cols: int = 3,
        title: str | None = None, min_interval: float = 0.5, view: str | Sequence[Panel] | None = "auto",
        empty_message: str = EMPTY_MESSAGE,
    ) -> None:
        if max_cols < 1:
            raise ValueError(f"LiveDashboard: max_cols={max_cols} must be at least 1")
        self.metrics_log = metrics_log
        self.metrics = list(metrics) if metrics is not None else None
        self.view = view
        self.max_cols = max_cols
        self.title = title or metrics_log.run_name
        self.min_interval = min_interval
        self.empty_message = empty_message
        self._records: list[tuple[int, dict[str, float]]] = []
        self._events: list[Event] = []
        self._stage: str | None = metrics_log.run_name if metrics_log.run_name in STAGE_VIEWS else None
        self._pending: list[Entry] = []
        self._drawn: list[tuple] = []  # `_trace_key` per trace, in trace order
        self._panel_refs: list[tuple[str, str] | None] = []
        self._titles: tuple = ()
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._last_draw = time.monotonic()  # the history replayed below is drawn by one flush()
        self._closed = False
        self.figure = full_width_figure(build_figure([], [], (), max_cols, self.title, empty_message))
        self.show_all = ipywidgets.ToggleButton(value=False, description="show all metrics", icon="th",
                                                tooltip="every logged metric, one per panel")
        self.show_all.observe(lambda _: self.redraw(), names="value")
        self.widget = ipywidgets.VBox([self.show_all, self.figure], layout=ipywidgets.Layout(width="100%"))
        self.widget.add_class("rlhfw-dashboard")
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

    def _panels(self) -> tuple[Panel, ...]:
        view = "all" if self.show_all.value else self.view
        return resolve_view(view, self._stage, _names(self._records), self.metrics)

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
            new_events = False
            for entry in pending:
                if isinstance(entry, MetricRecord):
                    self._records.extend(curve_records([entry]))
                    if self._stage is None and entry.stage in STAGE_VIEWS:
                        self._stage = entry.stage
                else:
                    self._events.append(entry)
                    new_events = True
            self._draw(new_events)

    def redraw(self) -> None:
        """Rebuild the figure (after a view change)."""
        with self._lock:
            self._drawn = []
            self._draw(True)

    def _draw(self, new_events: bool) -> None:
        panels, traces = view_traces(self._panels(), self._records)
        keys = [_trace_key(t) for t in traces]
        if keys != self._drawn:
            self._replace_figure(panels, traces, keys)
            return
        with self.figure.batch_update():
            for index, trace in enumerate(traces):
                if len(self.figure.data[index].x) != len(trace.x):
                    self.figure.data[index].x = np.asarray(trace.x, dtype=float)
                    self.figure.data[index].y = np.asarray(trace.y, dtype=float)
                    if panels[trace.panel].x is not None:
                        self.figure.data[index].customdata = trace.steps
                        self.figure.data[index].marker.color = trace.steps
            if new_events:
                shapes, annotations = _event_decorations(self._events, self._panel_refs)
                self.figure.layout.shapes = shapes
                self.figure.layout.annotations = [*self._titles, *annotations]

    def _replace_figure(self, panels: list[Panel], traces: list[TraceData], keys: list) -> None:
        """New panels or traces: redraw the shown FigureWidget in place with the new layout and traces.

        In place, not a new widget: plotly's widget sizes a figure once, when it renders — a FigureWidget
        swapped into a displayed box can render before the page lays it out and stay 700 px wide, while a
        relayout of the displayed one takes the width of the output area again.
        """
        static, self._panel_refs, self._titles = _build(panels, traces, self._events, self.max_cols, self.title,
                                                        self.empty_message)
        gone = set(self.figure.layout.to_plotly_json()) - set(static.layout.to_plotly_json())
        if gone:  # axes / legends of panels no longer drawn
            self.figure.plotly_relayout({key: None for key in gone})
        self.figure.data = ()
        self.figure.layout = static.layout
        self.figure.add_traces(static.data)
        self._drawn = keys
        self.snapshot()
        fit_width(self.figure, self._lock)

    def snapshot(self) -> None:
        """Store the figure as it is now in the widget's saved state (see `views.snapshot`)."""
        with self._lock:
            snapshot(self.figure)

    def close(self) -> None:
        """Stop following the log: unsubscribe, draw what was pending, keep the last picture shown."""
        self._unsubscribe()
        with self._lock:
            self.flush()
            self.snapshot()
            self._closed = True

    def fit_width(self) -> None:
        """Size the figure to the output area (done on display and after each redraw; see `views.fit_width`)."""
        fit_width(self.figure, self._lock)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        self.fit_width()
        return self.widget._repr_mimebundle_(**kwargs)


class RunComparison:
    """One metric of several runs overlaid, live: each run's line grows while it trains.

    `runs`: name → MetricsLog to start with (default none); `add_run(name, log)` adds one (a `Sweep` calls it as
    each run starts). `metric`: the metric drawn (default "objective/scores", PPO's reward); the dropdown above
    the plot switches to any metric a run has logged. `.widget` is the VBox shown; `.figure` the FigureWidget.
    Redraws are throttled like `LiveDashboard`'s (`min_interval` seconds, default 0.5).
    """

    def __init__(self, runs: Mapping[str, MetricsLog] | None = None, metric: str = "objective/scores",
                 min_interval: float = 0.5, title: str | None = None) -> None:
        self.runs: dict[str, MetricsLog] = {}
        self.min_interval = min_interval
        self.title = title
        self._unsubscribers: list[Callable[[], None]] = []
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._last_draw = 0.0
        self.choice = ipywidgets.Dropdown(options=[metric], value=metric, description="metric")
        self._metric = metric
        self._choosing = False  # True while the dropdown's options are being replaced
        self.choice.observe(self._chosen, names="value")
        self.figure = full_width_figure()
        self.figure.update_layout(template=PLOT_TEMPLATE, autosize=True, height=380, hovermode="x unified",
                                  xaxis_title="step", legend_title_text="run",
                                  margin={"l": 55, "r": 20, "t": 50, "b": 40})
        self.widget = ipywidgets.VBox([self.choice, self.figure], layout=ipywidgets.Layout(width="100%"))
        for name, log in (runs or {}).items():
            self.add_run(name, log)
        self.flush()

    @property
    def metric(self) -> str:
        """The metric drawn."""
        return self._metric

    def _chosen(self, change: dict) -> None:
        if not self._choosing and change["new"] is not None and change["new"] != self._metric:
            self._metric = change["new"]
            self.flush()

    def add_run(self, name: str, log: MetricsLog) -> None:
        """Overlay `log` as the run `name` (a name already shown is replaced)."""
        with self._lock:
            self.runs[name] = log
        self._unsubscribers.append(log.subscribe(lambda entry: self._on_entry(entry)))
        self.flush()

    def _on_entry(self, entry: Entry) -> None:
        if not isinstance(entry, MetricRecord):
            return
        with self._lock:
            wait = self._last_draw + self.min_interval - time.monotonic()
            if wait <= 0:
                self.flush()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Redraw every run now."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last_draw = time.monotonic()
            names = sorted({n for log in self.runs.values() for n in log.names()} | {self.metric})
            if list(self.choice.options) != names:
                self._choosing = True
                try:
                    self.choice.options = names  # (may reset the selection: put it back)
                    self.choice.value = self._metric
                finally:
                    self._choosing = False
            traces = overlay_traces(self.runs, self.metric)
            if [t.name for t in self.figure.data] != [t.name for t in traces]:  # a run joined
                self.figure.data = ()
                self.figure.add_traces(traces)
                fit_width(self.figure, self._lock)
            else:
                with self.figure.batch_update():
                    for shown, trace in zip(self.figure.data, traces, strict=True):
                        shown.x, shown.y = trace.x, trace.y
            self.figure.update_layout(title=self.title or self.metric, yaxis_title=self.metric)
            snapshot(self.figure)

    def close(self) -> None:
        """Stop following the runs; the last picture stays."""
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        self._unsubscribers = []

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        fit_width(self.figure, self._lock)
        return self.widget._repr_mimebundle_(**kwargs)


# ---------------------------------------------------------------------------------------------- sample tables
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
