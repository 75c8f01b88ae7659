"""LabelingPanel: the in-notebook view for labeling preference pairs.

The panel only displays a `LabelingSession` and forwards clicks and keys to it. Every piece of model
text is HTML-escaped and shown with its line breaks — never interpreted as HTML or markdown.

Each answer scrolls inside a box of at most `ANSWER_MAX_HEIGHT` (the prompt inside `PROMPT_MAX_HEIGHT`), so
a long answer never pushes the choice buttons off-screen. **highlight differences** marks the words that
differ between the two answers (`diff_html`). An answer that shows nothing — empty, or only whitespace and
invisible characters such as U+200B — is flagged with a badge naming its code points (`blank_reason`), and
can still be chosen.

Keys reach Python through `_KeyTarget`, a tiny anywidget that listens for keydown on the panel's own
DOM (never on the document, so typing in a notebook cell labels nothing); clicking the panel focuses
it. Stable CSS classes (`rlhfw-panel`, `rlhfw-left`, `rlhfw-btn-a`, `rlhfw-key-target`, …) let a
browser test find every part.

If the store stops answering (a PostgreSQL server restarting, a dropped network), the panel says so,
keeps the label that was clicked, disables the choice buttons and retries on a background thread every
`retry_every_s`; when the store answers, the label is saved (once) and the next pair appears. Undo drops
a label that was never saved.

Every label is in the store the moment it is acknowledged, so a panel created again on the same store (after
a page reload, re-run its cell) continues at the annotator's next unlabeled pair; Undo reaches labels made
before. A line displayed under the panel says so (`RELOAD_HINT`): an output of its own, not a widget, so that it is
still there when a reload has taken the panel's widgets (`reload_hint`).
"""

from __future__ import annotations

import html
import json
import re
import threading
import unicodedata
from collections import Counter
from difflib import SequenceMatcher
from itertools import groupby
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets as widgets

from rlhf_widgets.labeling.backends import StoreUnavailable
from rlhf_widgets.labeling.records import Label
from rlhf_widgets.labeling.session import LabelingSession, PendingLabel, ShownPair, Side
from rlhf_widgets.labeling.store import PreferenceStore
from rlhf_widgets.runtime.types import Prompt
from rlhf_widgets.views.reload_hint import display_with_hint

KEYS: dict[str, Side | None] = {
    "1": "left", "ArrowLeft": "left",
    "2": "right", "ArrowRight": "right",
    "3": "tie",
    "0": "skip",
    "Backspace": None,  # undo
}
LEGEND = "Keys (click the panel first): 1 or ← A better · 2 or → B better · 3 tie · 0 skip · Backspace undo"
RELOAD_HINT = ("If this panel is gone after a page reload, re-run its cell: labels are saved as you go, and the "
               "panel continues at your next unlabeled pair.")
ANSWER_MAX_HEIGHT = "22em"
"""an answer taller than this scrolls inside its box"""
PROMPT_MAX_HEIGHT = "12em"
"""a prompt taller than this scrolls inside its box"""
_SAID = {"left": "A better", "right": "B better", "tie": "tie", "skip": "skipped"}
_SAID_CHOICE = {"a": "response a better", "b": "response b better", "tie": "tie", "skip": "skipped"}

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
.rlhfw-panel .rlhfw-text { white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.45; }
.rlhfw-panel .rlhfw-side { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 4px;
  padding: 6px 8px; }
