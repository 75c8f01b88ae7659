"""Notebook 02 in a real JupyterLab + headless Chromium: clicks and keys label pairs, undo works.

Runs the notebook with the sandbox base model and 8 prompts, labels six pairs (three buttons, three
keys after clicking the panel), undoes the last and turns on **highlight differences**, then reads the
labels back from the store — the notebook's SQLite file, and (the `postgresql` variant) a PostgreSQL store
on the test server. Writes `test-artifacts/labeling_panel.png` and
`test-artifacts/browser_latency[_postgresql].json` (ms from each click / key to the panel showing the next pair).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from rlhf_widgets.labeling import PreferenceStore
from rlhf_widgets.sandbox import base_model_path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "02_label_preferences.ipynb"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTEBOOK_TIMEOUT_S = 300  # kernel start + model load + pair generation on a slow 2-core machine
CHANGE_TIMEOUT_MS = 30_000  # one click → next pair

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (run `make browser`)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
]
"""Every browser test module's marks: `-m browser` selects them; no chromium or no playwright skips them."""
pytestmark = BROWSER_MARKS

# Arm before an action: resolves with ms from the next click / keydown to the first change of the
# prompt or left response (or rejects if nothing changes within the timeout).
ARM = """(timeoutMs) => {
  // pairs of one prompt can share the prompt and the left answer: the pair header always changes
  const targets = document.querySelectorAll('.rlhfw-pair, .rlhfw-prompt, .rlhfw-left, .rlhfw-right');
  window.__rlhfwChange = new Promise((resolve, reject) => {
    let t0 = null;
    const start = () => { if (t0 === null) t0 = performance.now(); };
    const stop = () => {
      observer.disconnect(); clearTimeout(timer);
      document.removeEventListener('click', start, true);
      document.removeEventListener('keydown', start, true);
    };
    const observer = new MutationObserver(() => {
      if (t0 === null) return;
      const ms = performance.now() - t0;
      stop();
      resolve(ms);
    });
    targets.forEach((t) => observer.observe(t, {childList: true, subtree: true, characterData: true}));
    document.addEventListener('click', start, true);
    document.addEventListener('keydown', start, true);
    const timer = setTimeout(() => {
      stop();
      reject(new Error(t0 === null ? 'the action never reached the page'
                                   : `the panel did not change within ${timeoutMs} ms of the action`));
    }, timeoutMs);
  });
  return targets.length;
}"""

NOTEBOOK_STATE = """() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return {ready: false};
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter((cell) => cell.model.type === 'code');
  const errors = [];
  for (const cell of cells) {
    for (const out of cell.model.outputs.toJSON()) {
      if (out.output_type !== 'error') continue;
      errors.push(`${out.ename}: ${out.evalue}\\n${(out.traceback || []).join('\\n')}`);
    }
  }
  return {ready: true, status: kernel ? kernel.status : null, total: cells.length, errors,
          executed: cells.filter((cell) => cell.model.executionCount !== null).length};
}"""


@dataclass
class Lab:
    url: str
    root: Path
    log: Path

    def log_tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook_with_overrides(dest: Path, labels: str | None) -> None:
    """Notebook 02 with a cell after the parameters cell: the sandbox base model, 8 prompts, and the store
    (`labels`; None: the notebook's own SQLite file)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    store = f"\nLABELS = {labels!r}" if labels else ""
    override = nbformat.v4.new_code_cell(f"POLICY = {str(base_model_path())!r}\nN_PROMPTS = 8{store}")
    nb.cells.insert(at + 1, override)
    nbformat.write(nb, dest)


def _write_lab_settings(settings: Path) -> None:
    """No news / update toasts over the panel; every cell attached to the DOM."""
    files = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, values in files.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def labels_store(request: pytest.FixtureRequest) -> str | None:
    """Where the notebook keeps its labels: None (its SQLite file under runs/) or a PostgreSQL store's URL."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@contextlib.contextmanager
