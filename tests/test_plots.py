import html
import math
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import plotly.graph_objects as go
from nbclient import NotebookClient

from rlhf_widgets.metrics import MetricsLog
from rlhf_widgets.views import LiveDashboard, SamplesTable, figure_from_log, panels, samples_html

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
REPO = Path(__file__).resolve().parents[1]


def _traces(fig: go.Figure) -> dict[str, tuple[list[float], list[float]]]:
    return {t.name: (list(t.x), list(t.y)) for t in fig.data}


def _same(actual: list[float], expected: list[float]) -> bool:
    """Element-wise equality where NaN equals NaN."""
    return len(actual) == len(expected) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(actual, expected, strict=True)
    )


def _panel_titles(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def test_panels_group_by_prefix_and_hide_bookkeeping() -> None:
    names = ["loss", "grad_norm", "learning_rate", "objective/kl", "objective/scores", "loss/policy_avg",
             "eval_loss", "eval_rewards/margins", "rewards/chosen", "epoch", "train_runtime",
             "eval_samples_per_second", "total_flos"]
    assert panels(names) == [
        ("loss", ["loss", "loss/policy_avg", "eval_loss"]),
        ("grad_norm", ["grad_norm"]),
        ("learning_rate", ["learning_rate"]),
        ("objective", ["objective/kl", "objective/scores"]),
        ("rewards", ["eval_rewards/margins", "rewards/chosen"]),
    ]
    # explicit choice: panel or metric names, in the order given; bookkeeping shown when named
    assert panels(names, metrics=["objective", "epoch", "rewards/chosen", "loss"]) == [
        ("objective", ["objective/kl", "objective/scores"]),
        ("epoch", ["epoch"]),
        ("rewards", ["rewards/chosen"]),
        ("loss", ["loss", "loss/policy_avg", "eval_loss"]),
    ]


def test_dashboard_traces_hold_exactly_the_logged_data() -> None:
    log = MetricsLog(run_name="ppo-demo")
    dashboard = LiveDashboard(log, min_interval=0.0)
    expected = {"objective/kl": [], "objective/scores": [], "loss/policy_avg": []}
    for step in range(12):
        values = {"objective/kl": 0.01 * step, "objective/scores": math.nan if step == 5 else step / 3,
                  "loss/policy_avg": -step}
        log.log(values, step=step)
        for name, value in values.items():
            expected[name].append(value)
    dashboard.flush()
    traces = _traces(dashboard.figure)
    assert set(traces) == set(expected)
    for name, values in expected.items():
        assert traces[name][0] == list(range(12))
        assert _same(traces[name][1], values)
    assert _panel_titles(dashboard.figure) == ["objective", "loss"]
    assert dashboard.figure.layout.title.text == "ppo-demo"
    assert dashboard.widget.children == (dashboard.figure,)


def test_dashboard_draws_history_logged_before_it_existed() -> None:
    log = MetricsLog()
    for step in range(4):
        log.log({"loss": 1.0 / (step + 1)}, step=step)
    dashboard = LiveDashboard(log, min_interval=60)
    assert _traces(dashboard.figure) == {"loss": ([0, 1, 2, 3], [1.0, 0.5, 1 / 3, 0.25])}


def test_redraws_are_throttled_and_the_timer_draws_the_rest() -> None:
    log = MetricsLog()
    log.log({"loss": 0.0}, step=0)
    slow = LiveDashboard(log, min_interval=60)
    for step in range(1, 50):
        log.log({"loss": float(step)}, step=step)
    assert len(slow.figure.data[0].x) == 1  # 49 fast logs, no redraw yet
    slow.flush()
    assert list(slow.figure.data[0].x) == list(range(50))
    slow.close()

    quick = LiveDashboard(log, min_interval=0.1)
    for step in range(50, 60):
        log.log({"loss": float(step)}, step=step)
    deadline = time.monotonic() + 5
    while len(quick.figure.data[0].x) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(quick.figure.data[0].y) == [float(s) for s in range(60)]


def test_new_metrics_add_traces_and_panels_in_the_same_widget() -> None:
    log = MetricsLog()
    dashboard = LiveDashboard(log, min_interval=0.0)
    box = dashboard.widget
    log.log({"objective/kl": 0.1}, step=1)
    assert _panel_titles(dashboard.figure) == ["objective"]
    log.log({"objective/kl": 0.2, "objective/scores": 1.0}, step=2)
    log.log({"objective/kl": 0.3, "loss/value_avg": 5.0, "grad_norm": 2.0}, step=3)
    dashboard.flush()
    fig = dashboard.figure
    assert dashboard.widget is box and box.children == (fig,)
    assert _panel_titles(fig) == ["objective", "loss", "grad_norm"]
    axes = {t.name: t.xaxis for t in fig.data}
    assert axes == {"objective/kl": "x", "objective/scores": "x", "loss/value_avg": "x2", "grad_norm": "x3"}
    assert _traces(fig)["objective/kl"] == ([1, 2, 3], [0.1, 0.2, 0.3])
    assert _traces(fig)["objective/scores"] == ([2], [1.0])


def test_events_become_vertical_markers_in_every_panel() -> None:
    log = MetricsLog()
    dashboard = LiveDashboard(log, min_interval=0.0)
    log.log({"loss": 1.0, "lr": 1e-5}, step=1)
    log.log_event("lr_change", "lr 1e-5 → 5e-6", step=4)
    log.log({"loss": 0.5, "lr": 5e-6}, step=5)
    dashboard.flush()
    shapes = dashboard.figure.layout.shapes
    assert [(s.x0, s.xref) for s in shapes] == [(4, "x"), (4, "x2")]
    assert shapes[0].label.text == "lr 1e-5 → 5e-6"


def test_close_stops_updates() -> None:
    log = MetricsLog()
    dashboard = LiveDashboard(log, min_interval=60)
    log.log({"loss": 1.0}, step=0)
    dashboard.close()  # draws what was pending, then stops
    log.log({"loss": 2.0, "new/metric": 1.0}, step=1)
    log.log_event("stop", "stopped", step=1)
    dashboard.flush()
    assert _traces(dashboard.figure) == {"loss": ([0], [1.0])}
    assert dashboard.figure.layout.shapes == ()


def test_dashboard_displays_as_its_widget() -> None:
    dashboard = LiveDashboard(MetricsLog())
    bundle = dashboard._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == dashboard.widget.model_id


def test_figure_from_log_matches_the_dashboard(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, run_name="finished")
    dashboard = LiveDashboard(log, min_interval=0.0)
    for step in range(5):
        log.log({"objective/kl": step * 0.1, "loss": 2.0 - step * 0.1, "epoch": step / 5}, step=step)
    log.log_event("stop", "stopped: KL too high", step=4)
    dashboard.flush()
    static = figure_from_log(path)
    assert isinstance(static, go.Figure) and not isinstance(static, go.FigureWidget)
    assert static.layout.title.text == "finished"
    assert _traces(static) == _traces(dashboard.figure)
    assert [(t.name, t.xaxis, t.yaxis) for t in static.data] == [
        (t.name, t.xaxis, t.yaxis) for t in dashboard.figure.data]
    assert "epoch" not in _traces(static)
    assert [s.x0 for s in static.layout.shapes] == [4, 4]
    only_kl = figure_from_log(log, metrics=["objective/kl"], title="KL")
    assert _traces(only_kl) == {"objective/kl": (list(range(5)), [s * 0.1 for s in range(5)])}
    assert "Plotly" in static.to_html(include_plotlyjs=False)


HOSTILE = {
    "prompt": "<script>alert(1)</script>",
    "response": "<img src=x onerror=alert(1)> **bold** [link](javascript:alert(1)) # heading",
    "score": 0.123456,
    "<b>kl</b>": math.nan,
}


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.cells: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        if tag in ("td", "th"):
            self.cells.append("")

    def handle_data(self, data: str) -> None:
        if self.cells:
            self.cells[-1] += data


def test_samples_html_escapes_all_model_text() -> None:
    log = MetricsLog()
    log.log_samples([HOSTILE, {"prompt": "p2", "response": "r2"}], step=3, stage="ppo")
    page = samples_html(log.samples()[-1])
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert html.escape(HOSTILE["prompt"]) in page
    parser = _Collect()
    parser.feed(page)
    assert parser.tags == {"table", "caption", "thead", "tbody", "tr", "th", "td"}
    # what a browser shows is the original text, character for character
    assert parser.cells[:4] == ["prompt", "response", "score", "<b>kl</b>"]
    assert parser.cells[4:8] == [HOSTILE["prompt"], HOSTILE["response"], "0.1235", "nan"]
    assert "step 3 (ppo): 2 of 2" in page


def test_samples_table_follows_the_newest_batch() -> None:
    log = MetricsLog()
    log.log_samples([{"response": "first batch"}], step=1)
    table = SamplesTable(log, max_rows=2)
    assert "first batch" in table.widget.value
    log.log_samples([{"response": f"new-{i}"} for i in range(5)], step=2)
    assert "new-1" in table.widget.value and "new-2" not in table.widget.value
    assert "first batch" not in table.widget.value and "2 of 5" in table.widget.value
    assert table._repr_mimebundle_()[WIDGET_VIEW]["model_id"] == table.widget.model_id
    table.close()
    log.log_samples([{"response": "after close"}], step=3)
    assert "after close" not in table.widget.value
    assert "No samples" in SamplesTable(MetricsLog()).widget.value


def test_dashboard_renders_in_a_headless_notebook(tmp_path: Path) -> None:
    cells = [
        "from rlhf_widgets.metrics import MetricsLog\n"
        "from rlhf_widgets.views import LiveDashboard\n"
        "log = MetricsLog(run_name='nb')\n"
        "dashboard = LiveDashboard(log, min_interval=0.0)\n"
        "dashboard",
        "for step in range(5):\n"
        "    log.log({'objective/kl': 0.1 * step, 'loss': 1 / (step + 1)}, step=step)\n"
        "dashboard.flush()\n"
        "[len(t.x) for t in dashboard.figure.data]",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": REPO}})
    client.execute()
    (display,) = nb.cells[0].outputs
    assert WIDGET_VIEW in display["data"]
    box_id = display["data"][WIDGET_VIEW]["model_id"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert state[box_id]["model_name"] == "VBoxModel"
    figure_id = state[box_id]["state"]["children"][-1].removeprefix("IPY_MODEL_")
    traces = state[figure_id]["state"]["_widget_data"]
    assert [t["name"] for t in traces] == ["objective/kl", "loss"]
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "[5, 5]"
