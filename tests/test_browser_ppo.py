"""Notebook 04's PPO panel in a real JupyterLab + headless Chromium, driven by clicks and keys.

Runs notebook 04 up to the panel (the sandbox base model as the policy, the gold scorer as the reward), then:
Start → Pause → β typed and applied alone → Resume → Stop → Start again (continues) → Stop. At every step the
buttons' states must match the status line, the status must answer the click at once (a stop within 200 ms), and
the run's own log must show that only β changed (the learning rate the trainer used stayed the configured one).
After the run, once the dashboard draws every point of the run's log, no legend may cover a subplot title or
another legend (`browser_layout`: boxes from the DOM); `test-artifacts/ppo_after_run.png` is the panel then.
Saves `docs/images/ppo_panel.png` (the panel mid-training) and `docs/images/report.png` (the HTML report of
real sandbox runs), the README's pictures.
"""

from __future__ import annotations

import json
import os
import re
import time
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
    NOTEBOOK_STATE,
    Lab,
    _run_all_cells,
    new_page,
    open_notebook,
    running_lab,
)

from rlhf_widgets.sandbox import base_model_path
from rlhf_widgets.views.run_figures import figure_from_log

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "04_ppo.ipynb"
IMAGES = REPO / "docs" / "images"
FIXTURE_LOGS = Path(__file__).resolve().parent / "fixtures" / "logs"
STOP_FEEDBACK_MS = 200

pytestmark = BROWSER_MARKS

# ms from the next click to the first change of the status line's text that matches `expect` (a regular
# expression; any change when null): the training thread redraws the line when an update ends, and such a
# redraw can land between the click and the kernel's answer to it. Rejects after `timeoutMs`.
ARM = """([timeoutMs, expect]) => {
  const status = document.querySelector('.rlhfw-ppo-status');
  const before = status.innerText;
  const wanted = expect === null ? null : new RegExp(expect);
  window.__rlhfwStatus = new Promise((resolve, reject) => {
    let t0 = null;
    const start = () => { if (t0 === null) t0 = performance.now(); };
    const observer = new MutationObserver(() => {
      const text = status.innerText;
      if (t0 === null || text === before || (wanted !== null && !wanted.test(text))) return;
      observer.disconnect(); clearTimeout(timer);
      document.removeEventListener('click', start, true);
      resolve({ms: performance.now() - t0, text});
    });
    observer.observe(status, {childList: true, subtree: true, characterData: true});
    document.addEventListener('click', start, true);
    const timer = setTimeout(() => {
      observer.disconnect();
      reject(new Error(`the status did not change to match ${expect}; it reads ${status.innerText}`));
    }, timeoutMs);
  });
}"""

BUTTONS = """() => Object.fromEntries(['start', 'pause', 'resume', 'stop'].map(
  (name) => [name, !document.querySelector(`.rlhfw-ppo-${name}`).disabled]))"""

IDLE = {"start": True, "pause": False, "resume": False, "stop": False}
RUNNING = {"start": False, "pause": True, "resume": False, "stop": True}
PAUSED = {"start": False, "pause": False, "resume": True, "stop": True}
STOPPING = {"start": False, "pause": False, "resume": False, "stop": False}
# Pause's answer; "paused after" when the update in flight ended before the kernel read the click
PAUSE_FEEDBACK = r"pause requested — finishing update \d+|paused after update \d+"


