import fnmatch
import html
import math
import time
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import pytest
from nbclient import NotebookClient

from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.views.dashboard import LiveDashboard
from rlhf_widgets.views.reward_figures import overoptimization_figure
from rlhf_widgets.views.run_figures import figure_from_log
from rlhf_widgets.views.samples import SamplesTable, samples_html
from rlhf_widgets.views.stage_views import STAGE_VIEWS
from rlhf_widgets.views.traces import curve_records

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
REPO = Path(__file__).resolve().parents[1]
LOGS = Path(__file__).resolve().parent / "fixtures" / "logs"
"""Metrics logs of real sandbox runs of every stage (tests/fixtures/logs/README.md says how they were made)."""


def _traces(fig: go.Figure) -> dict[str, tuple[list[float], list[float]]]:
    """metric name (trace.meta) → (x, y)."""
    return {t.meta: (list(t.x), list(t.y)) for t in fig.data}


def _same(actual: list[float], expected: list[float]) -> bool:
    """Element-wise equality where NaN equals NaN."""
    return len(actual) == len(expected) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(actual, expected, strict=True)
    )


def _panel_titles(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations if a.text != "▲"]


def _flattened(fig: go.Figure) -> list[str]:
    """Traces drawn flat by a neighbour: on a y axis shared with other traces, a trace whose values span less than a
    tenth of the axis' span (the hull of every trace on it). Constant traces count in the hull only."""
    axes: dict[tuple[str, str], list] = {}
    for trace in fig.data:
        axes.setdefault((trace.xaxis, trace.yaxis), []).append(trace)
    flat = []
    for traces in axes.values():
        values = {t.meta: [v for v in t.y if math.isfinite(v)] for t in traces}
        values = {name: v for name, v in values.items() if v}
        if len(values) < 2:
            continue
        hull = max(max(v) for v in values.values()) - min(min(v) for v in values.values())
        for name, v in values.items():
            extent = max(v) - min(v)
            if 0 < extent < hull / 10:
                flat.append(f"{name} spans {extent:.3g} of an axis spanning {hull:.3g}")
    return flat


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "dpo", "grpo", "loop"])
def test_designed_views_keep_one_scale_per_axis_on_real_runs(stage: str) -> None:
    log = MetricsLog.load(LOGS / f"{stage}.jsonl")
    fig = figure_from_log(log)
    titles = _panel_titles(fig)
    assert titles == [p.title for p in STAGE_VIEWS[stage] if p.title in titles], "the view's panels, in its order"
    assert len(_panel_titles(fig)) >= 4, "a real run fills most of its stage's panels"
    assert _flattened(fig) == []
    assert _flattened(figure_from_log(log, view="all")) == []
    assert fig.layout.width is None and fig.layout.autosize, "figures take the width of the output area"


def test_the_old_prefix_grouping_would_fail_the_scale_check() -> None:
    """The check bites: PPO's "val" group (the ratio beside the response length) and "loss" group (the policy loss
    beside the value loss), as the metrics were once grouped by name prefix."""
    from rlhf_widgets.views.stage_views import Panel

    log = MetricsLog.load(LOGS / "ppo.jsonl")
    by_prefix = [Panel("val", ("val/ratio", "val/response_length")),
                 Panel("loss", ("loss/policy_avg", "loss/value_avg"))]
    flat = _flattened(figure_from_log(log, view=by_prefix))
    assert [f.split()[0] for f in flat] == ["val/ratio", "loss/policy_avg"]


