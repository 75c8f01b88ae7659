"""Tables for people: a DataFrame shown with its numbers rounded to what they mean and its text escaped once.

`format_table(frame)` wraps a DataFrame in a `FormattedTable`, which a notebook shows as an HTML table (a terminal
as text) while `.data` keeps the frame, every digit of it, for code. What a column holds is read from its name
(`column_kind`): rates and shares as percent ("49%"), counts as whole numbers ("1,234"), ratings (Elo points) as
whole numbers, an interval's bounds (`low` / `high`, `lower` / `upper`) like the value they bound, anything else
to 3 significant digits ("0.49", "13.5", "1,191" from 100 up).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

PERCENT = ("*rate", "*rate_*", "*_rate*", "*accurac*", "*agreement*", "*share*", "non_empty", "frac_*", "*clipfrac*")
"""Column names (`fnmatch` patterns) of rates and shares, shown as percent."""
COUNT = ("n", "games", "pairs", "count", "round", "update", "*_labels", "*_pairs", "*_count", "*num_*")
"""Column names of counts, shown as whole numbers."""
RATING = ("rating", "*elo*")
"""Column names of ratings on the Elo scale, shown as whole numbers."""
BOUNDS = {"low": ("rate", "mean"), "high": ("rate", "mean"), "lower": ("rating", "rate"), "upper": ("rating", "rate")}
"""An interval's bound → the columns it may bound, first found wins: it is shown like that column."""


def column_kind(name: Any, frame: pd.DataFrame | None = None) -> str:
    """What column `name` holds, by its name: "percent", "count", "rating" or "number" (a bound of an interval
    takes the kind of the column it bounds in `frame`)."""
    text = str(name).lower()
    if frame is not None and text in BOUNDS:
        for bounded in BOUNDS[text]:
            if bounded in frame.columns:
                return column_kind(bounded, frame)
    for kind, patterns in (("percent", PERCENT), ("count", COUNT), ("rating", RATING)):
        if any(fnmatch.fnmatchcase(text, p) for p in patterns):
            return kind
    return "number"


def format_number(value: Any, kind: str = "number") -> str:
    """A number as a person reads it: `kind` "percent" ("49%", "0.83%" under 10%), "count" or "rating" (whole,
    "1,191"), "words" ("23.4"), else 3 significant digits ("0.152", "13.5"; from 100 up whole: "1,191"). NaN and
    missing values as "–"; anything not a number as `str`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if kind == "percent":
        return f"{value * 100:.2g}%" if 0 < abs(value) < 0.1 else f"{value:.0%}"
    if kind in ("count", "rating") or isinstance(value, int):
        return f"{value:,.0f}"
    if kind == "words":
        return f"{value:.1f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass(frozen=True)
class FormattedTable:
    """A DataFrame as a person reads it (see the module docstring); display it by ending a cell with it.

    `data`: the DataFrame, unchanged. `kinds`: a column's kind where its name does not say it (column → "percent",
    "count", "rating", "words" or "number").
    """

    data: pd.DataFrame
    kinds: Mapping[Any, str] = field(default_factory=dict)

    def text(self) -> pd.DataFrame:
        """The table's cells as the strings shown (numbers formatted, text as it is)."""
        shown = self.data.copy().astype(object)
        for column in self.data.columns:
            kind = self.kinds.get(column) or column_kind(column, self.data)
            shown[column] = [format_number(_plain(v), kind) for v in self.data[column]]
        return shown

    def _repr_html_(self) -> str:
        # pandas escapes &, < and > of every cell, header and index label once; a browser shows the text as it is
        return self.text().to_html(escape=True, na_rep="–", classes="rlhfw-table")

    def __repr__(self) -> str:
        return self.text().to_string()


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (so an int64 count is an int)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


def format_table(frame: pd.DataFrame, kinds: Mapping[Any, str] | None = None) -> FormattedTable:
    """`frame` to show to a person: numbers rounded to what they mean, text escaped once (see `FormattedTable`);
    `kinds` (column → kind) where a column's name does not say what it holds. `.data` is `frame` itself."""
    return FormattedTable(frame, dict(kinds or {}))
