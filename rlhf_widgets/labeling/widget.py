"""LabelingPanel: the in-notebook view for labeling preference pairs.

The panel only displays a `LabelingSession` and forwards clicks and keys to it. Every piece of model
text is HTML-escaped and shown with its line breaks — never interpreted as HTML or markdown.

Keys reach Python through `_KeyTarget`, a tiny anywidget that listens for keydown on the panel's own
DOM (never on the document, so typing in a notebook cell labels nothing); clicking the panel focuses
it. Stable CSS classes (`rlhfw-panel`, `rlhfw-left`, `rlhfw-btn-a`, `rlhfw-key-target`, …) let a
browser test find every part.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets as widgets

from rlhf_widgets.labeling.session import LabelingSession, ShownPair, Side
from rlhf_widgets.labeling.store import Label, PreferenceStore, Prompt

KEYS: dict[str, Side | None] = {
    "1": "left", "ArrowLeft": "left",
    "2": "right", "ArrowRight": "right",
    "3": "tie",
    "0": "skip",
    "Backspace": None,  # undo
}
LEGEND = "Keys (click the panel first): 1 or ← A better · 2 or → B better · 3 tie · 0 skip · Backspace undo"
_SAID = {"left": "A better", "right": "B better", "tie": "tie", "skip": "skipped"}

_ESM = """
const KEYS = new Set(__KEYS__);
const TEXT_FIELD = "input, textarea, select, [contenteditable='true']";

