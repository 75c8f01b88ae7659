"""Arena leaderboard: Bradley–Terry ratings against hand-computed and known-strength answers, bootstrap
coverage over seeds, the input adapters (store, responses + judge) and the figure."""

from __future__ import annotations

import math
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlhf_widgets.evaluation import evaluation_store
from rlhf_widgets.evaluation.leaderboard import (
    fit_bradley_terry,
    judgments_from_responses,
    judgments_from_store,
    leaderboard,
    leaderboard_figure,
)
from rlhf_widgets.sandbox import curt_demo, gold_preference, ideal_response, random_response

MODELS = ["A", "B", "C", "D"]
TRUE = np.array([0.0, 120.0, -80.0, 60.0]) - 25.0  # Elo points, mean 0: rated around base 1000


def record(wins: int, losses: int, ties: int = 0, a: str = "x", b: str = "y") -> list[tuple[str, str, str]]:
    return [(a, b, "a")] * wins + [(a, b, "b")] * losses + [(a, b, "tie")] * ties


def draw_judgments(true: np.ndarray, n: int, seed: int, tie_share: float = 0.2) -> pd.DataFrame:
    """n games between random pairs, scored so that E[score of a] = P_BT(a beats b): a win w.p. p − t/2,
    a tie w.p. t, a loss otherwise — the data a half-win-per-tie fit is consistent for."""
    rng = np.random.default_rng(seed)
    k = len(true)
    i = rng.integers(0, k, n)
    j = (i + rng.integers(1, k, n)) % k
    p = 1 / (1 + 10 ** ((true[j] - true[i]) / 400))
    u = rng.random(n)
    winner = np.where(u < p - tie_share / 2, "a", np.where(u < p + tie_share / 2, "tie", "b"))
    names = np.array([chr(ord("A") + m) for m in range(k)])
    return pd.DataFrame({"model_a": names[i], "model_b": names[j], "winner": winner})


# ---------------------------------------------------------------- known answers
def test_two_models_rating_gap_is_400_log10_of_the_win_ratio() -> None:
    ratings = fit_bradley_terry(record(30, 10))
    assert ratings["x"] - ratings["y"] == pytest.approx(400 * math.log10(3), abs=0.01)
    assert ratings.mean() == pytest.approx(1000)
    # a tie is half a win for each side: 20 wins, 10 losses, 10 ties = 25 : 15
    ratings = fit_bradley_terry(record(20, 10, 10), anchor="y", base=1500)
    assert ratings["y"] == pytest.approx(1500)
    assert ratings["x"] - 1500 == pytest.approx(400 * math.log10(25 / 15), abs=0.01)
    # sides do not matter: the same games entered as (y, x)
    assert fit_bradley_terry(record(10, 30, a="y", b="x"))["x"] == pytest.approx(1000 + 200 * math.log10(3), abs=0.01)


def test_three_models_in_a_balanced_cycle_rate_equal() -> None:
    games = record(3, 1, a="x", b="y") + record(3, 1, a="y", b="z") + record(3, 1, a="z", b="x")
    assert fit_bradley_terry(games).to_numpy() == pytest.approx([1000, 1000, 1000], abs=1e-6)


def test_ratings_recover_the_generating_strengths_at_large_n() -> None:
    true = np.array([0.0, 100.0, -50.0, 200.0, 50.0])
    table = leaderboard(draw_judgments(true, 20_000, seed=1), bootstrap=200).set_index("model")
    expected = pd.Series(true - true.mean() + 1000, index=list("ABCDE"))
    assert (table["rating"] - expected).abs().max() < 12  # the standard error here is ~4 points
    assert list(table.index) == ["D", "B", "E", "A", "C"]
    anchored = fit_bradley_terry(draw_judgments(true, 20_000, seed=1), anchor="A")
    assert (anchored - pd.Series(true + 1000, index=list("ABCDE"))).abs().max() < 12


