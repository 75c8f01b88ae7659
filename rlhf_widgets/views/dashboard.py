"""`LiveDashboard`: a run's figure, live — the panels `figure_from_log` draws, extended in place while a trainer logs
to its `MetricsLog`."""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets
import numpy as np

from rlhf_widgets.runtime.metrics import Entry, Event, MetricRecord, MetricsLog, SampleBatch
from rlhf_widgets.views.live import ThrottledFigure, full_width_figure
from rlhf_widgets.views.run_figures import build_figure, build_figure_parts, event_decorations, whole_number_ticks
from rlhf_widgets.views.stage_views import STAGE_VIEWS, Panel
from rlhf_widgets.views.style import EMPTY_MESSAGE
from rlhf_widgets.views.traces import TraceData, curve_records, metric_names, resolve_view, view_traces


def _trace_key(trace: TraceData) -> tuple:
    """What a live figure's layout depends on per trace: its metric, panel and axis, and whether its x and y span
    reach 10 (where `whole_number_ticks` leaves the ticks to plotly). A change of any redraws the figure."""
    return (trace.name, trace.panel, trace.right, whole_number_ticks(trace.x)["tickmode"],
            whole_number_ticks(trace.y)["tickmode"])


class LiveDashboard(ThrottledFigure):
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
        super().__init__(min_interval, wait_from_start=True)  # the history replayed below is drawn by one flush()
        self.metrics_log = metrics_log
        self.metrics = list(metrics) if metrics is not None else None
        self.view = view
        self.max_cols = max_cols
        self.title = title or metrics_log.run_name
        self.empty_message = empty_message
        self._records: list[tuple[int, dict[str, float]]] = []
        self._events: list[Event] = []
        self._stage: str | None = metrics_log.run_name if metrics_log.run_name in STAGE_VIEWS else None
        self._pending: list[Entry] = []
        self._drawn: list[tuple] = []  # `_trace_key` per trace, in trace order
        self._panel_refs: list[tuple[str, str] | None] = []
        self._titles: tuple = ()
        self._closed = False
        self.figure = full_width_figure(build_figure([], [], (), max_cols, self.title, empty_message))
        self.show_all = ipywidgets.ToggleButton(value=False, description="show all metrics", icon="th",
                                                tooltip="every logged metric, one per panel")
        self.show_all.observe(lambda _: self.redraw(), names="value")
        self.widget = ipywidgets.VBox([self.show_all, self.figure], layout=ipywidgets.Layout(width="100%"))
        self.widget.add_class("rlhfw-dashboard")
        self._follow(metrics_log, replay=True)
        self.flush()

    def _take(self, entry: Entry) -> bool:
        if self._closed or isinstance(entry, SampleBatch):
            return False
        self._pending.append(entry)
        return True

    def _panels(self) -> tuple[Panel, ...]:
        view = "all" if self.show_all.value else self.view
        return resolve_view(view, self._stage, metric_names(self._records), self.metrics)

    def _draw_pending(self) -> None:
        """Draw every point and event received since the last draw."""
        pending, self._pending = self._pending, []
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
                shapes, annotations = event_decorations(self._events, self._panel_refs)
                self.figure.layout.shapes = shapes
                self.figure.layout.annotations = [*self._titles, *annotations]

    def _replace_figure(self, panels: list[Panel], traces: list[TraceData], keys: list) -> None:
        """New panels or traces: redraw the shown FigureWidget in place with the new layout and traces.

        In place, not a new widget: plotly's widget sizes a figure once, when it renders — a FigureWidget
        swapped into a displayed box can render before the page lays it out and stay 700 px wide, while a
        relayout of the displayed one takes the width of the output area again.
        """
        static, self._panel_refs, self._titles = build_figure_parts(panels, traces, self._events, self.max_cols,
                                                                    self.title, self.empty_message)
        gone = set(self.figure.layout.to_plotly_json()) - set(static.layout.to_plotly_json())
        if gone:  # axes / legends of panels no longer drawn
            self.figure.plotly_relayout({key: None for key in gone})
        self.figure.data = ()
        self.figure.layout = static.layout
        self.figure.add_traces(static.data)
        self._drawn = keys
        self.snapshot()
        self.fit_width()

    def close(self) -> None:
        """Stop following the log: unsubscribe, draw what was pending, keep the last picture shown."""
        super().close()
        with self._lock:
            self.flush()
            self.snapshot()
            self._closed = True
