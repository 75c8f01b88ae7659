"""Agreement statistics: Krippendorff's α on the literature's worked examples, ties on the preference scale,
each annotator against the others' majority and a reference, and flagging."""

from __future__ import annotations

import math

import pytest

from rlhf_widgets.labeling.agreement import (
    cohens_kappa,
    krippendorff_alpha,
    majority,
    preference_alpha,
    team_agreement,
)

# Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011), example C: 4 observers, 12 units, values 1-5,
# missing data; the paper gives α = 0.743 (nominal), 0.815 (ordinal), 0.849 (interval), 0.797 (ratio)
N = None
FOUR_OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]
# example A: binary data, two observers, no missing data; α = 0.095
TWO_OBSERVERS_BINARY = [
    [0, 1, 0, 0, 0, 0, 0, 0, 1, 0],
    [1, 1, 1, 0, 0, 1, 0, 0, 0, 0],
]


@pytest.mark.parametrize(("level", "expected"), [
    ("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797),
])
def test_krippendorff_alpha_reproduces_the_papers_example_with_missing_data(level: str, expected: float) -> None:
    assert krippendorff_alpha(FOUR_OBSERVERS, level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_reproduces_the_papers_binary_example() -> None:
    assert krippendorff_alpha(TWO_OBSERVERS_BINARY, "nominal") == pytest.approx(0.095, abs=5e-4)


def test_krippendorff_alpha_is_nan_where_it_is_undefined() -> None:
    assert math.isnan(krippendorff_alpha([[1, N], [N, 2]]))  # no unit coded twice
    assert math.isnan(krippendorff_alpha([[1, 1, 1], [1, 1, 1]]))  # no disagreement to expect
    assert math.isnan(krippendorff_alpha([]))


def test_preference_alpha_puts_a_tie_half_way_between_a_and_b() -> None:
    # two annotators, pairs 1-3: (a, a), (b, b), (a, tie); values n_a = 3, n_tie = 1, n_b = 2, n = 6.
    # Coincidences: a-a 2, b-b 2, a-tie 1 + tie-a 1.
    # Ordinal distances (Krippendorff): δ²(a,tie) = (3 + 1 - 4/2)² = 4, δ²(a,b) = (6 - 5/2)² = 12.25,
    # δ²(tie,b) = (3 - 3/2)² = 2.25. D_o = 2·4/6; D_e = 2·(3·1·4 + 3·2·12.25 + 1·2·2.25)/(6·5) = 6;
    # α = 1 - (8/6)/6 = 7/9. Nominal: D_o = 2/6, D_e = 2·(3 + 6 + 2)/30 = 22/30, α = 1 - (1/3)/(22/30) = 6/11.
    votes = {"x": {1: "a", 2: "b", 3: "a"}, "y": {1: "a", 2: "b", 3: "tie"}}
    assert preference_alpha(votes, "ordinal") == pytest.approx(7 / 9)
    assert preference_alpha(votes, "nominal") == pytest.approx(6 / 11)
    with_skips = {"x": {**votes["x"], 4: "skip"}, "y": {**votes["y"], 4: "a", 5: "skip"}, "z": {6: "skip"}}
    assert preference_alpha(with_skips, "ordinal") == pytest.approx(7 / 9)  # a skip is no vote
    with pytest.raises(ValueError, match="'interval'"):
        preference_alpha(votes, "interval")


def test_majority_is_strict_and_skips_abstain() -> None:
    assert majority(["a", "a", "b"]) == "a" and majority(["tie", "skip", "skip"]) == "tie"
    assert majority(["a", "b"]) is None and majority(["skip"]) is None and majority([]) is None


def test_cohens_kappa_hand_computed() -> None:
    # observed 7/10; P(a) = .6 and .5 → chance .5 → κ = 0.4
    result = cohens_kappa(list("aaaaaabbbb"), list("aaaabbbbba"))
    assert result["agreement"] == pytest.approx(0.7) and result["kappa"] == pytest.approx(0.4)
    assert math.isnan(cohens_kappa([], [])["kappa"]) and math.isnan(cohens_kappa(["a"], ["a"])["kappa"])


def team(n_pairs: int) -> dict[str, dict[int, str]]:
    """Three annotators who agree on every pair, one who always votes the other side, one who skips half."""
    truth = {p: "ab"[p % 2] for p in range(n_pairs)}
    flip = {"a": "b", "b": "a"}
    return {
        "ann": dict(truth), "bob": dict(truth), "cy": {**truth, 0: "tie"},
        "contrarian": {p: flip[c] for p, c in truth.items()},
        "skipper": {p: (c if p % 2 else "skip") for p, c in truth.items()},
    }


def test_team_agreement_compares_each_annotator_with_the_others_and_flags_the_outlier() -> None:
    votes = team(20)
    gold = {p: "ab"[p % 2] for p in range(20)}
    result = team_agreement(votes, gold)
    rows = result.annotators.set_index("annotator")
    assert rows.loc["contrarian", "with_majority"] == 0.0 and rows.loc["contrarian", "flagged"]
    assert rows.loc["ann", "with_majority"] == 1.0 and not rows.loc["ann", "flagged"]
    # cy's tie on pair 0 is not the others' majority (a on pair 0)
    assert rows.loc["cy", "with_majority"] == pytest.approx(19 / 20) and rows.loc["cy", "n_majority"] == 20
    assert rows.loc["skipper", "votes"] == 10 and rows.loc["skipper", "n_majority"] == 10
    assert list(rows.with_reference) == pytest.approx([1.0, 1.0, 19 / 20, 0.0, 1.0])
    assert list(rows.n_reference) == [20, 20, 20, 20, 10]
    assert list(rows.index[rows.flagged]) == ["contrarian"] and result.median_with_majority == 1.0
    agreeing = team_agreement({name: v for name, v in votes.items() if name != "contrarian"})
    assert agreeing.alpha > 0.9 and result.alpha < agreeing.alpha - 0.5  # one contrarian drags α down
    assert agreeing.alpha_nominal < agreeing.alpha  # cy's tie is a near miss on the ordinal scale only


def test_team_agreement_judges_only_annotators_with_enough_pairs() -> None:
    result = team_agreement(team(6), min_pairs=10)
    assert not result.annotators.flagged.any() and math.isnan(result.median_with_majority)
    assert team_agreement(team(6)).annotators.with_reference.isna().all()  # no reference given


def test_two_annotators_are_each_others_majority() -> None:
    result = team_agreement({"x": {1: "a", 2: "b", 3: "a"}, "y": {1: "a", 2: "a", 3: "a"}}, min_pairs=1)
    assert list(result.annotators.with_majority) == pytest.approx([2 / 3, 2 / 3])
    assert not result.annotators.flagged.any()  # symmetric: nobody is below the team
