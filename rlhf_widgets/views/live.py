"""What every live figure shares: a FigureWidget that takes the output area's width (`full_width_figure`,
`fit_width`), its saved state kept current (`snapshot`), and `ThrottledFigure`, the base of a live figure that
follows `MetricsLog`s and redraws at most every `min_interval` seconds (`LiveDashboard`, `RunComparison`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any

import ipywidgets
import plotly.graph_objects as go

from rlhf_widgets.runtime.metrics import Entry, MetricsLog


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


class ThrottledFigure:
    """A live figure that follows `MetricsLog`s and redraws at most every `min_interval` seconds.

    The throttle: an entry that arrives `min_interval` seconds or more after the last draw is drawn at once; one that
    arrives sooner starts a timer (one at a time) that draws, when the interval is over, everything that arrived in
    between, so the last entry always appears. `flush()` draws now. `wait_from_start`: the first interval starts
    when the figure is made, as if it had just drawn (default False: the first entry is drawn at once).

    A subclass sets `figure` (a FigureWidget, from `full_width_figure`) and `widget` (the box displayed, holding the
    figure), follows logs with `_follow`, and fills in `_take(entry)` (keep what an entry brings; False when it brings
    nothing to draw) and `_draw_pending()` (draw what was kept). Both run under the figure's lock.
    """

    figure: go.FigureWidget
    widget: ipywidgets.Widget

    def __init__(self, min_interval: float, wait_from_start: bool = False) -> None:
        self.min_interval = min_interval
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._last_draw = time.monotonic() if wait_from_start else 0.0
        self._unsubscribers: list[Callable[[], None]] = []

    def _follow(self, log: MetricsLog, replay: bool = False) -> None:
        """Receive `log`'s new entries (and, with `replay`, the ones logged so far) until `close()`."""
        self._unsubscribers.append(log.subscribe(self._on_entry, replay=replay))

    def _take(self, entry: Entry) -> bool:
        """Keep what `entry` brings for the next draw; False when it brings nothing to draw (no draw is asked for)."""
        raise NotImplementedError

    def _draw_pending(self) -> None:
        """Draw what `_take` kept since the last draw."""
        raise NotImplementedError

    def _on_entry(self, entry: Entry) -> None:
        with self._lock:
            if not self._take(entry):
                return
            wait = self._last_draw + self.min_interval - time.monotonic()
            if wait <= 0:
                self.flush()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Draw everything received so far, now (the throttle does this on its own)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last_draw = time.monotonic()
            self._draw_pending()

    def snapshot(self) -> None:
        """Store the figure as it is now in the widget's saved state (see `snapshot`)."""
        with self._lock:
            snapshot(self.figure)

    def fit_width(self) -> None:
        """Size the figure to the output area (done on display and after each redraw; see `fit_width`)."""
        fit_width(self.figure, self._lock)

    def close(self) -> None:
        """Stop following the logs; the last picture stays shown."""
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        self._unsubscribers = []

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        self.fit_width()
        return self.widget._repr_mimebundle_(**kwargs)