def _notebook(dest: Path) -> None:
    """Notebook 04 up to its panel, with the sandbox base model as policy and the gold scorer as reward."""
    book = nbformat.read(NOTEBOOK, as_version=4)
    panel = next(i for i, c in enumerate(book.cells) if c.cell_type == "code" and "PPOPanel(trainer)" in c.source)
    params = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    book.cells = book.cells[: panel + 1]
    # smaller updates than the notebook's (32 rollouts of up to 48 tokens), so that the test takes a minute or two
    source = book.cells[panel].source
    book.cells[panel].source = source.replace("kl_coef=KL_COEF)", "kl_coef=KL_COEF, batch_size=8, mini_batch_size=8, "
                                                                 "max_new_tokens=24)")
    assert book.cells[panel].source != source, "notebook 04 no longer builds its PPOConfig as this test expects"
    book.cells.insert(params + 1, nbformat.v4.new_code_cell(
        "from rlhf_widgets.sandbox import gold_reward\n"
        f"SFT = {str(base_model_path())!r}\nREWARD = gold_reward\nNUM_UPDATES = 100"))
    nbformat.write(book, dest)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "work"
    root.mkdir()
    _notebook(root / NOTEBOOK.name)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with running_lab(tmp_path, root, NOTEBOOK.name, PYTHONPATH=pythonpath) as lab:
        yield lab


def _status(page) -> str:
    return " ".join(page.inner_text(".rlhfw-ppo-status").split())


def _expect(page, buttons: dict[str, bool], status: str, timeout_s: float = 300) -> str:
    """Wait until the status line contains `status` and the buttons are `buttons`; returns the status."""
    return _expect_state(page, buttons, lambda text: status in text, repr(status), timeout_s)


def _expect_running(page, at_least: int, timeout_s: float = 300) -> str:
    """Wait until the run is at update `at_least` or later ("running update N of …", N >= at_least): a state, not
    an exact update, which a fast machine can pass between two looks."""
    def reached(text: str) -> bool:
        found = re.search(r"running update (\d+) of", text)
        return found is not None and int(found.group(1)) >= at_least

    return _expect_state(page, RUNNING, reached, f"running update >= {at_least}", timeout_s)


def _expect_state(page, buttons: dict[str, bool], holds, status: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text, shown = _status(page), page.evaluate(BUTTONS)
        if holds(text) and shown == buttons:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"status {text!r} with buttons {shown}; expected {status} with {buttons}")
        time.sleep(0.05)


def _click(page, name: str, expect: str | None = None) -> dict:
    """Click a panel button; return {ms, text} of the status line's first change after the click that matches
    the regular expression `expect` (any change when None)."""
    page.evaluate(ARM, [30_000, expect])
    page.click(f".rlhfw-ppo-{name}")
    return page.evaluate("() => window.__rlhfwStatus")


def _log(lab: Lab) -> list[dict]:
    return [json.loads(line) for line in (lab.root / "runs" / "ppo" / "metrics.jsonl").read_text().splitlines()]


def _write_fixture_report(out: Path) -> Path:
    """The HTML report of the real sandbox runs in tests/fixtures/logs (their quickstart numbers included)."""
    from rlhf_widgets.runtime.metrics import MetricsLog
    from rlhf_widgets.views.report import write_report

    saved = json.loads((FIXTURE_LOGS / "report.json").read_text())
    logs = {stage: MetricsLog.load(FIXTURE_LOGS / f"{stage}.jsonl") for stage in ("sft", "reward", "ppo", "dpo")}
    out.mkdir(parents=True, exist_ok=True)
    return write_report(out, saved["config"], saved["numbers"], saved["seconds"], logs)