def test_ppo_view_answers_reward_and_kl_first() -> None:
    log = MetricsLog.load(LOGS / "ppo.jsonl")
    fig = figure_from_log(log)
    titles = _panel_titles(fig)
    assert titles[:3] == ["Reward", "KL to the reference", "Reward vs KL"]
    reward = [t for t in fig.data if t.xaxis == "x"]
    assert [t.meta for t in reward] == ["objective/scores", "objective/rlhf_reward", "gold/score"]
    assert reward[2].yaxis != reward[0].yaxis, "gold has its own axis"
    frontier = [t for t in fig.data if t.meta == "objective/scores" and t.xaxis != "x"][0]
    steps, kl = log.series("objective/kl")
    assert list(frontier.x) == kl and list(frontier.customdata) == steps  # reward against KL, update on hover
    # "show all metrics": every metric, one per panel
    every = figure_from_log(log, view="all")
    assert {t.meta for t in every.data} >= {"lr", "val/num_eos_tokens", "objective/entropy", "time/rollout"}
    assert len({(t.xaxis, t.yaxis) for t in every.data}) == len(every.data)


def test_ppo_view_draws_an_ensembles_members_mean_and_spread_only_when_logged() -> None:
    """A reward-model ensemble's per-update scores (`PPOTrainer` logs them when the reward is a `RewardEnsemble`):
    each member and their mean on the left axis, the spread on the right, named for a reader. A single reward model
    logs none of them, and its run shows no ensemble panel — live too, until the first ensemble record."""
    log = MetricsLog(run_name="ppo")
    dashboard = LiveDashboard(log, min_interval=0.0)
    log.log({"objective/scores": 0.1, "objective/kl": 0.0}, step=1, stage="ppo")
    assert "Reward-model ensemble" not in _panel_titles(dashboard.figure)
    for step in (2, 3, 4):
        members = [0.2 * step, 0.3 * step + 0.1, 0.5 * step - 0.4]
        log.log({"objective/scores": min(members), "objective/kl": 0.1 * step,
                 **{f"reward/member_{i}": score for i, score in enumerate(members)},
                 "reward/ensemble_mean": sum(members) / 3, "reward/ensemble_spread": 0.05 * step ** 2},
                step=step, stage="ppo")
    dashboard.flush()
    for fig in (dashboard.figure, figure_from_log(log)):
        titles = _panel_titles(fig)
        assert titles[:4] == ["Reward", "KL to the reference", "Reward vs KL", "Reward-model ensemble"]
        drawn = [t for t in fig.data if t.meta.startswith("reward/")]
        assert [(t.meta, t.name) for t in drawn] == [
            ("reward/member_0", "member 0"), ("reward/member_1", "member 1"), ("reward/member_2", "member 2"),
            ("reward/ensemble_mean", "ensemble mean"), ("reward/ensemble_spread", "spread")]
        *scores, spread = drawn
        assert len({(t.xaxis, t.yaxis) for t in scores}) == 1, "members and their mean share the left axis"
        assert spread.xaxis == scores[0].xaxis and spread.yaxis != scores[0].yaxis, "the spread has its own axis"
        assert list(spread.x) == [2, 3, 4] and list(spread.y) == pytest.approx([0.2, 0.45, 0.8])
        assert len({t.line.color for t in drawn}) == 5
        assert _flattened(fig) == []
    single = figure_from_log(MetricsLog.load(LOGS / "ppo.jsonl"))  # a real run scored by one reward model
    assert "Reward-model ensemble" not in _panel_titles(single)
    assert not [t.meta for t in single.data if t.meta.startswith("reward/")]
    dashboard.close()