function render({ model, el }) {
  el.tabIndex = 0;
  el.setAttribute("data-lm-suppress-shortcuts", "true");
  el.setAttribute("title", "Click here or anywhere in the panel, then use the keys");
  el.textContent = "⌨ keys";
  let host = null, frame = 0, frames = 0;
  const onKey = (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || !KEYS.has(event.key)) return;
    if (event.target.closest && event.target.closest(TEXT_FIELD)) return;  // typing a note or a name
    event.preventDefault();
    event.stopPropagation();  // JupyterLab must not also act on it (e.g. "1" = heading in command mode)
    model.send({ key: event.key });
  };
  const onClick = (event) => {
    if (!(event.target.closest && event.target.closest(TEXT_FIELD))) el.focus({ preventScroll: true });
  };
  // the view is attached to the page after render; wait for the panel around it (≤ ~10 s)
  const attach = () => {
    const panel = el.closest(".rlhfw-panel");
    if (!panel && frames++ < 600) { frame = requestAnimationFrame(attach); return; }
    host = panel || el;
    host.setAttribute("data-lm-suppress-shortcuts", "true");
    host.addEventListener("keydown", onKey);
    host.addEventListener("click", onClick);
  };
  attach();
  return () => {
    cancelAnimationFrame(frame);
    if (host) {
      host.removeEventListener("keydown", onKey);
      host.removeEventListener("click", onClick);
    }
  };
}
export default { render };
""".replace("__KEYS__", json.dumps(sorted(KEYS)))

_CSS = """
.rlhfw-key-target { padding: 2px 8px; border: 1px dashed var(--jp-border-color1, #999);
  border-radius: 4px; cursor: pointer; font-size: 12px; user-select: none; }
.rlhfw-key-target:focus { outline: 2px solid var(--jp-brand-color1, #1976d2); border-style: solid; }
.rlhfw-key-target:focus::after { content: " active"; }
.rlhfw-panel .rlhfw-text { white-space: pre-wrap; overflow-wrap: anywhere; }
.rlhfw-panel .rlhfw-side { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 4px;
  padding: 6px 8px; }
.rlhfw-panel .rlhfw-side-title, .rlhfw-panel .rlhfw-role { font-weight: bold; margin-bottom: 4px; }
.rlhfw-panel .rlhfw-source { font-weight: normal; opacity: 0.7; }
"""


class _KeyTarget(anywidget.AnyWidget):
    """A focusable element that sends `{"key": …}` to Python for keydowns inside the enclosing panel."""

    _esm = _ESM
    _css = _CSS


def text_html(text: str) -> str:
    """Model text as inert HTML: escaped, line breaks kept, in a `rlhfw-text` div."""
    escaped = html.escape(text).replace("\r\n", "\n").replace("\n", "<br>")
    return f'<div class="rlhfw-text">{escaped}</div>'


def prompt_html(prompt: Prompt) -> str:
    """A prompt (string or chat messages) as inert HTML; each message is prefixed by its role."""
    if isinstance(prompt, str):
        return text_html(prompt)
    return "".join(
        f'<div class="rlhfw-message"><span class="rlhfw-role">{html.escape(m["role"])}:</span>'
        f'{text_html(m["content"])}</div>'
        for m in prompt
    )


def _side_html(title: str, source: str | None, text: str) -> str:
    source_html = f' <span class="rlhfw-source">— {html.escape(source)}</span>' if source else ""
    title_html = f'<div class="rlhfw-side-title">{title}{source_html}</div>'
    return f'<div class="rlhfw-side">{title_html}{text_html(text)}</div>'


def _button(description: str, css_class: str, tooltip: str, style: str = "") -> widgets.Button:
    button = widgets.Button(description=description, tooltip=tooltip, button_style=style)
    button.add_class(css_class)
    return button


def _hide(widget: widgets.DOMWidget, hidden: bool) -> None:
    widget.layout.display = "none" if hidden else None


class LabelingPanel(widgets.VBox):
    """Label preference pairs in the notebook: prompt on top, two responses side by side, buttons and keys.

    Args:
        store_or_path: a `PreferenceStore`, or the path of its SQLite file (opened, and closed with
            the panel).
        annotator: the name labels are recorded under (default "human"); editable in the panel.
        seed: seeds the per-pair side order (default 0).
        evaluation: blind comparison of two policies (default False): sources stay hidden.
        show_note: show a free-text note field stored with each label (default True).
        source_key: the metadata key naming each side's source (default "model").
    """

    def __init__(
        self,
        store_or_path: PreferenceStore | str | Path,
        annotator: str = "human",
        *,
        seed: int = 0,
        evaluation: bool = False,
        show_note: bool = True,
        source_key: str = "model",
    ) -> None:
        owns_store = not isinstance(store_or_path, PreferenceStore)
        self.store = PreferenceStore(store_or_path) if owns_store else store_or_path
        self._owns_store = owns_store
        self._session_options = {"seed": seed, "evaluation": evaluation, "source_key": source_key}
        self.session = LabelingSession(self.store, annotator, **self._session_options)
        self._shown_prompt: tuple[int, Prompt] | None = None  # (pair id, prompt) last rendered

        self._annotator = widgets.Text(value=annotator, description="Annotator", continuous_update=False)
        self._annotator.add_class("rlhfw-annotator")
        self._annotator.observe(self._on_annotator, names="value")
        self._progress = widgets.IntProgress(min=0, max=1, value=0)
        self._progress.add_class("rlhfw-progress")
        self._count = widgets.HTML()
        self._count.add_class("rlhfw-count")
        self._pair = widgets.HTML()
        self._pair.add_class("rlhfw-pair")
        self._prompt = widgets.HTML()
        self._prompt.add_class("rlhfw-prompt")
        self._left = widgets.HTML(layout=widgets.Layout(flex="1 1 0", min_width="0"))
        self._left.add_class("rlhfw-left")
        self._right = widgets.HTML(layout=widgets.Layout(flex="1 1 0", min_width="0"))
        self._right.add_class("rlhfw-right")
        self._responses = widgets.HBox([self._left, self._right], layout=widgets.Layout(width="100%"))
        self._responses.add_class("rlhfw-responses")
        self._done = widgets.HTML()
        self._done.add_class("rlhfw-done")
        self._choices = widgets.HBox([
            _button("◀ A is better", "rlhfw-btn-a", "left response better (1 or ←)", "info"),
            _button("B is better ▶", "rlhfw-btn-b", "right response better (2 or →)", "info"),
            _button("Tie", "rlhfw-btn-tie", "equally good or bad (3)"),
            _button("Skip", "rlhfw-btn-skip", "can't judge; don't show again (0)"),
        ])
        self._choices.add_class("rlhfw-choices")
        for button, side in zip(self._choices.children, ("left", "right", "tie", "skip"), strict=True):
            button.on_click(lambda _, side=side: self._choose(side))
        self._undo = _button("Undo", "rlhfw-btn-undo", "undo your last label (Backspace)", "warning")
        self._undo.on_click(lambda _: self._undo_last())
        self._note = widgets.Text(placeholder="optional note, saved with the label", description="Note")
        self._note.add_class("rlhfw-note")
        _hide(self._note, not show_note)
        self._keys = _KeyTarget()
        self._keys.add_class("rlhfw-key-target")
        self._keys.on_msg(lambda _widget, content, _buffers: self._handle_keystroke(content))
        legend = widgets.HTML(html.escape(LEGEND))
        legend.add_class("rlhfw-legend")
        self._status = widgets.HTML()
        self._status.add_class("rlhfw-status")

        super().__init__([
            widgets.HBox([self._annotator, self._progress, self._count]),
            self._pair,
            self._prompt,
            self._responses,
            self._done,
            widgets.HBox([self._choices, self._undo]),
            self._note,
            widgets.HBox([self._keys, legend]),
            self._status,
        ])
        self.add_class("rlhfw-panel")
        self._render()

    # ------------------------------------------------------------------ input
    def _handle_keystroke(self, event: dict[str, Any]) -> None:
        """Act on a browser keydown `{"key": …}`: 1/← left, 2/→ right, 3 tie, 0 skip, Backspace undo."""
        key = event.get("key")
        if key not in KEYS:
            return
        side = KEYS[key]
        if side is None:
            self._undo_last()
        else:
            self._choose(side)

    def _choose(self, side: Side) -> Label | None:
        if self.session.done:
            self._say("Nothing left to label.")
            return None
        label = self.session.choose(side, note=self._note.value)
        self._note.value = ""
        self._render()
        self._say(f"Saved: {_SAID[side]} (pair {label.pair_id}).")
        return label

    def _undo_last(self) -> None:
        label = self.session.undo()
        self._render()
        self._say("Nothing to undo." if label is None else f"Undid your label of pair {label.pair_id}.")

    def _on_annotator(self, change: dict[str, Any]) -> None:
        name = change["new"].strip()
        if not name:
            self._annotator.value = change["old"]
            self._say("The annotator name can't be empty.")
            return
        self.session.close()
        self.session = LabelingSession(self.store, name, **self._session_options)
        self._render()
        self._say(f"Labeling as {html.escape(name)}.")

    # ------------------------------------------------------------------ output
    def _render(self) -> None:
        done, total = self.session.progress
        self._progress.max = max(total, 1)
        self._progress.value = done
        self._count.value = f"{done} / {total} labeled"
        shown: ShownPair | None = self.session.current
        for part in (self._pair, self._prompt, self._responses, self._choices):
            _hide(part, shown is None)
        _hide(self._done, shown is not None)
        if shown is None:
            self._done.value = (
                f"<b>All done</b> — {done} / {total} pairs labeled. "
                "Export with <code>store.to_dataset()</code>; Undo brings back your last pair."
            )
            return
        # several pairs may share a prompt (and one answer): say so, or a new pair can look unchanged
        last = self._shown_prompt
        if last is None or last[0] != shown.id:
            same = last is not None and last[1] == shown.prompt
            self._pair.value = f"<b>Pair {shown.id}</b>" + (" — same prompt, other answers" if same else "")
            self._shown_prompt = (shown.id, shown.prompt)
        self._prompt.value = prompt_html(shown.prompt)
        self._left.value = _side_html("A", shown.left_source, shown.left)
        self._right.value = _side_html("B", shown.right_source, shown.right)

    def _say(self, message: str) -> None:
        self._status.value = message

    def close(self) -> None:
        """Close the widget and its parts, its session and (if the panel opened it) the store."""
        self.session.close()
        if self._owns_store:
            self.store.close()
        _close_tree(self.children)
        super().close()


def _close_tree(children: tuple[widgets.Widget, ...]) -> None:
    for child in children:
        _close_tree(getattr(child, "children", ()))
        child.close()