def test_bootstrap_intervals_cover_the_true_ratings_at_the_stated_rate() -> None:
    covered, widths = [], {400: [], 1600: []}
    for seed in range(50):
        for n in (400, 1600) if seed < 10 else (400,):
            table = leaderboard(draw_judgments(TRUE, n, seed), bootstrap=200, seed=seed).set_index("model")
            table = table.loc[MODELS]
            widths[n].append((table["upper"] - table["lower"]).mean())
            if n == 400:
                covered += list((table["lower"] <= TRUE + 1000) & (TRUE + 1000 <= table["upper"]))
    coverage = np.mean(covered)
    assert 0.88 <= coverage <= 0.99, coverage  # 200 intervals at a stated 95%
    # four times the judgments, half the width (intervals shrink as 1/√n, they are not just wide)
    assert 0.4 < np.mean(widths[1600]) / np.mean(widths[400][:10]) < 0.6


def test_table_columns_counts_and_seeded_bootstrap() -> None:
    games = record(30, 10) + record(5, 5, 2, a="y", b="z")
    table = leaderboard(games, bootstrap=300, seed=3)
    assert list(table.columns) == ["model", "rating", "lower", "upper", "games", "win_rate"]
    row = table.set_index("model").loc["y"]
    assert row["games"] == 52 and row["win_rate"] == pytest.approx((10 + 5 + 1) / 52)
    assert (table["lower"] < table["rating"]).all() and (table["rating"] < table["upper"]).all()
    assert list(table["rating"]) == sorted(table["rating"], reverse=True)
    pd.testing.assert_frame_equal(table, leaderboard(games, bootstrap=300, seed=3))
    assert not np.allclose(table["lower"], leaderboard(games, bootstrap=300, seed=4)["lower"])
    no_interval = leaderboard(games, bootstrap=0)
    assert no_interval["lower"].isna().all() and no_interval["rating"].tolist() == table["rating"].tolist()


def test_a_model_that_won_every_game_is_rated_inf_unless_a_prior_is_given() -> None:
    games = record(6, 0, a="x", b="y") + record(4, 4, a="y", b="z")
    with pytest.warns(UserWarning, match=r"won every game: \['x'\]"):
        ratings = fit_bradley_terry(games, anchor="y")
    assert ratings["x"] == math.inf and ratings["y"] == 1000 and ratings["z"] == pytest.approx(1000, abs=1e-3)
    with pytest.warns(UserWarning, match="won every game"):  # measured against the mean, nobody is finite
        assert fit_bradley_terry(games).tolist() == [math.inf, -math.inf, -math.inf]
    with pytest.warns(UserWarning, match="won every game"):
        table = leaderboard(games, anchor="y", bootstrap=200).set_index("model")
    assert table.loc["x", ["rating", "lower", "upper"]].tolist() == [math.inf] * 3
    assert np.isfinite(table.loc["z", ["lower", "upper"]].astype(float)).all()
    # one virtual tie between every two models that met: 6.5 : 0.5 for x over y, 4.5 : 4.5 for y and z
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior = fit_bradley_terry(games, anchor="y", virtual_ties=1)
        fit_bradley_terry(games + [("y", "x", "a")], anchor="y")  # one loss: the ratings exist, no warning
    assert prior["x"] - 1000 == pytest.approx(400 * math.log10(13), abs=0.01)
    assert prior["z"] == pytest.approx(1000, abs=1e-3)
    # a model that beat only some and lost to none of the rest of its group: unbounded above the anchor only
    chain = record(3, 0, a="p", b="q") + record(2, 1, a="q", b="r")
    with pytest.warns(UserWarning):
        assert fit_bradley_terry(chain, anchor="p").tolist() == [1000, -math.inf, -math.inf]