def test_train_and_eval_are_separate_traces_and_summaries_do_not_extend_curves() -> None:
    log = MetricsLog(run_name="dpo")
    for step in (5, 10):
        log.log({"loss": 0.7 - step / 100, "logps/chosen": -7.0, "rewards/accuracies": 0.6}, step=step, stage="dpo")
    log.log({"eval_loss": 0.69, "eval_logps/chosen": -2.0}, step=10, stage="dpo")
    # the end-of-run summary carries DPO's last partial averages: not a training point
    log.log({"train_runtime": 12.0, "train_loss": 0.66, "logps/chosen": -2.1, "epoch": 1.0}, step=11, stage="dpo")
    assert curve_records(log.records)[-1] == (11, {"train_runtime": 12.0, "train_loss": 0.66, "epoch": 1.0})
    fig = figure_from_log(log)
    traces = {t.meta: t for t in fig.data}
    assert list(traces["logps/chosen"].y) == [-7.0, -7.0] and list(traces["logps/chosen"].x) == [5, 10]
    assert list(traces["eval_logps/chosen"].y) == [-2.0] and traces["eval_logps/chosen"].line.dash == "dash"
    assert traces["eval_loss"].xaxis == traces["loss"].xaxis and traces["loss"].line.dash == "solid"
    assert traces["eval_loss"].name == "loss (eval)"
    assert "train_loss" not in traces and "train_runtime" not in traces


def test_events_are_markers_with_hover_text() -> None:
    log = MetricsLog(run_name="ppo")
    log.log({"objective/kl": 0.1, "objective/scores": 1.0, "val/response_length": 20.0}, step=1, stage="ppo")
    for kind, message in [("paused", "training paused"), ("setting", "kl_coef changed 0.05 → 0.2"),
                          ("setting", "learning_rate changed 0.0003 → 0.0001"), ("resumed", "training <resumed>")]:
        log.log_event(kind, message, step=1, stage="ppo")
    log.log({"objective/kl": 0.3, "objective/scores": 1.2, "val/response_length": 22.0}, step=2, stage="ppo")
    fig = figure_from_log(log)
    markers = [a for a in fig.layout.annotations if a.text == "▲"]
    step_panels = [a for a in _panel_titles(fig) if a != "Reward vs KL"]
    assert len(markers) == len(step_panels) == 3  # one marker per step panel, not one per event
    hover = markers[0].hovertext
    assert hover.split("<br>") == ["step 1", "training paused", "kl_coef changed 0.05 → 0.2",
                                   "learning_rate changed 0.0003 → 0.0001", "training &lt;resumed&gt;"]
    assert all(s.line.dash == "dot" and s.x0 == 1 for s in fig.layout.shapes) and len(fig.layout.shapes) == 3
    assert not any(getattr(s, "label", None) and s.label.text for s in fig.layout.shapes), "no rotated labels"


def test_overoptimization_title_says_what_happened() -> None:
    fell = overoptimization_figure({"PPO": [{"sqrt_kl": 0.0, "proxy": 1.0, "gold": 1.0},
                                            {"sqrt_kl": 1.0, "proxy": 0.5, "gold": 1.5},
                                            {"sqrt_kl": 2.0, "proxy": 0.2, "gold": 1.6}]})
    assert "proxy fell (1 → 0.2); gold rose too" in fell.layout.title.text
    assert "peaks" not in fell.layout.title.text
    peaked = overoptimization_figure({"PPO": [{"sqrt_kl": 0.0, "proxy": 0.0, "gold": 1.0},
                                              {"sqrt_kl": 1.0, "proxy": 1.0, "gold": 2.0},
                                              {"sqrt_kl": 2.0, "proxy": 2.0, "gold": 1.2}]})
    assert "proxy rose (0 → 2); gold peaked at √KL 1.00 (2) and fell to 1.2" in peaked.layout.title.text


def test_dashboard_traces_hold_exactly_the_logged_data() -> None:
    log = MetricsLog(run_name="ppo-demo")
    dashboard = LiveDashboard(log, min_interval=0.0)
    expected = {"objective/kl": [], "objective/scores": [], "loss/policy_avg": []}
    for step in range(12):
        values = {"objective/kl": 0.01 * step, "objective/scores": math.nan if step == 5 else step / 3,
                  "loss/policy_avg": -step}
        log.log(values, step=step, stage="ppo")
        for name, value in values.items():
            expected[name].append(value)
    dashboard.flush()
    traces = {t.meta: (list(t.x), list(t.y)) for t in dashboard.figure.data if t.xaxis in ("x", "x2", "x4")}
    assert set(traces) == set(expected)
    for name, values in expected.items():
        assert traces[name][0] == list(range(12))
        assert _same(traces[name][1], values)
    assert _panel_titles(dashboard.figure) == ["Reward", "KL to the reference", "Reward vs KL", "Policy loss"]
    assert dashboard.figure.layout.title.text == "ppo-demo"
    assert dashboard.widget.children == (dashboard.show_all, dashboard.figure)


