"""Tables for people: numbers rounded to what they mean, every name escaped once, the raw numbers kept for code."""

import re
from html.parser import HTMLParser

import pandas as pd

from rlhf_widgets.views.tables import format_table
from rlhf_widgets.workflows.loop import RoundResult, rounds_table

NAME = 'PPO "β=0.1" <b>x</b> & co'
SIX_DECIMALS = re.compile(r"\d\.\d{6}")


class _Cells(HTMLParser):
    """The text a browser shows in each cell (entities decoded), and the tags it meets."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []
        self.tags: set[str] = set()
        self._open = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        if tag in ("td", "th"):
            self.cells.append("")
            self._open = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._open = False

    def handle_data(self, data: str) -> None:
        if self._open:
            self.cells[-1] += data


def _shown(html: str) -> _Cells:
    parser = _Cells()
    parser.feed(html)
    return parser


def _board() -> pd.DataFrame:
    """A leaderboard as `evaluation.leaderboard` returns it, and a policy comparison's columns."""
    return pd.DataFrame({"model": [NAME, "SFT"], "rating": [1190.848476, 809.151524], "lower": [1150.2, 760.0],
                         "upper": [1231.7, 850.5], "games": [40, 40], "win_rate": [0.489891, 0.333333],
                         "gold_mean": [0.489891, 1.0], "probe_words": [13.5, 9.0]})


def test_numbers_are_rounded_to_what_they_mean() -> None:
    board = _board()
    table = format_table(board)
    page = table._repr_html_()
    assert not SIX_DECIMALS.search(page) and not SIX_DECIMALS.search(repr(table))
    cells = _shown(page).cells
    width = len(board.columns) + 1  # the index, then the columns
    row = dict(zip(cells[:width], cells[width:2 * width], strict=True))
    assert row["rating"] == "1,191" and row["lower"] == "1,150" and row["upper"] == "1,232"  # integer Elo points
    assert row["win_rate"] == "49%" and row["games"] == "40"
    assert row["gold_mean"] == "0.49" and row["probe_words"] == "13.5"
    assert "49%" in repr(table) and "win_rate" in repr(table)  # the text form a headless run prints
    assert table.data is board and board.loc[0, "rating"] == 1190.848476, "the raw numbers stay for code"


def test_names_are_escaped_exactly_once() -> None:
    table = format_table(_board().set_index("model"))
    page = table._repr_html_()
    shown = _shown(page)
    assert NAME in shown.cells, "a browser shows the name as it is"
    assert "b" not in shown.tags, "no markup from a name"
    assert "&amp;lt;" not in page and "&amp;quot;" not in page and "&amp;amp;" not in page


def test_rounds_table_shows_rates_as_percent() -> None:
    rounds = [RoundResult(1, "p1", "r1", 245, 0, 245, {"loop/gold_win_rate_vs_sft": 0.7083333333333334,
                                                        "loop/kl_to_sft": 1.2819509506225586, "loop/words": 9.5,
                                                        "loop/human_labels": 0.0, "loop/ai_labels": 245.0}),
              RoundResult(2, "p2", "r2", 62, 0, 62, {"loop/gold_win_rate_vs_sft": 0.640625,
                                                     "loop/win_rate_vs_previous": 0.3333333333333333,
                                                     "loop/kl_to_sft": 1.3335503339767456, "loop/words": 15.03125,
                                                     "loop/human_labels": 0.0, "loop/ai_labels": 62.0})]
    table = rounds_table(rounds)
    page = table._repr_html_()
    assert not SIX_DECIMALS.search(page) and "0.333333" not in repr(table)
    cells = _shown(page).cells
    assert "71%" in cells and "33%" in cells and "1.28" in cells and "15" in cells and "245" in cells
    assert "loop/gold_win_rate_vs_sft" in repr(table)
    assert table.data.loc[2, "loop/win_rate_vs_previous"] == 0.3333333333333333