@pytest.mark.parametrize(("judgments", "message"), [
    (record(3, 1, a="p", b="q") + record(2, 2, a="r", b="s"), r"\['r', 's'\] were never compared with 'p'"),
    ([("x", "y", "a"), ("x", "y", "skip")], r"judgment 1: winner must be one of"),
    ([("x", "x", "a")], r"judgment 0: both sides are 'x'"),
    ([("x", "", "a")], r"judgment 0: model_b must be a non-empty"),
    ([("x", "y")], r"judgment 0: expected \(model_a, model_b, winner\)"),
    (pd.DataFrame({"model_a": ["x"], "winner": ["a"]}), r"missing \['model_b'\]"),
    ([], "no judgments to rate"),
])
def test_bad_judgments_are_refused_naming_the_row(judgments, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        leaderboard(judgments, bootstrap=10)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="anchor 'z' is not among"):
        fit_bradley_terry(record(2, 1), anchor="z")
    with pytest.raises(ValueError, match="confidence=1"):
        leaderboard(record(2, 1), confidence=1)
    with pytest.raises(ValueError, match="virtual_ties=-1"):
        fit_bradley_terry(record(2, 1), virtual_ties=-1)


# ---------------------------------------------------------------- adapters
def test_judgments_from_a_store_use_the_models_in_pair_metadata(tmp_path: Path) -> None:
    store = evaluation_store(tmp_path / "eval.sqlite", ["p0", "p1", "p2", "p3"], ["c0", "c1", "c2", "c3"],
                             ["b0", "b1", "b2", "b3"], candidate_name="PPO", baseline_name="SFT")
    same = store.add_pairs([{"prompt": "p4", "response_a": "x", "response_b": "y",
                             "metadata": {"a": {"model": "SFT"}, "b": {"model": "SFT"}}}])
    for pair_id, choice in zip([1, 2, 3, 4, *same], ["a", "a", "tie", "skip", "a"], strict=True):
        store.record(pair_id, choice, annotator="human")
    frame = judgments_from_store(store, annotator="human")
    assert frame[["model_a", "model_b", "winner", "pair_id"]].values.tolist() == [
        ["PPO", "SFT", "a", 1], ["PPO", "SFT", "a", 2], ["PPO", "SFT", "tie", 3]]
    assert frame.attrs == {"skipped_or_conflicting": 1, "same_model_pairs": 1}
    ratings = fit_bradley_terry(frame, anchor="SFT")
    assert ratings["PPO"] == pytest.approx(1000 + 400 * math.log10(2.5 / 0.5), abs=0.01)

    store.add_pairs([{"prompt": "p5", "response_a": "x", "response_b": "y", "metadata": {"a": {"model": "PPO"}}}])
    store.record(6, "b", annotator="human")
    with pytest.raises(ValueError, match=r"pair 6 has no metadata\['b'\]\['model'\]"):
        judgments_from_store(store, annotator="human")
    assert len(judgments_from_store(store, annotator="nobody")) == 0
    store.close()


def test_round_robin_under_gold_ranks_the_sandbox_answers_and_alternates_sides() -> None:
    rng = random.Random(0)
    from rlhf_widgets.sandbox import make_prompts

    prompts = [p.text for p in make_prompts(40, seed=5)]
    responses = {"ideal": [ideal_response(p) for p in prompts], "curt": [curt_demo(p, rng) for p in prompts],
                 "random": [random_response(p, rng) for p in prompts]}
    frame = judgments_from_responses(prompts, responses, gold_preference)
    assert len(frame) == 3 * 40 and frame.attrs["skips"] == 0
    with pytest.warns(UserWarning, match=r"won every game: \['ideal'\]"):  # gold: the ideal answer never loses
        table = leaderboard(frame, bootstrap=100, anchor="curt")
    assert list(table["model"]) == ["ideal", "curt", "random"] and table["rating"].iloc[0] == math.inf
    # a judge that always answers "a" rates everyone equal: each policy is shown first on half the prompts
    biased = fit_bradley_terry(judgments_from_responses(prompts, responses, lambda *_: "a"))
    assert biased.to_numpy() == pytest.approx([1000] * 3, abs=1e-6)
    # against a baseline only, and skips left out
    versus = judgments_from_responses(prompts, responses, lambda p, a, b: "skip" if p == prompts[0] else "tie",
                                      baseline="curt")
    assert set(map(frozenset, zip(versus["model_a"], versus["model_b"], strict=True))) == {
        frozenset({"ideal", "curt"}), frozenset({"random", "curt"})}
    assert len(versus) == 2 * 39 and versus.attrs["skips"] == 2
    with pytest.raises(ValueError, match=r"responses\['curt'\] has 1 responses for 40 prompts"):
        judgments_from_responses(prompts, {**responses, "curt": ["x"]}, gold_preference)