def test_show_all_metrics_toggle() -> None:
    log = MetricsLog(run_name="ppo")
    log.log({"objective/kl": 0.1, "lr": 3e-4, "eps": 12.0}, step=1, stage="ppo")
    dashboard = LiveDashboard(log, min_interval=0.0)
    assert [t.meta for t in dashboard.figure.data] == ["objective/kl"]
    dashboard.show_all.value = True
    assert [t.meta for t in dashboard.figure.data] == ["objective/kl", "lr", "eps"]
    log.log({"objective/kl": 0.2, "lr": 3e-4, "eps": 11.0}, step=2, stage="ppo")
    dashboard.flush()
    assert list(dashboard.figure.data[2].y) == [12.0, 11.0]


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
    deadline = time.monotonic() + 60  # the trailing redraw's state, not its speed: ends once it is drawn
    while len(quick.figure.data[0].x) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(quick.figure.data[0].y) == [float(s) for s in range(60)]


def test_new_metrics_add_traces_and_panels_in_the_same_widget() -> None:
    log = MetricsLog()
    dashboard = LiveDashboard(log, min_interval=0.0)
    box = dashboard.widget
    log.log({"objective/kl": 0.1}, step=1, stage="ppo")
    assert _panel_titles(dashboard.figure) == ["KL to the reference"]
    log.log({"objective/kl": 0.2, "objective/scores": 1.0}, step=2, stage="ppo")
    log.log({"objective/kl": 0.3, "loss/value_avg": 5.0, "grad_norm": 2.0}, step=3, stage="ppo")
    dashboard.flush()
    fig = dashboard.figure
    assert dashboard.widget is box and box.children == (dashboard.show_all, fig)
    assert _panel_titles(fig) == ["Reward", "KL to the reference", "Reward vs KL", "Value function"]
    assert _traces(fig)["objective/kl"] == ([1, 2, 3], [0.1, 0.2, 0.3])


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
    assert dashboard.widget.layout.width == "100%"


def test_figure_from_log_matches_the_dashboard(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, run_name="sft")
    dashboard = LiveDashboard(log, min_interval=0.0)
    for step in range(5):
        log.log({"loss": 2.0 - step * 0.1, "mean_token_accuracy": 0.5 + step / 20, "epoch": step / 5}, step=step,
                stage="sft")
    log.log_event("stop", "stopped: loss too high", step=4)
    dashboard.flush()
    static = figure_from_log(path)
    assert isinstance(static, go.Figure) and not isinstance(static, go.FigureWidget)
    assert static.layout.title.text == "sft"
    assert _traces(static) == _traces(dashboard.figure)
    assert [(t.meta, t.xaxis, t.yaxis) for t in static.data] == [
        (t.meta, t.xaxis, t.yaxis) for t in dashboard.figure.data]
    assert "epoch" not in _traces(static)
    assert [s.x0 for s in static.layout.shapes] == [4, 4]
    only = figure_from_log(log, metrics=["loss"], title="loss")
    assert _traces(only) == {"loss": (list(range(5)), [2.0 - s * 0.1 for s in range(5)])}
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
        "from rlhf_widgets.runtime.metrics import MetricsLog\n"
        "from rlhf_widgets.views.dashboard import LiveDashboard\n"
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
    figure_id = state[box_id]["state"]["children"][1].removeprefix("IPY_MODEL_")
    traces = state[figure_id]["state"]["_widget_data"]
    assert [t["name"] for t in traces] == ["objective/kl", "loss"]
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "[5, 5]"