.rlhfw-panel .rlhfw-side-title, .rlhfw-panel .rlhfw-role { font-weight: bold; margin-bottom: 4px; }
.rlhfw-panel .rlhfw-source { font-weight: normal; opacity: 0.7; }
.rlhfw-panel .rlhfw-reload-hint { font-size: 12px; opacity: 0.7; }
"""


class _KeyTarget(anywidget.AnyWidget):
    """A focusable element that sends `{"key": …}` to Python for keydowns inside the enclosing panel."""

    _esm = _ESM
    _css = _CSS


def _inert(text: str) -> str:
    """`text` escaped, with its line breaks as <br>."""
    return html.escape(text).replace("\r\n", "\n").replace("\n", "<br>")


def text_html(text: str) -> str:
    """Model text as inert HTML: escaped, line breaks kept, in a `rlhfw-text` div."""
    return f'<div class="rlhfw-text">{_inert(text)}</div>'


def _scroll_box(css_class: str, max_height: str, inner_html: str) -> str:
    """`inner_html` in a box at most `max_height` tall that scrolls what does not fit."""
    # inline, so the box is bounded even before the panel's stylesheet (sent with the key widget) arrives
    return f'<div class="{css_class}" style="max-height: {max_height}; overflow-y: auto">{inner_html}</div>'


def prompt_html(prompt: Prompt) -> str:
    """A prompt (string or chat messages) as inert HTML; each message is prefixed by its role. A long prompt
    scrolls inside a box at most `PROMPT_MAX_HEIGHT` tall."""
    if isinstance(prompt, str):
        return _scroll_box("rlhfw-prompt-box", PROMPT_MAX_HEIGHT, text_html(prompt))
    messages = "".join(
        f'<div class="rlhfw-message"><span class="rlhfw-role">{html.escape(m["role"])}:</span>'
        f'{text_html(m["content"])}</div>'
        for m in prompt
    )
    return _scroll_box("rlhfw-prompt-box", PROMPT_MAX_HEIGHT, messages)


# words, runs of whitespace, single other characters: "order #1234." → "order", " ", "#", "1234", "."
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")


def diff_html(left: str, right: str) -> tuple[str, str]:
    """Both answers as inert HTML (escaped, line breaks as <br>) with what differs wrapped in <mark>.

    A word-level diff (`difflib.SequenceMatcher` over words, whitespace and punctuation, whitespace kept):
    answers that differ by one number mark just that number on each side; the spaces between two changed
    words are marked with them, so a changed phrase is one mark. Each piece is escaped on its own before it
    is wrapped, so no model text is ever read as markup.
    """
    tokens_left, tokens_right = _TOKEN.findall(left), _TOKEN.findall(right)  # "\r\n" stays in one token
    opcodes = SequenceMatcher(None, tokens_left, tokens_right, autojunk=False).get_opcodes()  # autojunk drops " "
    pieces_left: list[tuple[bool, str]] = []  # (differs, text)
    pieces_right: list[tuple[bool, str]] = []
    for n, (op, i1, i2, j1, j2) in enumerate(opcodes):
        text_left, text_right = "".join(tokens_left[i1:i2]), "".join(tokens_right[j1:j2])
        # equal and non-equal opcodes alternate: an equal run inside the list lies between two changes
        differs = op != "equal" or (0 < n < len(opcodes) - 1 and text_left.isspace())
        pieces_left.append((differs, text_left))
        pieces_right.append((differs, text_right))
    return _marked(pieces_left), _marked(pieces_right)


def _marked(pieces: list[tuple[bool, str]]) -> str:
    """Runs of differing pieces escaped and wrapped in one <mark>; the rest escaped."""
    out: list[str] = []
    for differs, run in groupby(pieces, key=lambda piece: piece[0]):
        text = _inert("".join(text for _, text in run))
        out.append(f"<mark>{text}</mark>" if differs and text else text)
    return "".join(out)


# shown as nothing though their category is a letter, mark or symbol (fillers, the braille blank, CGJ)
_BLANK_GLYPHS = frozenset("\u034f\u115f\u1160\u2800\u3164\uffa0")


def _shows_nothing(char: str) -> bool:
    return char in _BLANK_GLYPHS or unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def blank_reason(text: str) -> str | None:
    """Why `text` shows nothing — "empty", "only whitespace: U+0020 ×3" or "only invisible characters:
    U+200B ×3, U+000A ×1" (code points in order of first use) — or None if any character is visible."""
    if not text:
        return "empty"
    if not all(_shows_nothing(char) for char in text):
        return None
    counts = ", ".join(f"U+{ord(char):04X} ×{n}" for char, n in Counter(text).items())
    kind = "whitespace" if text.isspace() else "invisible characters"
    return f"only {kind}: {counts}"


def _blank_badge(text: str, reason: str) -> str:
    names = ", ".join(f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}" for char in dict.fromkeys(text))
    style = ("display: inline-block; padding: 2px 8px; border-radius: 4px; font-weight: bold; "
             "background: #fff3cd; color: #664d03; border: 1px solid #e0b000")
    return (f'<div class="rlhfw-blank" style="{style}" title="{html.escape(names or "no characters")}">'
            f"⚠ blank answer ({html.escape(reason)})</div>")


