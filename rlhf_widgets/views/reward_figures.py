"""Static plotly figures of a reward model and of over-optimization: `reward_report_figures` (an
`evaluation.reward_report`: scores of chosen vs rejected, calibration, accuracy by length difference) and
`overoptimization_figure` (proxy and gold reward against √KL, said in words by `describe_overoptimization`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlhf_widgets.views.style import CHOSEN, GOLD, PLOT_TEMPLATE, PROXY, REJECTED, plot_text


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

