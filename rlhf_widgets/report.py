"""The static HTML report of a run: every number in `report.json`, the comparison table and every stage's
figures in one self-contained `report.html`. Model text is HTML-escaped everywhere."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlhf_widgets.metrics import MetricsLog
from rlhf_widgets.views import figure_from_log


def write_report(out: Path, config: Mapping[str, Any], numbers: Mapping[str, Any], seconds: Mapping[str, float],
                 logs: Mapping[str, MetricsLog]) -> Path:
    """`report.json` (every number) and `report.html` (plots + comparison table) in `out`; returns the HTML path.

    `config`: the run's settings; `numbers`: its results (`comparison`: name → row of `compare_policies`,
    `reward`: the reward-model summary); `seconds`: wall time per stage; `logs`: each stage's metrics log.
    Every text from a model or a user is HTML-escaped.
    """
    everything = {"config": dict(config), "numbers": dict(numbers), "seconds": dict(seconds)}
    (out / "report.json").write_text(json.dumps(everything, indent=2, default=str))
    parts = ["<html><head><meta charset='utf-8'><title>rlhf-widgets quickstart</title></head><body>",
             "<h1>rlhf-widgets quickstart</h1>",
             f"<p>Stages and seconds: {html.escape(json.dumps(seconds))}</p>"]
    comparison = numbers.get("comparison")
    if comparison:
        cols = ["gold_win_rate", "rm_win_rate", "gold_mean", "kl_to_reference", "mean_words", "example"]
        parts.append("<h2>Comparison on held-out prompts (vs SFT)</h2><table border='1' cellpadding='4'><tr>"
                     "<th>policy</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        for name, row in comparison.items():
            cells = "".join(
                f"<td>{row[c]:.3f}</td>" if isinstance(row.get(c), float)
                else f"<td>{html.escape(str(row.get(c, '')))}</td>"
                for c in cols
            )
            parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
        parts.append("</table>")
    if "reward" in numbers:
        parts.append(f"<h2>Reward model</h2><pre>{html.escape(json.dumps(numbers['reward'], indent=2))}</pre>")
    first = True
    for stage, log in logs.items():
        fig = figure_from_log(log, title=f"{stage} metrics")
        parts.append(f"<h2>{html.escape(stage)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
        first = False
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
