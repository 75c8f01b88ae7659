"""The HTML report: self-contained, designed sections, readable numbers, full examples, every text escaped."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.views.report import format_number, format_seconds, write_report

HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"
LONG = "Hello! I am sorry your order #4521 has not arrived. " * 6


class Page(HTMLParser):
    """Tags, scripts' sources, the text of <h2>s, table cells and <details> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.script_src: list[str] = []
        self.headings: list[str] = []
        self.cells: list[str] = []
        self.details: list[str] = []
        self.titles: list[str] = []
        self.summaries: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.script_src.append(attrs["src"])
        if tag == "details" and "title" in attrs:
            self.titles.append(attrs["title"])
        self._in.append(tag)
        if tag == "h2":
            self.headings.append("")
        if tag in ("td", "th"):
            self.cells.append("")
        if tag == "div" and "details" in self._in:
            self.details.append("")
        if tag == "summary":
            self.summaries.append("")

    def handle_endtag(self, tag):
        while self._in and self._in.pop() != tag:
            pass

    def handle_data(self, data):
        if "script" in self._in:
            return
        if self._in and self._in[-1] == "h2":
            self.headings[-1] += data
        if "td" in self._in or "th" in self._in:
            self.cells[-1] += data
        if "details" in self._in and self._in[-1] == "div":
            self.details[-1] += data
        if self._in and self._in[-1] == "summary":
            self.summaries[-1] += data


def test_report_is_designed_self_contained_and_escaped(tmp_path: Path) -> None:
    ppo = MetricsLog(run_name="ppo")
    for step in range(1, 13):
        ppo.log({"objective/kl": 0.2 * step, "objective/scores": 0.1 * step, "gold/score": 1 + 0.05 * step,
                 "objective/rlhf_reward": 0.08 * step, "val/response_length": 20.0 + 2 * step}, step=step, stage="ppo")
    ppo.log_event("setting", f"note {HOSTILE}", step=6, stage="ppo")
    numbers = {
        "comparison": {"SFT": {"gold_win_rate": 0.5, "gold_mean": 1.23456, "kl_to_reference": 0.0,
                               "mean_words": 11.0, "example": HOSTILE},
                       "PPO": {"gold_win_rate": 0.8612345, "gold_mean": 2.34567, "kl_to_reference": 3.21987,
                               "mean_words": 23.46, "example": LONG}},
        "reward": {"accuracy": 0.0, "gold_agreement": 0.5, "mean_margin": 0.1, "expected_calibration_error": 0.2,
                   "n_pairs": 3},
    }
    config = {"output_dir": str(tmp_path), "eval_prompts": 128, "note": HOSTILE}
    seconds = {"sft": 59.4, "ppo": 123.0}
    path = write_report(tmp_path, config, numbers, seconds, {"ppo": ppo})

    text = path.read_text()
    assert "<script>alert" not in text and "<img src=x" not in text  # escaped everywhere, figures included
    page = Page()
    page.feed(text)
    assert page.script_src == [], "self-contained: no external scripts"
    assert text.count("plotly.js v") == 1, "plotly.js inlined once"
    assert page.headings == ["Policies on held-out prompts", "Reward model", "PPO training", "Stage timings",
                             "Settings"]
    # readable numbers; the full example on click and hover, exactly as the model wrote it
    assert ["PPO", "86%", "2.35", "3.22", "23.5"] == page.cells[page.cells.index("PPO"):][:5]
    assert LONG in page.details and HOSTILE in page.details and LONG in page.titles
    assert page.summaries == [HOSTILE, LONG[:89].rstrip() + "…"]
    assert "Only 3 held-out pairs" in text and "±57%" in text
    assert ["sft", "59 s", "33%"] == [c.strip() for c in page.cells[page.cells.index("sft"):][:3]]
    assert "2 min 03 s" in page.cells
    assert "Proxy and gold reward against KL" in text  # the PPO log has gold: its overoptimization figure
    assert json.loads((tmp_path / "report.json").read_text())["numbers"]["reward"]["n_pairs"] == 3
    assert not re.search(r"Stages and seconds: \{", text)
    # the monitors' verdict on the PPO log: its lengths grew from 22 to 44 tokens, past +50% at update 9
    assert "raised 1 alert" in text and "update 9 · length drift" in text
    assert json.loads((tmp_path / "report.json").read_text())["alerts"]["ppo"][0]["kind"] == "length_drift"