def _side_html(title: str, source: str | None, text: str, marked_html: str | None = None) -> str:
    """One answer: its title (and source), then the answer in a scroll box — `marked_html` if given (already
    inert), else `text` escaped — or, when the answer shows nothing, a badge saying so."""
    source_html = f' <span class="rlhfw-source">— {html.escape(source)}</span>' if source else ""
    title_html = f'<div class="rlhfw-side-title">{title}{source_html}</div>'
    reason = blank_reason(text)
    if reason is not None:
        body = _blank_badge(text, reason)
    else:
        inner = _inert(text) if marked_html is None else marked_html
        body = _scroll_box("rlhfw-answer", ANSWER_MAX_HEIGHT, f'<div class="rlhfw-text">{inner}</div>')
    return f'<div class="rlhfw-side">{title_html}{body}</div>'


def _button(description: str, css_class: str, tooltip: str, style: str = "") -> widgets.Button:
    button = widgets.Button(description=description, tooltip=tooltip, button_style=style)
    button.add_class(css_class)
    return button


def _hide(widget: widgets.DOMWidget, hidden: bool) -> None:
    widget.layout.display = "none" if hidden else None


class LabelingPanel(widgets.VBox):
    """Label preference pairs in the notebook: prompt on top, two responses side by side, buttons and keys.

    Args:
        store_or_path: a `PreferenceStore`, or what to open one from — an SQLite file path or a
            postgresql:// URL (opened, and closed with the panel).
        annotator: the name labels are recorded under (default "human"); editable in the panel.
        seed: seeds the per-pair side order (default 0).
        evaluation: blind comparison of two policies (default False): sources stay hidden.
        show_note: show a free-text note field stored with each label (default True).
        source_key: the metadata key naming each side's source (default "model").
        retry_every_s: while the store is unreachable, seconds between tries to save the kept label
            (default 2.0).
        highlight_differences: start with the words that differ between the two answers marked (default
            False); the panel's **highlight differences** toggle switches it.
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
        retry_every_s: float = 2.0,
        highlight_differences: bool = False,
    ) -> None:
        if not retry_every_s > 0:
            raise ValueError(f"retry_every_s must be a positive number of seconds, got {retry_every_s!r}")
        owns_store = not isinstance(store_or_path, PreferenceStore)
        self.store = PreferenceStore(store_or_path) if owns_store else store_or_path
        self._owns_store = owns_store
        self._session_options = {"seed": seed, "evaluation": evaluation, "source_key": source_key}
        self.session = LabelingSession(self.store, annotator, **self._session_options)
        self._shown_prompt: tuple[int, Prompt] | None = None  # (pair id, prompt) last rendered
        self._retry_every_s = retry_every_s
        self._retrier: threading.Thread | None = None
        self._closed = threading.Event()
        self._progress_seen = (0, 0)  # shown while the store can't be asked

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
        self._highlight = widgets.ToggleButton(
            value=highlight_differences, description="highlight differences",
            tooltip="mark the words that differ between the two answers", layout=widgets.Layout(width="auto"),
        )
        self._highlight.add_class("rlhfw-highlight")
        self._highlight.observe(lambda _: self._render_answers(), names="value")
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
        self._note = widgets.Text(placeholder="optional note, saved with the label", description="Note",
                                  layout=widgets.Layout(width="100%"))  # (the default 300 px cuts the placeholder)
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
            widgets.HBox([self._pair, self._highlight], layout=widgets.Layout(align_items="center")),
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
        if self.session.waiting:
            self._say_waiting()
            return None
        if self.session.done:
            self._say("Nothing left to label.")
            return None
        try:
            label = self.session.choose(side, note=self._note.value)
        except StoreUnavailable as error:
            self._lost(error)
            return None
        self._note.value = ""
        self._render()
        if self.session.waiting:  # stored, but the next pair could not be fetched
            self._lost(None)
        else:
            self._say(f"Saved: {_SAID[side]} (pair {label.pair_id}).")
        return label

    def _undo_last(self) -> None:
        dropped = self.session.discard_pending()
        if dropped is not None:
            self._render()
            self._say(f"Dropped your unsaved label of pair {dropped.shown.id}; label it again when you like.")
            return
        try:
            label = self.session.undo()
        except StoreUnavailable as error:
            self._say(f"Can't undo now: {html.escape(str(error))}. Try again in a moment.")
            return
        self._render()
        self._say("Nothing to undo." if label is None else f"Undid your label of pair {label.pair_id}.")

    # ------------------------------------------------------------------ a store that stopped answering
    def _lost(self, error: StoreUnavailable | None) -> None:
        """Say what waits, and retry on a background thread until the store answers."""
        self._render()
        self._say_waiting(error)
        if self._retrier is None or not self._retrier.is_alive():
            self._retrier = threading.Thread(target=self._retry_until_saved, name="rlhfw-store-retry", daemon=True)
            self._retrier.start()

    def _say_waiting(self, error: BaseException | None = None, tries: int = 0) -> None:
        pending: PendingLabel | None = self.session.pending
        why = f" ({html.escape(str(error))})" if error is not None else ""
        again = f", {tries} tries so far" if tries else ""
        if pending is not None:
            self._say(
                f"⚠ The label store is not answering{why}. Your label of pair {pending.shown.id} "
                f"({_SAID_CHOICE[pending.choice]}) is kept and will be saved as soon as it answers — retrying "
                f"every {self._retry_every_s:g} s{again}. Undo drops it."
            )
        else:
            self._say(f"⚠ Your label is saved, but the next pair can't be fetched: the label store is not "
                      f"answering{why}. Retrying every {self._retry_every_s:g} s{again}.")

    def _retry_until_saved(self) -> None:
        """Background thread: `session.retry()` every `retry_every_s` until nothing waits or the panel closes."""
        tries = 0
        while self.session.waiting and not self._closed.wait(self._retry_every_s):
            pending = self.session.pending
            tries += 1
            try:
                label = self.session.retry()
            except StoreUnavailable as error:
                self._say_waiting(error, tries)
                continue
            self._render()
            if self.session.waiting:
                self._say_waiting(None, tries)
            elif label is not None and pending is not None:
                self._say(f"The store is back: saved your label of pair {label.pair_id} "
                          f"({_SAID_CHOICE[pending.choice]}).")
            else:
                self._say("The store is back.")

    def _on_annotator(self, change: dict[str, Any]) -> None:
        name = change["new"].strip()
        if not name:
            self._annotator.value = change["old"]
            self._say("The annotator name can't be empty.")
            return
        try:
            session = LabelingSession(self.store, name, **self._session_options)
        except StoreUnavailable as error:
            self._annotator.value = change["old"]
            self._say(f"Can't switch annotator now: {html.escape(str(error))}.")
            return
        self.session.close()
        self.session = session
        self._render()
        self._say(f"Labeling as {html.escape(name)}.")

    # ------------------------------------------------------------------ output
    def _render(self) -> None:
        try:
            self._progress_seen = self.session.progress
        except StoreUnavailable:
            pass  # show the last counts the store gave
        done, total = self._progress_seen
        self._progress.max = max(total, 1)
        self._progress.value = done
        self._count.value = f"{done} / {total} labeled"
        shown: ShownPair | None = self.session.current
        for button in self._choices.children:
            button.disabled = self.session.waiting
        for part in (self._pair, self._highlight, self._prompt, self._responses, self._choices):
            _hide(part, shown is None)
        _hide(self._done, shown is not None)
        if shown is None and self.session.waiting:
            self._done.value = "<b>Waiting for the label store</b> to fetch your next pair…"
            return
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
        self._render_answers()

    def _render_answers(self) -> None:
        """Both answers of the pair on screen, their differences marked while **highlight differences** is on."""
        shown: ShownPair | None = self.session.current
        if shown is None:
            return
        left, right = diff_html(shown.left, shown.right) if self._highlight.value else (None, None)
        self._left.value = _side_html("A", shown.left_source, shown.left, left)
        self._right.value = _side_html("B", shown.right_source, shown.right, right)

    def _say(self, message: str) -> None:
        self._status.value = message

    def _ipython_display_(self) -> None:
        display_with_hint(self, RELOAD_HINT)

    def close(self) -> None:
        """Close the widget and its parts, its session and (if the panel opened it) the store."""
        if not hasattr(self, "_closed"):  # __init__ failed before the panel was built (ipywidgets closes on __del__)
            super().close()
            return
        self._closed.set()
        if self._retrier is not None:
            self._retrier.join()
        self.session.close()
        if self._owns_store:
            self.store.close()
        _close_tree(self.children)
        super().close()


def _close_tree(children: tuple[widgets.Widget, ...]) -> None:
    for child in children:
        _close_tree(getattr(child, "children", ()))
        child.close()

