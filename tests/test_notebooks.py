"""Every notebook executes headless (nbclient, a real kernel) on the offline sandbox, in tour order.

Notebooks 01 → 06 share one run directory, as a user's session would: each reads what the previous
one wrote. Each gets a cell inserted after its "parameters" cell that shrinks the sizes, so the tour
runs in a few CPU minutes; everything else is the notebook as shipped.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

TOUR = {
    "01_sft": "DEMOS = 256",
    "02_label_preferences": "N_PROMPTS = 48",
    "03_reward_model": "EPOCHS = 1",
    "04_ppo": "NUM_UPDATES = 3\nWAIT = True\nSWEEP_BETAS = [0.02, 0.2]\nSWEEP_UPDATES = 1",
    "05_dpo": "",
    "05b_grpo": "MAX_STEPS = 2\nWAIT = True",
    "06_evaluate": 'EVAL_PROMPTS = 16\nBEST_OF = 4\n'
                   'from rlhf_widgets import load_probes\nPROBES = load_probes("sandbox")[::16]',
}


def run_notebook(notebook: str | Path, overrides: str, cwd: Path, timeout: int = 600,
                 kernel_name: str = "python3") -> nbformat.NotebookNode:
    """Execute notebooks/<notebook>.ipynb (or the notebook file at a Path) in a kernel whose working directory is
    `cwd`, with `overrides` run right after its parameters cell; return it."""
    path = notebook if isinstance(notebook, Path) else NOTEBOOKS / f"{notebook}.ipynb"
    book = nbformat.read(path, as_version=4)
    index = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    if overrides:
        book.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the kernel inherits the environment…
    # …but not the suite's TRANSFORMERS_VERBOSITY=error: the notebook must be quiet at a user's log level
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    NotebookClient(book, timeout=timeout, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(cwd)}}).execute(env=env)
    nbformat.write(book, cwd / f"{path.stem}.executed.ipynb")
    return book


def outputs(book: nbformat.NotebookNode) -> list[dict]:
    return [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def widget_models(book: nbformat.NotebookNode) -> list[str]:
    """The widget view model names the notebook displayed (from its saved widget state)."""
    state = book.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [m.get("model_name") for m in state.values()]


def figure_trace_names(book: nbformat.NotebookNode) -> set[str]:
    """Names of the traces of every plotly FigureWidget (an anywidget) in the saved widget state."""
    state = book.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return {trace.get("name") for m in state.values() for trace in (m.get("state", {}).get("_widget_data") or [])}


TQDM_BAR = re.compile(r"\[\d\d:\d\d[<,]")
"""tqdm's elapsed-time field ("[00:03<00:10, …]" or "[00:03, …]"): a progress bar, as a widget's text or as text"""


def progress_bars(cell: nbformat.NotebookNode) -> list[str]:
    """The progress bars a cell showed: tqdm widgets (a display whose plain text is a bar) and text bars."""
    bars = []
    for o in cell.get("outputs", []):
        text = o.get("data", {}).get("text/plain", "") if o.get("output_type") == "display_data" else o.get("text", "")
        text = "".join(text) if isinstance(text, list) else text
        if TQDM_BAR.search(text):
            bars.append(text.strip().splitlines()[-1][:80])
    return bars


def assert_quiet(book: nbformat.NotebookNode, expected: tuple[str, ...] = ()) -> None:
    """Quiet by design (issue 29): nothing on stderr (a pink box) in any cell, and at most one progress bar per
    cell — a cell that trains or samples shows one bar with the stage's name, library bars stay out.

    `expected`: the workbench's own warnings (their class names) that this notebook's settings should raise — a
    real problem the user can act on, said in words; each may show, once per message, and nothing else may."""
    noise = []
    seen: set[str] = set()
    for i, cell in enumerate(book.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") != "stream" or o.get("name") != "stderr":
                continue
            text = "".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "")
            warning = re.search(r": (\w+Warning): (.*)", text)
            if warning and warning.group(1) in expected and warning.group(2) not in seen:
                seen.add(warning.group(2))
                continue
            noise.append((i, text))
    assert noise == [], noise
    crowded = {i: bars for i, c in enumerate(book.cells) if len(bars := progress_bars(c)) > 1}
    assert crowded == {}, crowded


def test_notebooks_are_thin_and_parameterised() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        assert book.cells[0].cell_type == "markdown" and book.cells[0].source.startswith("# "), path.name
        code = [c for c in book.cells if c.cell_type == "code"]
        assert "google.colab" in code[0].source, f"{path.name}: first code cell must be the Colab set-up"
        assert "parameters" in code[1].metadata.get("tags", []), f"{path.name}: second code cell must be tagged"
        assert all(not c.get("outputs") for c in code), f"{path.name}: commit notebooks without outputs"
        assert all(len(c.source.splitlines()) <= 12 for c in code), f"{path.name}: a code cell is not thin"
        imports = re.findall(r"^from (rlhf_widgets[\w.]*) import", "\n".join(c.source for c in code), re.M)
        public = {"rlhf_widgets", "rlhf_widgets.sandbox"}
        assert set(imports) <= public, f"{path.name}: {imports}: use the public surface"


PROJECT_NAME = re.search(r'^name = "(.+)"$', (NOTEBOOKS.parent / "pyproject.toml").read_text(), re.M).group(1)
INSTALL_SOURCE_ENV = "RLHF_WIDGETS_SOURCE"
INSTALL_LINE = f"""%pip install -q "{{os.environ.get('{INSTALL_SOURCE_ENV}', '{PROJECT_NAME}')}}\""""
"""The one install line of every notebook's Colab cell: a pip requirement from RLHF_WIDGETS_SOURCE, by default the
project's published name (pyproject.toml; README, "Installing")."""