def test_report_says_when_the_monitors_raised_nothing_and_escapes_their_messages(tmp_path: Path) -> None:
    from rlhf_widgets.runtime.monitors import Alert
    from rlhf_widgets.views.report import _alerts

    quiet = MetricsLog(run_name="ppo")
    for step in range(1, 13):
        quiet.log({"objective/kl": 0.1 * step, "objective/scores": 0.1 * step, "gold/score": 1 + 0.1 * step,
                   "val/response_length": 20.0}, step=step, stage="ppo")
    text = write_report(tmp_path, {}, {}, {}, {"ppo": quiet}).read_text()
    assert "monitors raised nothing" in text and "class=\"warn\"" not in text
    assert json.loads((tmp_path / "report.json").read_text())["alerts"] == {"ppo": []}
    assert HOSTILE not in _alerts([Alert("length_drift", 3, HOSTILE)]) and "&lt;script&gt;" in _alerts(
        [Alert("length_drift", 3, HOSTILE)])


def test_reward_model_figures_join_its_summary(tmp_path: Path) -> None:
    report = {"chosen_scores": [1.0, 2.0], "rejected_scores": [0.0, 0.5], "accuracy": 1.0, "mean_margin": 1.25,
              "n_pairs": 400, "expected_calibration_error": 0.1,
              "calibration": [{"predicted": 0.3, "observed": 0.0, "count": 2}],
              "length": {"bins": [{"low": 3, "high": 10, "accuracy": 0.9, "count": 5}], "prefers_longer": 0.8}}
    summary = {k: report[k] for k in ("accuracy", "mean_margin", "expected_calibration_error", "n_pairs")}
    text = write_report(tmp_path, {}, {"reward": summary}, {}, {}, reward_report=report).read_text()
    assert "Reward of chosen vs rejected" in text and "Calibration (ECE 0.100)" in text
    assert "held-out pairs" in text and "400" in text and 'class="warn"' not in text  # enough pairs: no warning


def test_number_formats() -> None:
    assert format_number(0.8612) == "0.861" and format_number(0.8612, "percent") == "86%"
    assert format_number(float("nan")) == format_number(None) == "–"
    assert format_number(2773, "count") == "2,773" and format_number(23.456, "words") == "23.5"
    assert [format_seconds(s) for s in (42.4, 123, 3900)] == ["42 s", "2 min 03 s", "1 h 05 min"]


def test_an_ensembles_members_show_beside_its_summary(tmp_path: Path) -> None:
    summary = {"accuracy": 0.8, "n_pairs": 400,
               "ensemble": {"objective": "worst", "uncertainty_weight": 0.5, "member_accuracy": [0.81, 0.79, 0.84],
                            "member_gold_agreement": [0.9, 0.88, 0.91], "disagreement": 0.14}}
    page = Page()
    page.feed(write_report(tmp_path, {}, {"reward": summary}, {}, {}).read_text())
    text = " ".join(page.cells)
    assert "member 2" in text and "84%" in text and "91%" in text
    html = (tmp_path / "report.html").read_text()
    assert "An ensemble of 3 reward models, combined as the lowest member&#x27;s score" in html
    assert "order 14% of the held-out pairs differently" in html
    page = Page()
    page.feed(write_report(tmp_path, {}, {"reward": {"accuracy": 0.8, "n_pairs": 400}}, {}, {}).read_text())
    assert "member 0" not in " ".join(page.cells)
