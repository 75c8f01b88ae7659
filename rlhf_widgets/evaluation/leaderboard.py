"""Arena leaderboard: Bradley–Terry ratings on the Elo scale, with bootstrap confidence intervals.

Judgments are rows (model_a, model_b, winner) with winner "a", "b" or "tie" — from any judge: humans in
the blind comparison, the sandbox's gold, a reward model, a `PairwiseJudge`. The model:

    P(i beats j) = 1 / (1 + 10^((R_j − R_i) / 400))

Bradley–Terry with strengths θ = R · ln 10 / 400, so 400 rating points are a factor of 10 in odds (a
200-point gap: the stronger model wins 76% of its games). Ratings are fitted by maximum likelihood
(Newton's method with step halving, in numpy, all bootstrap resamples at once; scipy is not a
dependency). A tie counts as half a win for each side, as Chatbot Arena counts them (its fit weighs
each win twice and each tie once for each side). A model that won every game has no finite
maximum-likelihood rating: it is reported as inf, with a warning, unless a prior of `virtual_ties`
(BayesElo's device) is given.

Ratings are anchored: the `anchor` model (e.g. "SFT") is at `base` (default 1000), or, without an
anchor, the mean rating is. Intervals are percentile bootstrap intervals: the judgments are resampled
with replacement and refitted `bootstrap` times (seeded), and each model's interval is the central
`confidence` share of its refitted ratings. They reflect the sampling noise of the judgments, not a
judge's own bias.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rlhf_widgets.evaluation.judges import Labeler, verdicts
from rlhf_widgets.views.style import PLOT_TEMPLATE, plot_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from rlhf_widgets.labeling.store import PreferenceStore

ELO_SCALE = 400 / math.log(10)
"""Rating points per unit of Bradley–Terry strength θ (natural log of the odds)."""
RIDGE = 1e-6
"""Ridge penalty on θ that keeps Newton's steps finite where a rating's MLE is infinite (those ratings are
reported as ±inf). Its pull on finite ratings is negligible: 0.0003 points on the gap of a 2.5 : 0.5 record."""
WINNERS = ("a", "b", "tie")
COLUMNS = ("model_a", "model_b", "winner")


# ---------------------------------------------------------------------------------------------- judgments in
def judgments_frame(judgments: pd.DataFrame | Iterable[Mapping[str, Any] | Sequence[Any]]) -> pd.DataFrame:
    """Judgments as a DataFrame with columns `model_a`, `model_b`, `winner` (other columns kept).

    Accepts a DataFrame with those columns, or rows: mappings with those keys, or (model_a, model_b,
    winner) tuples. ValueError naming the row when a name is empty, both sides are the same model, or
    the winner is not "a", "b" or "tie".
    """
    if isinstance(judgments, pd.DataFrame):
        frame = judgments.reset_index(drop=True)
    else:
        rows = [dict(row) if isinstance(row, Mapping) else _tuple_row(i, row) for i, row in enumerate(judgments)]
        frame = pd.DataFrame(rows)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if len(frame) and missing:
        raise ValueError(f"judgments need the columns {list(COLUMNS)}; missing {missing}")
    if not len(frame):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    for i, (model_a, model_b, winner) in enumerate(zip(frame["model_a"], frame["model_b"], frame["winner"],
                                                       strict=True)):
        for field, name in (("model_a", model_a), ("model_b", model_b)):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"judgment {i}: {field} must be a non-empty model name, got {name!r}")
        if model_a == model_b:
            raise ValueError(f"judgment {i}: both sides are {model_a!r}; a model against itself says nothing "
                             "about ratings — leave such rows out")
        if winner not in WINNERS:
            raise ValueError(f"judgment {i}: winner must be one of {WINNERS}, got {winner!r} (drop skips and "
                             "conflicts before rating)")
    return frame


def _tuple_row(index: int, row: Sequence[Any]) -> dict[str, Any]:
    if isinstance(row, str) or len(row) != 3:
        raise ValueError(f"judgment {index}: expected (model_a, model_b, winner) or a mapping, got {row!r}")
    return dict(zip(COLUMNS, row, strict=True))


def judgments_from_store(store: PreferenceStore, annotator: str | None = None, reference: str | None = None,
                         key: str = "model") -> pd.DataFrame:
    """Judgments from the labels in a `PreferenceStore` whose pairs name the model of each side.

    The model names come from `pair.metadata["a"][key]` and `pair.metadata["b"][key]` (default key
    "model", as `evaluation.evaluation_store` and `labeling.pairs.generate_pairs` write them; "source" for
    `judges.record_revisions`' revised-vs-original pairs). Decisions are `store.decisions(annotator,
    reference)`: one annotator's labels, or all pooled (the reference annotator decides where it
    labeled). Skips and conflicts are left out, and so are pairs whose two sides come from the same model;
    `frame.attrs` counts both. A decided pair without model names raises ValueError naming it.

    Columns: `model_a`, `model_b`, `winner`, `pair_id`.
    """
    decided = store.decisions(annotator, reference)
    rows, undecided, same_model = [], 0, 0
    for pair in store.pairs():
        winner = decided.get(pair.id)
        if winner is None:
            continue
        if winner not in WINNERS:
            undecided += 1
            continue
        names = []
        for side in ("a", "b"):
            side_metadata = pair.metadata.get(side)
            name = side_metadata.get(key) if isinstance(side_metadata, Mapping) else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"pair {pair.id} has no metadata[{side!r}][{key!r}] naming the model of its side "
                                 f"{side}; pairs made by evaluation_store or generate_pairs carry it (metadata: "
                                 f"{pair.metadata!r})")
            names.append(name)
        if names[0] == names[1]:
            same_model += 1
            continue
        rows.append({"model_a": names[0], "model_b": names[1], "winner": winner, "pair_id": pair.id})
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "pair_id"])
    frame.attrs.update(skipped_or_conflicting=undecided, same_model_pairs=same_model)
    return frame


def judgments_from_responses(prompts: Sequence, responses: Mapping[str, Sequence[str]], judge: Labeler, *,
                             baseline: str | None = None) -> pd.DataFrame:
    """Judgments of every policy's responses to the same prompts, under `judge`.

    `responses` maps policy name → one response per prompt, e.g. `compare_policies(...).attrs["responses"]`.
    Every two policies meet on every prompt (round robin), or, with `baseline`, each policy meets only the
    baseline. `judge` is any labeler: `gold_preference`, a `RewardModelJudge`, a `PairwiseJudge` (judged in
    batches), a `SimulatedAnnotator`. Which policy is shown as a alternates from prompt to prompt, so a
    judge's position bias does not favour one policy. Skips are left out and counted in `attrs["skips"]`.

    Columns: `model_a`, `model_b`, `winner`, `prompt_index`.
    """
    prompts = list(prompts)
    names = list(responses)
    for name, answers in responses.items():
        if len(answers) != len(prompts):
            raise ValueError(f"responses[{name!r}] has {len(answers)} responses for {len(prompts)} prompts")
    if baseline is not None and baseline not in responses:
        raise ValueError(f"baseline {baseline!r} is not one of the policies {names}")
    if len(names) < 2:
        raise ValueError(f"a leaderboard needs at least two policies, got {names}")
    if baseline is None:
        couples = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]
    else:
        couples = [(x, baseline) for x in names if x != baseline]
    matches = []  # (prompt index, policy shown as a, policy shown as b)
    for p in range(len(prompts)):
        for x, y in couples:
            matches.append((p, x, y) if p % 2 == 0 else (p, y, x))
    decided = verdicts(judge, [prompts[p] for p, _, _ in matches], [responses[x][p] for p, x, _ in matches],
                       [responses[y][p] for p, _, y in matches])
    rows = [{"model_a": x, "model_b": y, "winner": winner, "prompt_index": p}
            for (p, x, y), winner in zip(matches, decided, strict=True) if winner != "skip"]
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "prompt_index"])
    frame.attrs["skips"] = len(matches) - len(rows)
    return frame


# ---------------------------------------------------------------------------------------------- fitting
class _Data:
    """Judgments reduced to cells: each distinct (model i, model j, score of i) with its count."""

    def __init__(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            raise ValueError("no judgments to rate (every pair skipped, or only one model?)")
        self.models: list[str] = list(dict.fromkeys([*frame["model_a"], *frame["model_b"]]))
        index = {name: k for k, name in enumerate(self.models)}
        i = frame["model_a"].map(index).to_numpy()
        j = frame["model_b"].map(index).to_numpy()
        score = frame["winner"].map({"a": 1.0, "b": 0.0, "tie": 0.5}).to_numpy()
        cells, self.counts = np.unique(np.stack([i, j, score * 2]).T, axis=0, return_counts=True)
        self.i, self.j = cells[:, 0].astype(int), cells[:, 1].astype(int)
        self.score = cells[:, 2] / 2
        self.n = len(frame)

    def wins(self, counts: np.ndarray) -> np.ndarray:
        """Win matrices (..., k, k) for cell counts (..., cells): W[i, j] = wins of i over j, ties ½ each."""
        k = len(self.models)
        wins = np.zeros((*counts.shape[:-1], k * k))
        np.add.at(wins.T, self.i * k + self.j, (counts * self.score).T)
        np.add.at(wins.T, self.j * k + self.i, (counts * (1 - self.score)).T)
        return wins.reshape(*counts.shape[:-1], k, k)


def _objective(theta: np.ndarray, wins: np.ndarray) -> np.ndarray:
    """Penalised log-likelihood Σ W_ij log σ(θ_i − θ_j) − RIDGE/2 · |θ|², per batch row."""
    gap = theta[..., :, None] - theta[..., None, :]
    return -(wins * np.logaddexp(0.0, -gap)).sum((-2, -1)) - RIDGE / 2 * (theta ** 2).sum(-1)


def _fit(wins: np.ndarray, tol: float = 1e-7, max_iter: int = 200) -> np.ndarray:
    """Bradley–Terry strengths θ (natural-log odds, mean 0) maximising `_objective`, for a batch of win
    matrices (B, k, k) at once; Newton steps, each halved until the objective does not fall, until no θ moves
    by `tol` (1e-7 θ = 4e-5 rating points; a ridge-held infinite direction is flat below ~1e-10)."""
    batch, k, _ = wins.shape
    games = wins + np.swapaxes(wins, -1, -2)
    theta = np.zeros((batch, k))
    gauge = np.ones((k, k)) / k  # θ and every step keep mean 0, so adding 11ᵀ/k makes the system regular
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(theta[:, :, None] - theta[:, None, :])))  # (B, k, k): P(i beats j)
        grad = (wins - games * p).sum(-1) - RIDGE * theta
        weight = games * p * (1 - p)
        neg_hessian = np.eye(k) * (weight.sum(-1) + RIDGE)[:, :, None] - weight + gauge
        step = np.linalg.solve(neg_hessian, grad[..., None])[..., 0]
        size = np.ones(batch)
        current = _objective(theta, wins)
        for _ in range(40):
            worse = _objective(theta + size[:, None] * step, wins) < current - 1e-12 * np.abs(current)
            if not worse.any():
                break
            size = np.where(worse, size / 2, size)
        theta = theta + size[:, None] * step
        if np.abs(size[:, None] * step).max() < tol:
            return theta
    raise RuntimeError(f"Bradley–Terry fit did not converge in {max_iter} Newton steps")


def _reachable(adjacency: np.ndarray) -> np.ndarray:
    """Transitive closure (with self-loops) of boolean adjacency matrices (..., k, k)."""
    k = adjacency.shape[-1]
    reach = adjacency | np.eye(k, dtype=bool)
    for _ in range(max(1, math.ceil(math.log2(k)))):
        reach = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
    return reach


def _mle_ratings(wins: np.ndarray, models: list[str], anchor: str | None, base: float) -> np.ndarray:
    """Maximum-likelihood ratings (B, k) of win matrices (B, k, k): +inf / −inf where the likelihood keeps
    rising as the rating grows / falls without bound, NaN where both.

    With `beat[x, y]` = x beat y, directly or through a chain of wins, a rating is bounded above iff every
    model it is measured against (the anchor, or for the mean every model) beat it that way, and bounded
    below iff it beat every such model that way (Ford 1957: the MLE exists iff every model beat every
    other through some chain). Elsewhere the fit's tiny ridge only keeps Newton finite.
    """
    ratings = _ratings(_fit(wins), models, anchor, base)
    beat = _reachable(wins > 0)
    if anchor is None:
        up, down = ~beat.all(-2), ~beat.all(-1)
    else:
        a = models.index(anchor)
        up, down = ~beat[:, a, :], ~beat[:, :, a]
    return np.where(up & down, np.nan, np.where(up, np.inf, np.where(down, -np.inf, ratings)))


def _ratings(theta: np.ndarray, models: list[str], anchor: str | None, base: float) -> np.ndarray:
    """Elo-scale ratings of strengths (..., k): the anchor model, or the mean, at `base`."""
    if anchor is None:
        zero = theta.mean(-1, keepdims=True)
    else:
        zero = theta[..., models.index(anchor)][..., None]
    return base + ELO_SCALE * (theta - zero)


def _prepared(judgments: pd.DataFrame | Iterable, anchor: str | None, virtual_ties: float
              ) -> tuple[_Data, np.ndarray, np.ndarray]:
    """The judgments' cells, their win matrix, and the prior's (virtual ties) win matrix; ValueError when
    a setting is wrong or some models were never compared, a warning when the MLE is infinite."""
    if virtual_ties < 0:
        raise ValueError(f"virtual_ties={virtual_ties} must be >= 0")
    data = _Data(judgments_frame(judgments))
    if anchor is not None and anchor not in data.models:
        raise ValueError(f"anchor {anchor!r} is not among the rated models {data.models}")
    wins = data.wins(data.counts.astype(float))
    met = wins + wins.T > 0
    linked = _reachable(met)[0]
    if not linked.all():
        apart = [m for m, is_linked in zip(data.models, linked, strict=True) if not is_linked]
        raise ValueError(f"the models {apart} were never compared with {data.models[0]!r}, directly or through "
                         "other models, so their ratings cannot be put on one scale; add judgments between them")
    prior = virtual_ties / 2 * met
    if not virtual_ties and not _reachable(wins > 0).all():
        all_wins = [m for m, beaten_by in zip(data.models, wins.T, strict=True) if beaten_by.sum() == 0]
        all_losses = [m for m, beat in zip(data.models, wins, strict=True) if beat.sum() == 0]
        details = [f"won every game: {all_wins}"] * bool(all_wins) + [f"lost every game: {all_losses}"] * bool(
            all_losses)
        warnings.warn(
            "Bradley–Terry: some maximum-likelihood ratings are infinite ("
            f"{'; '.join(details) or 'a group of models beat every model outside it'}) and are reported as inf / "
            "-inf (NaN if unbounded both ways); anchor on another model, pass virtual_ties=1 for finite ratings "
            "shrunk towards each other, or collect more judgments", stacklevel=3)
    return data, wins, prior


def fit_bradley_terry(judgments: pd.DataFrame | Iterable, *, anchor: str | None = None, base: float = 1000.0,
                      virtual_ties: float = 0.0) -> pd.Series:
    """Maximum-likelihood Bradley–Terry ratings on the Elo scale, one per model (a Series, best first).

    Args:
        judgments: rows (model_a, model_b, winner ∈ {"a", "b", "tie"}); see `judgments_frame`.
        anchor: the model rated `base` (default None: the mean rating is `base`).
        base: the anchor's rating, Elo points (default 1000).
        virtual_ties: a prior, as in BayesElo: this many tied games added between every two models that
            met (default 0: plain maximum likelihood). Any positive value makes every rating finite; each
            virtual tie pulls the two ratings towards each other as one more real tie would.

    A model that won (or lost) every game has no finite maximum-likelihood rating: it is reported as inf
    (−inf), with a warning; see `_mle_ratings` for the exact rule.
    """
    data, wins, prior = _prepared(judgments, anchor, virtual_ties)
    ratings = _mle_ratings((wins + prior)[None], data.models, anchor, base)[0]
    return pd.Series(ratings, index=pd.Index(data.models, name="model"), name="rating").sort_values(ascending=False)


def leaderboard(judgments: pd.DataFrame | Iterable, *, anchor: str | None = None, base: float = 1000.0,
                bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
                virtual_ties: float = 0.0) -> pd.DataFrame:
    """The arena table: Bradley–Terry rating with a bootstrap interval, games and win rate per model.

    Args:
        judgments: rows (model_a, model_b, winner ∈ {"a", "b", "tie"}); see `judgments_frame`.
        anchor, base, virtual_ties: as in `fit_bradley_terry` (default: mean rating 1000, no prior).
        bootstrap: resamples of the judgments (default 1000; 0: no interval, lower/upper NaN).
        confidence: central share of the refitted ratings the interval spans (default 0.95).
        seed: seeds the resampling (default 0).

    Columns: `model`, `rating`, `lower`, `upper` (Elo points), `games` (real judgments it took part in),
    `win_rate` (ties ½), best rating first. A resample in which a rating's MLE is infinite counts as ±inf,
    so a bound is ±inf when more than (1 − confidence)/2 of the resamples are. A resample that lost a model
    or split the models into groups never compared is dropped (`attrs["bootstrap_dropped"]` counts them).
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap} must be >= 0")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    data, wins, prior = _prepared(judgments, anchor, virtual_ties)
    k = len(data.models)
    rating = _mle_ratings((wins + prior)[None], data.models, anchor, base)[0]
    lower = upper = np.full(k, np.nan)
    dropped = 0
    if bootstrap:
        # resampling n judgments with replacement = multinomial counts over the distinct cells
        rng = np.random.default_rng(seed)
        resampled = data.wins(rng.multinomial(data.n, data.counts / data.n, size=bootstrap).astype(float))
        usable = _reachable(resampled + np.swapaxes(resampled, -1, -2) > 0).all((-2, -1))
        dropped = int((~usable).sum())
        if usable.any():
            refit = _mle_ratings(resampled[usable] + prior, data.models, anchor, base)
            # no interpolation: a quantile between a finite rating and inf would be NaN
            lower = np.nanquantile(refit, (1 - confidence) / 2, axis=0, method="inverted_cdf")
            upper = np.nanquantile(refit, (1 + confidence) / 2, axis=0, method="inverted_cdf")
    games = wins + wins.T
    table = pd.DataFrame({
        "model": data.models, "rating": rating, "lower": lower, "upper": upper,
        "games": games.sum(1).astype(int), "win_rate": wins.sum(1) / games.sum(1),
    }).sort_values("rating", ascending=False, ignore_index=True)
    table.attrs.update(anchor=anchor, base=base, bootstrap=bootstrap, bootstrap_dropped=dropped,
                       confidence=confidence, seed=seed, judgments=data.n, virtual_ties=virtual_ties)
    return table


# ---------------------------------------------------------------------------------------------- figure
def leaderboard_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Ratings as points with their interval as error bars, best at the top (a plotly Figure).

    `table` is what `leaderboard` returns. A model whose rating is infinite (it won or lost every game) is
    not drawn but named in a note under the plot; an infinite bound draws no bar on that side and reads
    "unbounded" in the hover text. Model names are escaped once for plotly (`views.plot_text`: it renders tags in
    labels).
    """
    import plotly.graph_objects as go

    ordered = table.sort_values("rating", ascending=True)  # plotly draws the first category at the bottom
    drawn = ordered[np.isfinite(ordered["rating"])]
    names = [plot_text(m) for m in drawn["model"]]
    above = (drawn["upper"] - drawn["rating"]).where(np.isfinite(drawn["upper"]))
    below = (drawn["rating"] - drawn["lower"]).where(np.isfinite(drawn["lower"]))
    hover = [f"{name}: {rating:.0f} [{_bound(low)}, {_bound(high)}]<br>{games} games, win rate {rate:.1%}"
             for name, rating, low, high, games, rate in zip(names, drawn["rating"], drawn["lower"], drawn["upper"],
                                                               drawn["games"], drawn["win_rate"], strict=True)]
    fig = go.Figure(go.Scatter(
        x=drawn["rating"], y=names, mode="markers", marker={"size": 10}, hovertext=hover, hoverinfo="text",
        error_x={"type": "data", "symmetric": False, "array": above, "arrayminus": below},
    ))
    attrs = table.attrs
    level = f"{attrs['confidence']:.0%} bootstrap interval" if attrs.get("bootstrap") else "no interval"
    zero = plot_text(attrs["anchor"]) if attrs.get("anchor") else "mean"
    fig.update_layout(
        title=title or f"Arena leaderboard: Bradley–Terry ratings ({level}; {zero} = {attrs.get('base', 1000):g})",
        xaxis_title="rating (Elo scale: +400 = 10× the odds)", yaxis_title=None,
        height=max(260, 60 + 40 * len(drawn)), template=PLOT_TEMPLATE,
    )
    unbounded = ordered[~np.isfinite(ordered["rating"])]
    if len(unbounded):
        note = ", ".join(f"{plot_text(m)} ({r})" for m, r in zip(unbounded["model"], unbounded["rating"],
                                                                        strict=True))
        fig.add_annotation(text=f"not drawn, rating unbounded: {note}", xref="paper", yref="paper", x=0, y=-0.25,
                           showarrow=False, xanchor="left")
    return fig


def _bound(value: float) -> str:
    return f"{value:.0f}" if np.isfinite(value) else "unbounded"