# ---------------------------------------------------------------------------------------------- axes and legends
NON_NEGATIVE = ("objective/kl_coef", "val/response_length", "completions/mean_length", "loop/words", "loop/*_labels",
                "val/num_eos_tokens", "episode", "*clipfrac*", "*accuracy*", "*accuracies", "*win_rate*",
                "*agreement*", "frac_*", "completions/clipped_ratio", "learning_rate", "lr", "grad_norm",
                "policy/approxkl_avg", "reward/ensemble_spread", "reward_std")
"""Quantities that cannot be negative: β, counts, lengths, rates and shares, step sizes, spreads."""
COUNTS = ("loop/*_labels", "val/num_eos_tokens")
NOMINAL_WIDTH = 700
"""Width (px) of the plot area a legend's size is estimated against: a figure about 810 px wide, narrower than a
notebook's output area (the 0.6 em a character of `_legend_box` over-estimates; rendered in chromium, every legend
stayed inside its panel down to plotly's 700 px fallback width)."""


def _ppo_ensemble_log() -> MetricsLog:
    """A short PPO run scored by an ensemble, with a constant β and an adaptive one's first steps."""
    log = MetricsLog(run_name="ppo")
    for step in (1, 2, 3):
        members = [0.2 * step, 0.3 * step + 0.1, 0.5 * step - 0.4]
        log.log({"objective/scores": min(members), "objective/rlhf_reward": min(members) - 0.01, "gold/score": 1.0,
                 "objective/kl": 0.1 * step - 0.1, "objective/kl_coef": 0.05,
                 **{f"reward/member_{i}": score for i, score in enumerate(members)},
                 "reward/ensemble_mean": sum(members) / 3, "reward/ensemble_spread": 0.0,
                 "policy/clipfrac_avg": 0.0, "policy/approxkl_avg": 1e-4 * step, "val/response_length": 17.0,
                 "loss/value_avg": 0.2 / step, "val/var_explained": -0.4 + 0.3 * step, "val/num_eos_tokens": 32.0},
                step=step, stage="ppo")
    return log


def _first_round_log() -> MetricsLog:
    """The iterative loop after its first round: no human labels yet, nothing measured against a previous round."""
    log = MetricsLog(run_name="loop")
    log.log({"loop/rm_accuracy_after": 0.70, "loop/rm_gold_agreement_after": 0.87, "loop/kl_to_sft": 1.28,
             "loop/words": 9.5, "loop/rm_win_rate_vs_sft": 0.71, "loop/gold_win_rate_vs_sft": 0.64,
             "loop/human_labels": 0.0, "loop/ai_labels": 245.0}, step=1, stage="loop")
    return log


def _every_view() -> list[tuple[str, go.Figure]]:
    """Every designed view's figure from the real fixture logs and the constructed ones — static, live (the
    dashboard's figure after it drew the whole log) and the all-metrics view."""
    stages = ("sft", "reward", "ppo", "dpo", "grpo", "loop")
    logs = {stage: MetricsLog.load(LOGS / f"{stage}.jsonl") for stage in stages}
    logs |= {"ppo ensemble (constructed)": _ppo_ensemble_log(), "loop round 1 (constructed)": _first_round_log()}
    figures = []
    for name, log in logs.items():
        figures += [(name, figure_from_log(log)), (f"{name}, all metrics", figure_from_log(log, view="all"))]
        live = MetricsLog(run_name=log.run_name)
        dashboard = LiveDashboard(live, min_interval=0.0)
        for record in log.records:
            live.log(record.metrics, step=record.step, stage=record.stage)
        dashboard.flush()
        figures.append((f"{name}, live", dashboard.figure))
        dashboard.close()
    return figures


