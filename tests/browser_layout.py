"""Where plotly drew things, read from the page's DOM: the browser tests' layout checks.

`legend_overlaps(page)` lists every legend (its `rect.bg` in the figure's info layer) that covers a title — a
subplot title (an annotation placed on the paper, as `make_subplots` writes them) or the figure's own title — or
another legend of the same figure. Boxes are `getBoundingClientRect()`s, in CSS pixels; an overlap of `TOLERANCE_PX`
or less on either axis does not count. `figure_traces(page, selector)` reads what a figure draws, so a test can wait
until a live figure shows everything its log holds before it looks.
"""

from __future__ import annotations

import time
from typing import Any

TOLERANCE_PX = 1.0

# Per plotly figure on the page (`.js-plotly-plot`, drawn at a non-zero size): its legends (class "legend",
# "legend2", …: name, entries, box) and its titles (text, box). A subplot title is an annotation whose x and y are
# both on the paper (`_fullLayout.annotations[data-index]`); event markers and labels sit on an axis.
LEGENDS_AND_TITLES = """() => {
  const box = (el) => { const r = el.getBoundingClientRect();
                        return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; };
  const drawn = (b) => b.x1 - b.x0 > 0 && b.y1 - b.y0 > 0;
  return [...document.querySelectorAll('.js-plotly-plot')].map((gd) => {
    const notes = (gd._fullLayout && gd._fullLayout.annotations) || [];
    const legends = [...gd.querySelectorAll('g.infolayer > g')]
      .filter((g) => /^legend\\d*$/.test(g.getAttribute('class') || ''))
      .map((g) => ({name: g.getAttribute('class'),
                    items: [...g.querySelectorAll('g.traces > text')].map((t) => t.textContent),
                    box: box(g.querySelector('rect.bg') || g)}))
      .filter((legend) => drawn(legend.box));
    const titles = [...gd.querySelectorAll('g.annotation')]
      .filter((g) => { const note = notes[Number(g.getAttribute('data-index'))];
                       return Boolean(note) && note.xref === 'paper' && note.yref === 'paper'; })
      .map((g) => ({text: g.textContent, box: box(g)}));
    const main = gd.querySelector('g.g-gtitle text.gtitle');
    if (main && main.textContent) titles.push({text: main.textContent, box: box(main)});
    const figure = (main && main.textContent) || (gd.closest('.rlhfw-dashboard') ? 'dashboard' : 'figure');
    return {figure, size: box(gd), legends, titles: titles.filter((title) => drawn(title.box))};
  }).filter((fig) => drawn(fig.size));
}"""

# (name, points) per trace, from the traces as plotly.js read them (`_fullData`: arrays decoded)
TRACES = """(selector) => [...document.querySelectorAll(selector)].map((gd) =>
  (gd._fullData || []).map((trace) => [trace.name === undefined ? null : String(trace.name),
                                       trace.x ? trace.x.length : 0]))"""


def legends_and_titles(page) -> list[dict[str, Any]]:
    """Per drawn plotly figure on `page`: {figure, size, legends: [{name, items, box}], titles: [{text, box}]}."""
    return page.evaluate(LEGENDS_AND_TITLES)


def _overlap(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """(width, height) in px of the intersection of boxes `a` and `b` (0 where they do not meet)."""
    return (max(0.0, min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])),
            max(0.0, min(a["y1"], b["y1"]) - max(a["y0"], b["y0"])))


def overlaps(figures: list[dict[str, Any]], tolerance: float = TOLERANCE_PX) -> list[str]:
    """Each legend box that covers a title or another legend of its figure by more than `tolerance` px both ways,
    in words: the figure, the legend's entries, what it covers and by how much."""
    found = []
    for index, fig in enumerate(figures):
        where = f"figure {index + 1} ({fig['figure']!r})"
        legends = fig["legends"]
        for i, legend in enumerate(legends):
            own = f"{legend['name']} {legend['items']}"
            for title in fig["titles"]:
                w, h = _overlap(legend["box"], title["box"])
                if w > tolerance and h > tolerance:
                    found.append(f"{where}: {own} covers the title {title['text']!r} ({w:.0f} × {h:.0f} px)")
            for other in legends[i + 1:]:
                w, h = _overlap(legend["box"], other["box"])
                if w > tolerance and h > tolerance:
                    found.append(f"{where}: {own} covers {other['name']} {other['items']} ({w:.0f} × {h:.0f} px)")
    return found


def legend_overlaps(page, tolerance: float = TOLERANCE_PX) -> list[str]:
    """Every legend on `page` that covers a title or another legend of its figure, in words (empty: none does)."""
    return overlaps(legends_and_titles(page), tolerance)


def figure_traces(page, selector: str = ".js-plotly-plot") -> list[list[tuple[str | None, int]]]:
    """Per figure matching `selector`: (name, number of points) of each trace it draws."""
    return [[(name, n) for name, n in fig] for fig in page.evaluate(TRACES, selector)]


def wait_for_traces(page, selector: str, expected: list[tuple[str | None, int]], timeout_s: float = 60) -> None:
    """Wait until the first figure matching `selector` draws exactly `expected` ((name, points) per trace, in
    order): a live figure has caught up with its log."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = figure_traces(page, selector)
        if shown and shown[0] == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} draws {shown[0] if shown else 'nothing'}; its log holds {expected}")
        time.sleep(0.25)


def expected_traces(figure) -> list[tuple[str | None, int]]:
    """(name, number of points) of each trace of a plotly `figure`, as `figure_traces` reads them in the page."""
    return [(None if trace.name is None else str(trace.name), 0 if trace.x is None else len(trace.x))
            for trace in figure.data]