def test_every_colab_cell_installs_from_the_one_documented_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.utils.text import DollarFormatter

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        colab = next(c for c in book.cells if c.cell_type == "code").source
        installs = [line.strip() for line in colab.splitlines() if "pip install" in line]
        assert installs == [INSTALL_LINE], f"{path.name}: {installs}"
        assert "git+" not in path.read_text(), f"{path.name}: installs from a git URL"
    # what IPython runs (a magic's {expressions} are expanded in the cell's namespace): the default, or the variable
    def expanded() -> str:
        return DollarFormatter().vformat(INSTALL_LINE, args=[], kwargs={"os": os})

    monkeypatch.delenv(INSTALL_SOURCE_ENV, raising=False)
    assert expanded() == f'%pip install -q "{PROJECT_NAME}"'
    monkeypatch.setenv(INSTALL_SOURCE_ENV, "/content/rlhf_widgets-0.1.0-py3-none-any.whl")
    assert expanded() == '%pip install -q "/content/rlhf_widgets-0.1.0-py3-none-any.whl"'
    # …and the README says, in one place, what the name is and how to install from elsewhere
    readme = (NOTEBOOKS.parent / "README.md").read_text()
    section = readme.split("## Installing", 1)[1].split("\n## ", 1)[0]
    assert f"`{PROJECT_NAME}`" in section and INSTALL_SOURCE_ENV in section
    assert readme.count(INSTALL_SOURCE_ENV) == section.count(INSTALL_SOURCE_ENV)