def test_figure_sorts_best_on_top_with_asymmetric_error_bars_and_escaped_names() -> None:
    games = record(30, 10, a="<b>x</b>", b="y") + record(6, 4, a="y", b="z")
    table = leaderboard(games, bootstrap=100, anchor="y")
    fig = leaderboard_figure(table)
    trace = fig.data[0]
    assert list(trace.y) == ["z", "y", "&lt;b&gt;x&lt;/b&gt;"]  # plotly's first category is the bottom one
    ordered = table.iloc[::-1]
    assert np.allclose(trace.error_x.array, ordered["upper"] - ordered["rating"])
    assert np.allclose(trace.error_x.arrayminus, ordered["rating"] - ordered["lower"])
    assert "95% bootstrap interval" in fig.layout.title.text and "y = 1000" in fig.layout.title.text
    with pytest.warns(UserWarning):
        undefeated = leaderboard_figure(leaderboard(record(5, 0, a="<i>x</i>", b="y") + record(6, 4, a="y", b="z"),
                                                    bootstrap=100, anchor="y"))
    assert list(undefeated.data[0].y) == ["z", "y"]
    assert undefeated.layout.annotations[0].text == "not drawn, rating unbounded: &lt;i&gt;x&lt;/i&gt; (inf)"



PLOTLY_ENTITIES = {"mu": "μ", "amp": "&", "lt": "<", "gt": ">", "nbsp": "\xa0", "times": "×", "plusmn": "±",
                   "deg": "°"}
"""The named entities plotly.js decodes in a label (`svg_text_utils.convertEntities`); any other stays literal."""


def plotly_shows(text: str) -> str:
    """What plotly.js draws for `text`: its entities decoded, an unknown one left as it is; no tag may remain."""
    assert not re.search(r"<[a-zA-Z/]", text.replace("<br>", "\n")), f"markup in a label: {text!r}"

    def decode(match: re.Match) -> str:
        code = match.group(1)
        if code.startswith("#"):
            return chr(int(code[2:], 16) if code[1] == "x" else int(code[1:]))
        return PLOTLY_ENTITIES.get(code, match.group(0))

    return re.sub(r"&(#\d+|#x[\da-fA-F]+|[a-z]+);", decode, text)


def test_figure_shows_a_quoted_name_as_it_is() -> None:
    """Names are escaped once, for plotly: `&quot;` is no entity plotly.js knows, so it would show literally."""
    name = 'PPO "β=0.1" <b>x</b> & co'
    with pytest.warns(UserWarning):
        fig = leaderboard_figure(leaderboard(record(30, 10, a=name, b="y") + record(6, 4, a="y", b="z")
                                             + record(3, 0, a="it's <i>", b="z"), bootstrap=20, anchor=name))
    assert [plotly_shows(label) for label in fig.data[0].y] == ["z", "y", name]
    assert plotly_shows(fig.data[0].hovertext[-1]).startswith(f"{name}: ")
    assert f"{name} = 1000" in plotly_shows(fig.layout.title.text)
    assert plotly_shows(fig.layout.annotations[0].text) == "not drawn, rating unbounded: it's <i> (inf)"
