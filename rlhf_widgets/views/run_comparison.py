"""`RunComparison`: one metric of several runs overlaid, live — `overlay_figure` growing while the runs train (a
`Sweep` adds each run as it starts)."""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets

from rlhf_widgets.runtime.metrics import Entry, MetricRecord, MetricsLog
from rlhf_widgets.views.live import ThrottledFigure, full_width_figure
from rlhf_widgets.views.run_figures import overlay_traces
from rlhf_widgets.views.style import PLOT_TEMPLATE


class RunComparison(ThrottledFigure):
    """One metric of several runs overlaid, live: each run's line grows while it trains.

    `runs`: name → MetricsLog to start with (default none); `add_run(name, log)` adds one (a `Sweep` calls it as
    each run starts). `metric`: the metric drawn (default "objective/scores", PPO's reward); the dropdown above
    the plot switches to any metric a run has logged. `.widget` is the VBox shown; `.figure` the FigureWidget.
    Redraws are throttled like `LiveDashboard`'s (`min_interval` seconds, default 0.5).
    """

    def __init__(self, runs: Mapping[str, MetricsLog] | None = None, metric: str = "objective/scores",
                 min_interval: float = 0.5, title: str | None = None) -> None:
        super().__init__(min_interval)
        self.runs: dict[str, MetricsLog] = {}
        self.title = title
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
        self._follow(log)
        self.flush()

    def _take(self, entry: Entry) -> bool:
        return isinstance(entry, MetricRecord)

    def _draw_pending(self) -> None:
        """Redraw every run."""
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
            self.fit_width()
        else:
            with self.figure.batch_update():
                for shown, trace in zip(self.figure.data, traces, strict=True):
                    shown.x, shown.y = trace.x, trace.y
        self.figure.update_layout(title=self.title or self.metric, yaxis_title=self.metric)
        self.snapshot()