def test_tour_runs_headless(tmp_path: Path) -> None:
    books = {name: run_notebook(name, overrides, tmp_path) for name, overrides in TOUR.items()}
    runs = tmp_path / "runs"
    for book in books.values():
        assert_quiet(book)
    # …and no trainer printing the logged values the live plot shows, nor library chatter
    printed = [o.get("text", "") for book in books.values() for o in outputs(book) if o.get("output_type") == "stream"]
    assert not [t for t in printed if "{'loss'" in t or "Setting accelerator" in t], printed

    # 01: a live dashboard (FigureWidget) and a trained model that beats the base model on gold
    assert "loss" in figure_trace_names(books["01_sft"])  # the live dashboard drew the training loss
    assert (runs / "sft" / "final" / "model.safetensors").is_file()
    table = next(o for o in outputs(books["01_sft"])
                 if "text/html" in o.get("data", {}) and "gold_win_rate" in o["data"]["text/html"])
    assert table is not None
    # 02: labels in the store from the simulated annotator and gold; an export
    with sqlite3.connect(runs / "labels.sqlite") as conn:
        annotators = dict(conn.execute("SELECT annotator, COUNT(*) FROM labels GROUP BY annotator").fetchall())
    assert annotators.get("simulated", 0) >= 100 and annotators.get("gold", 0) >= 100, annotators
    assert (runs / "preferences.jsonl").stat().st_size > 0
    # 03: a saved reward model; the report's numbers are printed
    assert (runs / "reward" / "final").is_dir()
    printed = json.dumps([o for o in outputs(books["03_reward_model"])])
    assert "gold_agreement" in printed
    # 04: the PPO panel ran its updates in the background and saved the policy
    log = [json.loads(line) for line in (runs / "ppo" / "metrics.jsonl").read_text().splitlines()]
    updates = {e["step"] for e in log if "objective/kl" in e.get("metrics", {})}
    assert len(updates) == 3, updates
    assert (runs / "ppo" / "final" / "adapter_config.json").is_file()
    # 04: the sweep trained one run per β and overlaid them
    assert {p.name for p in (runs / "ppo-sweep").iterdir()} == {"kl_coef=0.02", "kl_coef=0.2"}
    assert {"kl_coef=0.02", "kl_coef=0.2"} <= figure_trace_names(books["04_ppo"])
    # 05: DPO and GRPO saved a policy; GRPO's sample table showed scored completions
    assert (runs / "dpo" / "final").is_dir() and (runs / "grpo" / "final" / "config.json").is_file()
    assert "reward" in figure_trace_names(books["05b_grpo"]) or "loss" in figure_trace_names(books["05b_grpo"])
    # 06: the comparison table has every policy, the blind panel and the overoptimization figure rendered
    html = json.dumps(outputs(books["06_evaluate"]))
    for name in ("SFT", "best-of-4", "PPO", "DPO", "GRPO", "gold_win_rate", "kl_to_reference", "sycophancy_rate",
                 "refusal_rate", "correct_refusal_rate"):
        assert name in html, name
    assert "LabelingPanel" in html or "VBoxModel" in widget_models(books["06_evaluate"])


@pytest.mark.slow
def test_quickstart_notebook_reports_numbers_from_the_run(tmp_path: Path) -> None:
    """Notebook 00 runs the whole loop; every comparison number in its report is recomputed from the
    artifacts the run saved (same seeds) and found identical, and the HTML report shows them."""
    from rlhf_widgets.stages.reward import as_reward_function
    from rlhf_widgets.views.report import format_number
    from rlhf_widgets.workflows.quickstart import QuickstartConfig, quickstart_compare

    sizes = dict(sft_demos=128, pair_prompts=48, ppo_updates=2, eval_prompts=16)  # what is checked is sizes-free
    overrides = 'RUN_DIR = "qs"\n' + "\n".join(f"{k.upper()} = {v}" for k, v in sizes.items())
    book = run_notebook("00_quickstart", overrides, tmp_path)
    assert_quiet(book)
    out = tmp_path / "qs"
    report = json.loads((out / "report.json").read_text())
    comparison = report["numbers"]["comparison"]
    assert set(comparison) == {"SFT", "best-of-8", "PPO", "DPO"}
    assert "gold_win_rate" in json.dumps(outputs(book))

    config = QuickstartConfig(output_dir=str(out), **sizes)
    reward = as_reward_function(str(out / "reward" / "final"))  # one model or an ensemble, as the run saved it
    state = {"sft_path": out / "sft" / "final", "ppo_path": out / "ppo" / "final",
             "dpo_path": out / "dpo" / "final", "reward_model": reward}
    again = quickstart_compare(state, config)
    for name, row in comparison.items():
        for key in ("gold_win_rate", "gold_mean", "rm_win_rate", "mean_words"):
            assert again[name][key] == pytest.approx(row[key], abs=1e-6), (name, key)
        assert again[name]["example"] == row["example"]
    html = (out / "report.html").read_text()
    assert f'<td class="num">{format_number(comparison["PPO"]["gold_win_rate"], "percent")}</td>' in html