@pytest.mark.timeout(1200)
def test_ppo_panel_in_jupyterlab(lab: Lab, tmp_path: Path) -> None:
    from playwright import sync_api

    IMAGES.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page, console = new_page(browser, 2200)
        try:
            open_notebook(page, lab.url)
            _run_all_cells(page)
            page.locator(".rlhfw-ppo-panel .rlhfw-ppo-status").wait_for(state="visible", timeout=300_000)
            state = page.evaluate(NOTEBOOK_STATE)
            assert not state.get("errors"), state["errors"]
            _expect(page, IDLE, "ready — 100 updates planned")

            feedback = {"start": _click(page, "start")}
            _expect(page, RUNNING, "running update")
            _expect_running(page, 6)  # five updates drawn: the picture mid-training
            time.sleep(1.0)  # the dashboard's throttled redraw
            page.locator(".rlhfw-ppo-panel").screenshot(path=str(IMAGES / "ppo_panel.png"))
            drawn = page.locator(".rlhfw-dashboard .main-svg").first.bounding_box()  # the plot as drawn
            area = page.locator(".jp-OutputArea-output .rlhfw-ppo-panel").first.bounding_box()
            assert drawn["width"] >= 0.95 * area["width"], f"plot {drawn['width']} px wide in a {area['width']} px area"

            feedback["pause"] = _click(page, "pause", PAUSE_FEEDBACK)
            assert re.search(PAUSE_FEEDBACK, feedback["pause"]["text"]), feedback["pause"]
            paused = _expect(page, PAUSED, "paused after update")
            paused_at = int(paused.split("paused after update ")[1].split()[0])

            page.fill(".rlhfw-set-kl_coef input", "0.2")
            page.press(".rlhfw-set-kl_coef input", "Enter")
            feedback["apply"] = _click(page, "apply", "queued")
            queued = [line.strip() for line in feedback["apply"]["text"].splitlines() if "queued" in line]
            assert queued == [f"β 0.05 → 0.2 queued, applies at update {paused_at + 1}"]  # β only, not lr

            feedback["resume"] = _click(page, "resume")
            _expect_running(page, paused_at + 2)  # update paused_at + 1 is done
            record = next(e for e in _log(lab) if e["kind"] == "metrics" and e["step"] == paused_at + 1)
            assert record["metrics"]["objective/kl_coef"] == 0.2
            assert record["metrics"]["lr"] == 3e-4, "the learning rate the user did not touch must not change"
            settings = [e["data"] for e in _log(lab) if e["kind"] == "setting"]
            assert [(s["name"], s["new"]) for s in settings] == [("kl_coef", 0.2)]

            feedback["stop"] = _click(page, "stop", "stop requested")
            assert feedback["stop"]["text"].startswith("stop requested — finishing update")
            assert feedback["stop"]["ms"] <= STOP_FEEDBACK_MS, feedback["stop"]
            _expect(page, STOPPING, "stop requested")
            stopped = _expect(page, IDLE, "stopped after update")
            stopped_at = int(stopped.split("stopped after update ")[1].split()[0])

            feedback["start again"] = _click(page, "start")
            _expect_running(page, stopped_at + 2)  # continued, not restarted
            _click(page, "stop")
            _expect(page, IDLE, "stopped after update")
            kinds = [e["kind"] for e in _log(lab)]
            assert kinds.count("stopped") == 2 and kinds.count("setting") == 1

            # after the run: once the dashboard draws every point of its log, no legend covers a title or a legend
            wait_for_traces(page, ".rlhfw-dashboard .js-plotly-plot",
                            expected_traces(figure_from_log(lab.root / "runs" / "ppo" / "metrics.jsonl")))
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator(".rlhfw-ppo-panel").screenshot(path=str(ARTIFACTS / "ppo_after_run.png"))
            figures = legends_and_titles(page)
            assert any(fig["legends"] for fig in figures), f"no legend drawn in notebook 04's figures: {figures}"
            covered = overlaps(figures)
            assert covered == [], "legends overlap (test-artifacts/ppo_after_run.png):\n" + "\n".join(covered)

            report = _write_fixture_report(tmp_path / "report")
            page.goto(report.as_uri())
            page.wait_for_timeout(1500)
            page.screenshot(path=str(IMAGES / "report.png"))
        except Exception as error:
            try:
                page.screenshot(path=str(tmp_path / "ppo_failure.png"), full_page=True)
            except sync_api.Error:
                pass
            raise AssertionError(f"{error}\n--- browser console (last 30) ---\n" + "\n".join(console[-30:])
                                 + f"\n--- jupyter log ---\n{lab.log_tail()}") from error
        finally:
            browser.close()
    each = ", ".join(f"{name} {value['ms']:.0f} ms" for name, value in feedback.items())
    print(f"click → status: {each}")
