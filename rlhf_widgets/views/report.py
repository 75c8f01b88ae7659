"""The report of a run: every number in `report.json`, and one self-contained, styled `report.html` to share.

The page: a title, the run's settings, the stage timings as a table, the comparison of the policies (readable
numbers, each example in full on hover and on click), the reward model's summary (with a warning when too few
held-out pairs back it), and each stage's designed figures (`views.figure_from_log`), plus the proxy-vs-gold
figure of a PPO run that logged a gold score, and what the reward-hacking monitors (`evaluation.check_log`) say about
a PPO run — also in `report.json` under "alerts" — with what the run did on one (`PPOConfig.on_alert`: stopped or
rolled back; `report.json` "alarm"). Plotly's script is inlined once, so the file opens offline. Every
text from a model, a user or a config is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf_widgets.runtime.metrics import Event, MetricsLog
from rlhf_widgets.runtime.monitors import check_log
from rlhf_widgets.views.reward_figures import overoptimization_figure, reward_report_figures
from rlhf_widgets.views.run_figures import figure_from_log
from rlhf_widgets.views.tables import format_number

FEW_PAIRS = 50
"""Below this many held-out pairs the reward model's accuracy is flagged as too uncertain to read."""
EXAMPLE_CHARS = 90
"""Characters of an example shown in the table before "…" (the full text is on hover and on click)."""
STAGE_NOTES = {
    "sft": "Supervised fine-tuning: the loss and token accuracy on the demonstrations.",
    "reward": "Reward model: Bradley–Terry loss, pair accuracy and margin (dashed: held-out pairs).",
    "ppo": ("PPO: is the reward going up, and at what KL from the SFT model; is the policy update healthy "
            "(clipping, ratio, entropy); is the value function learning."),
    "dpo": "DPO: preference accuracy, the margin between the chosen and rejected answers' implicit rewards.",
    "grpo": "GRPO: the group's reward, KL to the reference and completion length.",
    "rloo": "RLOO: the group's reward, KL to the reference and completion length.",
}
STAGE_NAMES = {"sft": "SFT", "reward": "Reward model", "ppo": "PPO", "dpo": "DPO", "grpo": "GRPO", "rloo": "RLOO"}
COLUMNS = {  # comparison column → (header, how to show a number)
    "gold_win_rate": ("gold win rate", "percent"),
    "rm_win_rate": ("RM win rate", "percent"),
    "gold_mean": ("gold score", "number"),
    "rm_mean": ("RM score", "number"),
    "kl_to_reference": ("KL to SFT (nats)", "number"),
    "mean_words": ("words", "words"),
    "non_empty": ("non-empty", "percent"),
}
STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 28px; margin: 8px 0 4px; } h2 { font-size: 21px; margin: 36px 0 8px; border-bottom: 1px solid #d0d7de; }
.sub { color: #59636e; margin: 0 0 16px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 20px 16px; margin: 16px 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e5e8eb; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; }
.bar { display: inline-block; height: 10px; background: #54aeff; border-radius: 2px; vertical-align: middle; }
details.example { max-width: 36em; } details.example summary { cursor: pointer; color: #0969da; }
details.example div { white-space: pre-wrap; background: #f6f8fa; padding: 6px 8px; border-radius: 4px;
                      margin-top: 4px; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 6px 10px; }
.note { color: #59636e; margin: 4px 0 8px; }
.settings td:first-child { font-family: ui-monospace, monospace; color: #59636e; }
"""


def write_report(out: Path, config: Mapping[str, Any], numbers: Mapping[str, Any], seconds: Mapping[str, float],
                 logs: Mapping[str, MetricsLog], *, reward_report: Mapping[str, Any] | None = None,
                 title: str = "rlhf-widgets quickstart") -> Path:
    """`report.json` (every number) and `report.html` (the page described above) in `out`; returns the HTML path.

    `config`: the run's settings; `numbers`: its results (`comparison`: name → row of `compare_policies`;
    `reward`: the reward-model summary — `accuracy`, `gold_agreement`, `mean_margin`,
    `expected_calibration_error`, `n_pairs`); `seconds`: wall time per stage; `logs`: each stage's metrics log;
    `reward_report`: the full `evaluation.reward_report` dict, to draw its figures (optional); `title`: the
    page's title.
    """
    out = Path(out)
    alerts = {stage: check_log(log, stage=stage) for stage, log in logs.items() if stage == "ppo"}
    actions = {stage: _alarm_actions(log) for stage, log in logs.items() if stage == "ppo"}
    everything = {"config": dict(config), "numbers": dict(numbers), "seconds": dict(seconds),
                  "alerts": {stage: [{"kind": a.kind, "update": a.update, "message": a.message} for a in found]
                             for stage, found in alerts.items()},
                  "alarm": {stage: [{"action": e.kind, "update": e.step, "message": e.message, **e.data} for e in done]
                            for stage, done in actions.items()}}
    (out / "report.json").write_text(json.dumps(everything, indent=2, default=str))
    figures = _Figures()
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="sub">Written {dt.datetime.now():%Y-%m-%d %H:%M} · {_e(str(out.resolve()))}</p>']
    comparison = numbers.get("comparison")
    if comparison:
        body.append(_section("Policies on held-out prompts", _comparison_table(comparison, config)))
    if "reward" in numbers:
        parts = [_reward_summary(numbers["reward"])]
        if reward_report is not None:
            parts += [figures.html(fig) for fig in reward_report_figures(reward_report).values()]
        body.append(_section("Reward model", "".join(parts)))
    for stage, log in logs.items():
        parts = [f'<p class="note">{_e(STAGE_NOTES.get(stage, ""))}</p>']
        if stage in alerts:
            parts.append(_alerts(alerts[stage], actions[stage]))
        parts.append(figures.html(figure_from_log(log, title="")))
        overoptimization = _overoptimization(log)
        if overoptimization is not None:
            parts.append(figures.html(overoptimization))
        body.append(_section(f"{STAGE_NAMES.get(stage, stage)} training", "".join(parts)))
    body.append(_section("Stage timings", _timings_table(seconds)))
    body.append(_section("Settings", _settings_table(config)))
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body><main>"
            + "\n".join(body) + "</main></body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _alarm_actions(log: MetricsLog) -> list[Event]:
    """What a PPO run did on an alert (`PPOConfig.on_alert`): its "stopped" / "rollback" events that name one."""
    return [e for e in log.events() if e.kind in ("stopped", "rollback") and "alert" in e.data]


def _alerts(alerts: list, actions: Sequence[Event] = ()) -> str:
    """The reward-hacking monitors' verdict on a PPO log (`evaluation.check_log`), and what the run did on an alert
    (`actions`: `_alarm_actions`)."""
    done = "".join(f"<p><b>{'Rolled back' if e.kind == 'rollback' else 'Stopped'} at update {e.step}</b>: "
                   f"{_e(e.message)}</p>" for e in actions)
    if not alerts:
        return ('<p class="note">The reward-hacking monitors raised nothing (length drift, KL acceleration, entropy '
                'collapse, proxy–gold divergence, ensemble disagreement, conservative divergence).</p>' + done)
    items = "".join(f"<li>update {a.update} · {_e(a.kind.replace('_', ' '))}: {_e(a.message)}</li>" for a in alerts)
    return (f'<div class="warn"><b>The reward-hacking monitors raised {len(alerts)} alert'
            f'{"s" if len(alerts) > 1 else ""}</b> — look at the samples before trusting this policy '
            f"(docs/FAILURE_MODES.md):<ul>{items}</ul>{done}</div>")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _section(heading: str, content: str) -> str:
    return f"<h2>{_e(heading)}</h2><section>{content}</section>"


class _Figures:
    """Plotly figures as HTML divs, plotly.js inlined with the first (self-contained, one copy)."""

    def __init__(self) -> None:
        self.first = True

    def html(self, fig: Any) -> str:
        div = fig.to_html(full_html=False, include_plotlyjs=self.first, default_width="100%",
                          config={"responsive": True, "displaylogo": False})
        self.first = False
        return div


def _example_cell(text: str) -> str:
    """The start of an answer, the whole of it on hover (title) and on click (details)."""
    text = str(text)
    short = text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1].rstrip() + "…"
    if not text.strip():
        return '<td><i>(empty answer)</i></td>'
    return (f'<td><details class="example" title="{_e(text)}"><summary>{_e(short)}</summary>'
            f"<div>{_e(text)}</div></details></td>")


def _comparison_table(comparison: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any]) -> str:
    present = [c for c in COLUMNS if any(c in row for row in comparison.values())]
    head = "".join(f"<th>{_e(COLUMNS[c][0])}</th>" for c in present)
    rows = []
    for name, row in comparison.items():
        cells = "".join(f'<td class="num">{_e(format_number(row.get(c), COLUMNS[c][1]))}</td>' for c in present)
        rows.append(f"<tr><th>{_e(name)}</th>{cells}{_example_cell(row.get('example', ''))}</tr>")
    n = config.get("eval_prompts")
    note = (f'<p class="note">Each policy answered the same {_e(n)} held-out prompts; a win rate is the share of '
            "prompts where its answer beat the SFT model's under that judge (ties count ½). The gold scorer never "
            "trained anything; the RM is the reward model the policies were trained against.</p>"
            if n else "")
    return (f"{note}<table><thead><tr><th>policy</th>{head}<th>first answer (hover or click for all of it)</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _reward_summary(summary: Mapping[str, Any]) -> str:
    labels = {"accuracy": ("held-out accuracy", "percent"), "gold_agreement": ("agreement with gold", "percent"),
              "mean_margin": ("mean margin r(chosen) − r(rejected)", "number"),
              "expected_calibration_error": ("expected calibration error", "number"),
              "n_pairs": ("held-out pairs", "count")}
    rows = "".join(f'<tr><td>{_e(label)}</td><td class="num">{_e(format_number(summary[key], kind))}</td></tr>'
                   for key, (label, kind) in labels.items() if key in summary)
    if dependence := summary.get("prompt_dependence"):
        rows += ('<tr><td>answers that score higher under their own prompt than under another</td><td class="num">'
                 f'{_e(format_number(dependence["own_prompt_higher"], "percent"))}</td></tr>')
    n = summary.get("n_pairs")
    warning = ""
    if isinstance(n, int) and n < FEW_PAIRS:
        half_width = 1.96 * math.sqrt(0.25 / n) if n else float("inf")
        warning = (f'<p class="warn">Only {n} held-out pairs: an accuracy from so few is uncertain by about '
                   f"±{half_width:.0%} (95%). Hold out more pairs (`eval_fraction`) before trusting it.</p>")
    return f"{warning}<table class='settings'><tbody>{rows}</tbody></table>{_ensemble_summary(summary)}"


def _ensemble_summary(summary: Mapping[str, Any]) -> str:
    """A reward ensemble's members (`reward_report`'s "ensemble"): how they combine, each one's held-out accuracy
    and gold agreement, and the share of pairs they disagree on. "" for a single reward model."""
    ensemble = summary.get("ensemble")
    if not ensemble:
        return ""
    objective = {"worst": "the lowest member's score", "mean": "the members' mean",
                 "uncertainty": f"mean − {ensemble.get('uncertainty_weight')} × variance"}.get(
                     ensemble.get("objective"), str(ensemble.get("objective")))
    accuracy = ensemble.get("member_accuracy") or []
    gold = ensemble.get("member_gold_agreement") or []
    rows = "".join(
        f'<tr><td>member {i}</td><td class="num">{_e(format_number(a, "percent"))}</td>'
        f'<td class="num">{_e(format_number(gold[i], "percent")) if i < len(gold) else "—"}</td></tr>'
        for i, a in enumerate(accuracy))
    return (f'<p class="note">An ensemble of {len(accuracy)} reward models, combined as {_e(objective)}; the '
            f"members order {_e(format_number(ensemble.get('disagreement', 0.0), 'percent'))} of the held-out pairs "
            "differently.</p><table class='settings'><thead><tr><th></th><th>held-out accuracy</th>"
            f"<th>agreement with gold</th></tr></thead><tbody>{rows}</tbody></table>")


def _timings_table(seconds: Mapping[str, float]) -> str:
    total = sum(seconds.values()) or 1.0
    rows = "".join(
        f'<tr><td>{_e(stage)}</td><td class="num">{_e(format_seconds(s))}</td>'
        f'<td><span class="bar" style="width:{200 * s / total:.0f}px"></span> {s / total:.0%}</td></tr>'
        for stage, s in seconds.items())
    return (f"<table><thead><tr><th>stage</th><th>time</th><th>share</th></tr></thead><tbody>{rows}"
            f'<tr><th>total</th><th class="num">{_e(format_seconds(sum(seconds.values())))}</th><th></th></tr>'
            "</tbody></table>")


def format_seconds(seconds: float) -> str:
    """"42 s", "2 min 03 s", "1 h 05 min"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def _settings_table(config: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(json.dumps(v, default=str))}</td></tr>" for k, v in config.items())
    return f"<table class='settings'><tbody>{rows}</tbody></table>"


def _overoptimization(log: MetricsLog) -> Any:
    """The proxy-vs-gold figure of a PPO log with `gold/score` (None otherwise, or with under 2 points)."""
    from rlhf_widgets.evaluation.overoptimization import ppo_overoptimization_curve

    updates = len(log.series("gold/score")[0])
    if updates < 2 or not log.series("objective/kl")[0]:
        return None
    points = ppo_overoptimization_curve(log, window=max(1, min(5, updates // 6)))
    return overoptimization_figure({"PPO": points}) if len(points) >= 2 else None