def _axis(fig: go.Figure, ref: str):
    """The layout axis of a trace's axis reference ("y3" → layout.yaxis3)."""
    return fig.layout[f"{ref[0]}axis{ref[1:]}"]


def _matches(metric: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(metric.removeprefix("eval_"), p) for p in patterns)


def _integer_ticks(axis, values: list[float]) -> bool:
    """Ticks only at whole numbers: a linear tick step of a whole number from a whole number, or plotly's own choice
    on a span of at least 10 (it then picks a step of 1, 2, 5, … : it draws at most 10 ticks an axis)."""
    if axis.tickmode == "linear":
        return float(axis.dtick).is_integer() and axis.dtick >= 1 and float(axis.tick0 or 0).is_integer()
    finite = [v for v in values if math.isfinite(v)]
    return axis.tickmode in (None, "auto") and max(finite) - min(finite) >= 10


@pytest.fixture(scope="module")
def every_view() -> list[tuple[str, go.Figure]]:
    return _every_view()


def test_no_axis_takes_its_ticks_from_another(every_view: list) -> None:
    """A right-hand axis left to plotly.js 3's default ticks ("sync") gets the left axis' grid lines as its ticks:
    0.394, 0.699, 1.005 … and a range stretched to fit them (β below 0). Every overlaying axis chooses its own."""
    synced = [f"{name}: {ref}" for name, fig in every_view for ref in {t.yaxis for t in fig.data}
              if _axis(fig, ref).overlaying and _axis(fig, ref).tickmode in (None, "sync")]
    assert synced == []


def test_axes_of_non_negative_quantities_never_go_below_zero(every_view: list) -> None:
    below = []
    for name, fig in every_view:
        for trace in fig.data:
            axis = _axis(fig, trace.yaxis)
            if not _matches(trace.meta, NON_NEGATIVE):
                continue
            if not (axis.rangemode in ("nonnegative", "tozero") or (axis.range and axis.range[0] >= 0)):
                below.append(f"{name}: {trace.meta} on {trace.yaxis} (rangemode {axis.rangemode}, range {axis.range})")
    assert below == []


def test_round_update_and_count_axes_are_integer(every_view: list) -> None:
    for name, fig in every_view:
        step_axes: dict[str, list[float]] = {}
        for trace in fig.data:
            if trace.customdata is None:  # a panel against the step (x–y panels carry the update as customdata)
                step_axes.setdefault(trace.xaxis, []).extend(trace.x)
        for ref, values in step_axes.items():
            axis = _axis(fig, ref)
            assert _integer_ticks(axis, values), f"{name}: {ref} ({axis.title.text}) ticks between whole numbers"
            if name.startswith("loop"):
                assert axis.title.text == "round", name
            if name.startswith("ppo"):
                assert axis.title.text == "update", name
        counts: dict[str, list[float]] = {}
        for trace in fig.data:
            if _matches(trace.meta, COUNTS):
                counts.setdefault(trace.yaxis, []).extend(trace.y)
        for ref, values in counts.items():
            assert _integer_ticks(_axis(fig, ref), values), f"{name}: counts on {ref} ticked between whole numbers"


def _legend_box(legend, labels: list[str], height: float) -> tuple[float, float, float, float]:
    """A legend's (x0, x1, y0, y1) in paper coordinates, estimated for a plot area `NOMINAL_WIDTH` × `height` px:
    an entry is its symbol (40 px) and text (0.6 em a character); a row is 1.6 em tall."""
    size = legend.font.size or 12
    entries = [40 + 0.6 * size * len(label) for label in labels]
    vertical = legend.orientation in (None, "v")
    width = (max(entries) if vertical else sum(entries)) / NOMINAL_WIDTH
    rows = len(labels) if vertical else 1
    tall = rows * 1.6 * size / height
    x0 = legend.x - {"left": 0, "center": width / 2, "right": width, None: 0, "auto": 0}[legend.xanchor]
    y1 = legend.y + {"top": 0, "middle": tall / 2, "bottom": tall, None: 0, "auto": 0}[legend.yanchor]
    return x0, x0 + width, y1 - tall, y1