def running_lab(tmp_path: Path, root: Path, notebook: str, **extra_env: str) -> Iterator[Lab]:
    """A JupyterLab server on loopback over `root` (its own config, runtime, settings and workspace folders under
    `tmp_path`, the HF libraries offline), waited for until it answers; `lab.url` opens `notebook`. Stopped after."""
    _write_lab_settings(tmp_path / "lab-settings")
    token, port = secrets.token_hex(16), _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        **extra_env,
    }
    log = tmp_path / "jupyter.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
             "--ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True"],
            cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    lab = Lab(url=f"http://127.0.0.1:{port}", root=root, log=log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{lab.log_tail()}")
            try:
                with urllib.request.urlopen(f"{lab.url}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 90 s:\n{lab.log_tail()}")
            time.sleep(0.5)
        lab.url = f"{lab.url}/lab/tree/{notebook}?token={token}"
        yield lab
    finally:
        server.terminate()  # the server shuts its kernels down
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture
def lab(tmp_path: Path, labels_store: str | None) -> Iterator[Lab]:
    root = tmp_path / "work"
    (root / "runs").mkdir(parents=True)
    _notebook_with_overrides(root / NOTEBOOK.name, labels_store)
    with running_lab(tmp_path, root, NOTEBOOK.name) as lab:
        yield lab


def _normalised(text: str) -> str:
    return " ".join(text.split())


KERNEL_IDLE = ("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
               " const k = w && w.sessionContext && w.sessionContext.session"
               " && w.sessionContext.session.kernel; return Boolean(k) && k.status === 'idle'; }")
"""True once the notebook open in JupyterLab has a kernel and it is idle."""


def new_page(browser, height: int) -> tuple:
    """(page, console): a 1400 px wide page of `height` px, and the list its console messages and page errors go
    to (for the failure message)."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    return page, console


def open_notebook(page, url: str) -> None:
    """Open JupyterLab at `url` (its notebook) and wait until the notebook's kernel is idle."""
    page.goto(url, timeout=120_000)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000, polling=500)


def _run_all_cells(page) -> None:
    """Run → Run All Cells: the JupyterLab command when the app is exposed, else the menu."""
    exposed = page.evaluate("() => Boolean(window.jupyterapp)")
    if exposed and page.evaluate("() => window.jupyterapp.commands.isEnabled('runmenu:run-all')"):
        page.evaluate("() => { window.jupyterapp.commands.execute('runmenu:run-all'); }")
        return
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").click()


