"""From a log's records to what a run's figure draws, as plain data (no plotly): the records as curves
(`curve_records`), the panels to draw (`resolve_view`: a stage's designed view, or the all-metrics view), and each
panel's traces (`view_traces`).

The **all-metrics view** (`view="all"`) draws every logged metric but trainer bookkeeping, one per panel. An
evaluation metric (`eval_loss`, …) is a trace of its own beside its training twin, in the twin's panel.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rlhf_widgets.runtime.metrics import MetricRecord, MetricsLog
from rlhf_widgets.views.stage_views import STAGE_VIEWS, STEP_NAMES, Panel
from rlhf_widgets.views.style import GOLD, PALETTE

HIDDEN_NAMES = frozenset({"epoch", "total_flos", "train_loss"})
"""Trainer bookkeeping the all-metrics view leaves out (name it in `metrics` to see it)."""
HIDDEN_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")
"""Suffixes of timing / throughput keys the all-metrics view leaves out."""
SUMMARY_KEY = "train_runtime"
"""A record holding this key is a trainer's end-of-run summary (see `curve_records`)."""

Records = Sequence[tuple[int, Mapping[str, float]]]
"""(step, metrics) per logged record, in order."""


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


def metric_names(records: Records) -> list[str]:
    """Every metric name in `records`, in first-logged order."""
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
    names = metric_names(records)
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