def test_every_legend_sits_in_its_own_panel(every_view: list) -> None:
    """Each legend belongs to one panel and lies inside that panel's box: it covers no other panel, title or axis."""
    for name, fig in every_view:
        shown: dict[str, list] = {}
        for trace in fig.data:
            if trace.showlegend is not False:
                shown.setdefault(trace.legend or "legend", []).append(trace)
        for legend_name, traces in shown.items():
            assert len({t.xaxis for t in traces}) == 1, f"{name}: {legend_name} gathers traces of several panels"
            x_dom = _axis(fig, traces[0].xaxis).domain
            y_dom = _axis(fig, traces[0].yaxis).domain
            plot_height = (fig.layout.height or 450) - 100
            x0, x1, y0, y1 = _legend_box(fig.layout[legend_name], [t.name for t in traces], plot_height)
            inside = x_dom[0] - 1e-9 <= x0 and x1 <= x_dom[1] + 1e-9 and y_dom[0] - 1e-9 <= y0 and y1 <= y_dom[1] + 1e-9
            assert inside, (f"{name}: {legend_name} ({[t.name for t in traces]}) spans x {x0:.2f}–{x1:.2f}, "
                            f"y {y0:.2f}–{y1:.2f}; its panel x {x_dom}, y {y_dom}")


def test_an_empty_dashboard_says_what_to_do() -> None:
    log = MetricsLog(run_name="ppo")
    dashboard = LiveDashboard(log, min_interval=0.0, empty_message="no data yet — press Start")
    for fig in (dashboard.figure, figure_from_log(MetricsLog(run_name="ppo"))):
        texts = [a.text for a in fig.layout.annotations]
        assert any(text.startswith("no data yet") for text in texts), texts
        assert fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False, "no empty grid"
    assert "press Start" in dashboard.figure.layout.annotations[0].text
    log.log({"objective/kl": 0.1}, step=1, stage="ppo")
    assert not any("no data" in a.text for a in dashboard.figure.layout.annotations)
    assert dashboard.figure.layout.xaxis.visible is not False


def test_every_figure_has_one_plot_style() -> None:
    from rlhf_widgets.evaluation.leaderboard import leaderboard, leaderboard_figure
    from rlhf_widgets.views.reward_figures import reward_report_figures
    from rlhf_widgets.views.run_comparison import RunComparison
    from rlhf_widgets.views.run_figures import overlay_figure

    report = {"chosen_scores": [1.0, 2.0], "rejected_scores": [0.0, 0.5], "accuracy": 1.0, "mean_margin": 1.25,
              "n_pairs": 4, "expected_calibration_error": 0.1,
              "calibration": [{"predicted": 0.3, "observed": 0.0, "count": 2}],
              "length": {"bins": [{"low": 3, "high": 10, "accuracy": 0.9, "count": 5}], "prefers_longer": 0.8}}
    ppo = MetricsLog.load(LOGS / "ppo.jsonl")
    board = leaderboard([("a", "b", "a"), ("a", "b", "b"), ("b", "a", "a")], bootstrap=0)
    figures = {"figure_from_log": figure_from_log(ppo), "overlay_figure": overlay_figure({"ppo": ppo}, "objective/kl"),
               **{f"reward_report_figures[{k}]": f for k, f in reward_report_figures(report).items()},
               "overoptimization_figure": overoptimization_figure({"PPO": [{"sqrt_kl": 0, "proxy": 1, "gold": 1}]}),
               "leaderboard_figure": leaderboard_figure(board), "RunComparison": RunComparison({"ppo": ppo}).figure}
    backgrounds = {name: fig.layout.template.layout.plot_bgcolor for name, fig in figures.items()}
    assert len(set(backgrounds.values())) == 1, backgrounds