def _wait_for_notebook(page, timeout_s: float = NOTEBOOK_TIMEOUT_S) -> dict:
    """Wait until every code cell has run and the kernel is idle; fail on the first cell error."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = page.evaluate(NOTEBOOK_STATE)
        if state.get("errors"):
            traceback = re.sub(r"\x1b\[[0-9;]*m", "", state["errors"][0])  # without ANSI colours
            raise AssertionError(f"a notebook cell failed:\n{traceback}")
        if state.get("ready") and state["executed"] == state["total"] and state["status"] == "idle":
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"the notebook did not finish within {timeout_s:.0f} s: {state}")
        time.sleep(1)


def _shown(page) -> tuple[int, str, str]:
    """(pair id in the panel's header, left text, right text) as displayed."""
    header = re.match(r"Pair (\d+)\b", _normalised(page.inner_text(".rlhfw-pair")))
    assert header, f"no pair id in the header {page.inner_text('.rlhfw-pair')!r}"
    return (int(header.group(1)), _normalised(page.inner_text(".rlhfw-left .rlhfw-text")),
            _normalised(page.inner_text(".rlhfw-right .rlhfw-text")))


def _act(page, name: str, action) -> float:
    """Do `action()` and return ms until the panel changed; then wait until the panel has settled."""
    status_before = page.inner_text(".rlhfw-status")
    assert page.evaluate(ARM, CHANGE_TIMEOUT_MS) == 4, "pair header, prompt or a response missing from the panel"
    action()
    try:
        ms = page.evaluate("() => window.__rlhfwChange")
    except Exception as error:
        raise AssertionError(f"{name}: {error}") from error
    # the status line is the panel's last update: once it changes, prompt and both sides are final
    page.wait_for_function("(before) => document.querySelector('.rlhfw-status').innerText !== before",
                           arg=status_before, timeout=CHANGE_TIMEOUT_MS)
    return ms


def _current_labels(db: Path | str, annotator: str) -> tuple[dict[int, tuple[str, bool]], list[tuple]]:
    """({pair_id: (choice, shown_swapped)} of the current labels, full history) of one annotator."""
    with PreferenceStore(db) as store:
        current = store.labels(annotator)
        history = [(lbl.pair_id, lbl.choice, int(lbl.undone)) for lbl in store.labels(annotator, include_history=True)]
    return {lbl.pair_id: (lbl.choice, lbl.shown_swapped) for lbl in current}, history


def _pairs(db: Path | str) -> dict[int, tuple[str, str]]:
    with PreferenceStore(db) as store:
        return {pair.id: (_normalised(pair.response_a), _normalised(pair.response_b)) for pair in store.pairs()}


def _which_pair(pairs: dict[int, tuple[str, str]], pair_id: int, left: str, right: str) -> tuple[int, bool]:
    """(pair id, swapped) of the displayed pair, after checking its texts are that stored pair's."""
    a, b = pairs[pair_id]
    assert {a, b} == {left, right}, f"pair {pair_id} is {a!r} / {b!r} but the panel shows {left!r} / {right!r}"
    return pair_id, (a, b) == (right, left)


@pytest.mark.timeout(900)
def test_label_pairs_in_jupyterlab(lab: Lab, labels_store: str | None) -> None:
    from playwright import sync_api

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page, console = new_page(browser, 1000)
        try:
            open_notebook(page, lab.url)
            _run_all_cells(page)
            _wait_for_notebook(page)
            page.locator(".rlhfw-panel .rlhfw-prompt .rlhfw-text").first.wait_for(state="visible",
                                                                                   timeout=60_000)
            db = labels_store or lab.root / "runs" / "labels.sqlite"
            pairs = _pairs(db)
            assert len(pairs) >= 7, f"only {len(pairs)} pairs to label; the test needs 7"

            expected: dict[int, tuple[str, bool]] = {}  # pair id → (choice, swapped)
            latencies: list[tuple[str, float]] = []

            def label(name: str, side: str, action) -> int:
                pair_id, swapped = _which_pair(pairs, *_shown(page))
                choice = side if side == "tie" else "a" if (side == "left") != swapped else "b"
                latencies.append((name, _act(page, name, action)))
                expected[pair_id] = (choice, swapped)
                return pair_id

            label("click A", "left", lambda: page.click(".rlhfw-btn-a"))
            label("click B", "right", lambda: page.click(".rlhfw-btn-b"))
            label("click tie", "tie", lambda: page.click(".rlhfw-btn-tie"))
            page.click(".rlhfw-panel .rlhfw-prompt")  # focus the panel: its keys now label
            focused = page.evaluate("() => Boolean(document.activeElement.closest('.rlhfw-panel'))")
            assert focused, "clicking the panel did not focus it"
            label("key 1", "left", lambda: page.keyboard.press("1"))
            label("key 2", "right", lambda: page.keyboard.press("2"))
            undone = label("key ArrowLeft", "left", lambda: page.keyboard.press("ArrowLeft"))
            undo = "key Backspace (undo)"
            latencies.append((undo, _act(page, undo, lambda: page.keyboard.press("Backspace"))))
            assert _which_pair(pairs, *_shown(page))[0] == undone, "undo did not bring back the last pair"
            page.click(".rlhfw-highlight")  # the words that differ between the answers get marked
            page.locator(".rlhfw-left mark, .rlhfw-right mark").first.wait_for(state="attached",
                                                                              timeout=CHANGE_TIMEOUT_MS)
            page.locator(".rlhfw-panel").screenshot(path=str(ARTIFACTS / "labeling_panel.png"))
        except Exception as error:
            try:
                page.screenshot(path=str(ARTIFACTS / "labeling_failure.png"), full_page=True)
            except sync_api.Error:
                pass
            raise AssertionError(
                f"{error}\n--- browser console (last 30) ---\n" + "\n".join(console[-30:])
                + f"\n--- jupyter log ---\n{lab.log_tail()}"
            ) from error
        finally:
            browser.close()

    current, history = _current_labels(db, "human")
    undone_choice, _ = expected.pop(undone)
    assert current == expected, f"labels in SQLite {current} != labels made {expected}"
    assert history[-1] == (undone, undone_choice, 1), f"the last label should be undone: {history}"
    assert len(history) == 6

    ms = [value for _, value in latencies]
    median = statistics.median(ms)
    suffix = "_postgresql" if labels_store else ""
    (ARTIFACTS / f"browser_latency{suffix}.json").write_text(json.dumps({
        "actions": [name for name, _ in latencies], "latencies_ms": ms, "median_ms": median,
    }, indent=2))
    each = ", ".join(f"{value:.0f}" for value in ms)
    print(f"click/key → next pair ({'PostgreSQL' if labels_store else 'SQLite'}): median {median:.0f} ms over "
          f"{len(ms)} actions ({each})")
