"""Notebook 08's round-over-round dashboard in a real JupyterLab + headless Chromium, after the rounds ran.

Runs notebook 08 (the iterative loop) on its offline sandbox at the sizes tests/test_notebook_iterative.py runs it
(`SMALL`: two rounds of 6 prompts, one PPO update each, the run cell waiting for the rounds), the sandbox base model
as the SFT policy. Once the rounds table shows both rounds and the dashboard draws every point of the loop's log, no
legend may cover a subplot title or another legend (`browser_layout`: boxes from the DOM). Writes
`test-artifacts/loop_dashboard.png` (the dashboard then).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from browser_layout import expected_traces, legends_and_titles, overlaps, wait_for_traces
from test_browser_labeling import (
    ARTIFACTS,
    BROWSER_MARKS,
    CHROMIUM,
    CHROMIUM_ARGS,
    Lab,
    _run_all_cells,
    _wait_for_notebook,
    new_page,
    open_notebook,
    running_lab,
)
from test_notebook_iterative import SMALL

from rlhf_widgets.sandbox import base_model_path
from rlhf_widgets.views.run_figures import figure_from_log

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "08_iterative.ipynb"
ROUNDS = 2
LOOP_TIMEOUT_S = 900  # kernel start, two rounds (pairs, labels, reward model, PPO, evaluation) on 2 busy cores

pytestmark = BROWSER_MARKS

DASHBOARD = ".rlhfw-dashboard .js-plotly-plot"
# rows of the rounds table (the notebook's last output), -1 while it is not shown
TABLE_ROWS = "() => { const t = document.querySelector('.jp-OutputArea-output table.rlhfw-table');" \
             " return t ? t.querySelectorAll('tbody tr').length : -1; }"


def _notebook(dest: Path) -> None:
    """Notebook 08 with `SMALL`'s sizes and the sandbox base model as SFT, after its parameters cell."""
    assert f"ROUNDS = {ROUNDS}" in SMALL
    book = nbformat.read(NOTEBOOK, as_version=4)
    params = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    book.cells.insert(params + 1, nbformat.v4.new_code_cell(f"SFT = {str(base_model_path())!r}\n{SMALL}"))
    nbformat.write(book, dest)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "work"
    root.mkdir()
    _notebook(root / NOTEBOOK.name)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with running_lab(tmp_path, root, NOTEBOOK.name, PYTHONPATH=pythonpath) as lab:
        yield lab


@pytest.mark.timeout(1500)
def test_loop_dashboard_in_jupyterlab(lab: Lab, tmp_path: Path) -> None:
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page, console = new_page(browser, 2200)
        try:
            open_notebook(page, lab.url)
            _run_all_cells(page)
            _wait_for_notebook(page, LOOP_TIMEOUT_S)  # the run cell waits for the rounds (WAIT = True)
            page.wait_for_function(f"() => ({TABLE_ROWS})() === {ROUNDS}", timeout=60_000, polling=250)
            wait_for_traces(page, DASHBOARD,
                            expected_traces(figure_from_log(lab.root / "runs" / "loop" / "metrics.jsonl")))
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator(".rlhfw-dashboard").screenshot(path=str(ARTIFACTS / "loop_dashboard.png"))
            figures = legends_and_titles(page)
            assert any(fig["legends"] for fig in figures), f"no legend drawn in notebook 08's figures: {figures}"
            covered = overlaps(figures)
            assert covered == [], "legends overlap (test-artifacts/loop_dashboard.png):\n" + "\n".join(covered)
        except Exception as error:
            try:
                page.screenshot(path=str(tmp_path / "loop_failure.png"), full_page=True)
            except sync_api.Error:
                pass
            raise AssertionError(f"{error}\n--- browser console (last 30) ---\n" + "\n".join(console[-30:])
                                 + f"\n--- jupyter log ---\n{lab.log_tail()}") from error
        finally:
            browser.close()
