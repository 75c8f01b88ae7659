"""LabelingPanel without a browser: keys and clicks reach the store, sides un-randomised, escaping holds."""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as widgets
import pytest

from rlhf_widgets.labeling import LabelingPanel, PreferenceStore
from rlhf_widgets.labeling.widget import _ESM

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "**bold**",
    "# heading",
    "[x](javascript:alert(1))",
]


def make_rows(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "response_a": f"a{i}", "response_b": f"b{i}",
             "metadata": {"a": {"model": "sft"}, "b": {"model": "ppo"}}} for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    with PreferenceStore(tmp_path / "labels.sqlite") as s:
        s.add_pairs(make_rows(3))
        yield s


def panel_showing(store: PreferenceStore, swapped: bool, **kwargs) -> LabelingPanel:
    """A panel whose first pair is displayed swapped (or not): the first seed that does it."""
    for seed in range(100):
        panel = LabelingPanel(store, seed=seed, **kwargs)
        if panel.session.current.swapped == swapped:
            return panel
        panel.close()
    raise AssertionError("no seed in 0..99 gives that side order")


def descendants(widget: widgets.Widget) -> list[widgets.Widget]:
    out = [widget]
    for child in getattr(widget, "children", ()):
        out += descendants(child)
    return out


def by_class(panel: LabelingPanel, css_class: str) -> widgets.DOMWidget:
    found = [w for w in descendants(panel) if css_class in w._dom_classes]
    assert len(found) == 1, f"{css_class}: {len(found)} widgets"
    return found[0]


def visible(widget: widgets.DOMWidget) -> bool:
    return widget.layout.display != "none"


def choices(store: PreferenceStore, annotator: str = "human") -> list[tuple[int, str]]:
    return [(lbl.pair_id, lbl.choice) for lbl in store.labels(annotator)]


def test_every_part_has_a_stable_class(store: PreferenceStore) -> None:
    panel = LabelingPanel(store)
    assert "rlhfw-panel" in panel._dom_classes
    for css_class in ("rlhfw-pair", "rlhfw-prompt", "rlhfw-left", "rlhfw-right", "rlhfw-choices", "rlhfw-btn-a",
                      "rlhfw-btn-b", "rlhfw-btn-tie", "rlhfw-btn-skip", "rlhfw-btn-undo", "rlhfw-key-target",
                      "rlhfw-progress", "rlhfw-count", "rlhfw-annotator", "rlhfw-note", "rlhfw-legend",
                      "rlhfw-done", "rlhfw-status"):
        by_class(panel, css_class)
    assert "Backspace" in by_class(panel, "rlhfw-legend").value
    panel.close()


@pytest.mark.parametrize(("key", "stored"), [
    ("1", "a"), ("ArrowLeft", "a"), ("2", "b"), ("ArrowRight", "b"), ("3", "tie"), ("0", "skip"),
])
def test_keys_record_through_the_store(store: PreferenceStore, key: str, stored: str) -> None:
    panel = panel_showing(store, swapped=False)
    panel._handle_keystroke({"key": key})
    assert choices(store) == [(1, stored)]
    assert by_class(panel, "rlhfw-count").value == "1 / 3 labeled"
    assert by_class(panel, "rlhfw-progress").value == 1
    panel.close()


def test_pair_header_tells_a_new_pair_of_the_same_prompt_apart(tmp_path: Path) -> None:
    """Pairs among several answers share a prompt and often the side shown: the header must change."""
    with PreferenceStore(tmp_path / "shared.sqlite") as store:
        store.add_pairs([{"prompt": "p", "response_a": "x", "response_b": "y"},
                         {"prompt": "p", "response_a": "x", "response_b": "z"},
                         {"prompt": "q", "response_a": "x", "response_b": "y"}])
        panel = LabelingPanel(store)
        header = by_class(panel, "rlhfw-pair")
        assert header.value == "<b>Pair 1</b>"
        panel._handle_keystroke({"key": "1"})
        assert header.value == "<b>Pair 2</b> — same prompt, other answers"
        panel._on_annotator({"old": "human", "new": "human"})  # a re-render of the same pair keeps it
        assert header.value == "<b>Pair 2</b> — same prompt, other answers"
        panel._handle_keystroke({"key": "1"})
        assert header.value == "<b>Pair 3</b>"
        panel._handle_keystroke({"key": "Backspace"})
        assert header.value == "<b>Pair 2</b>"  # came back from another prompt
        panel.close()


def test_other_keys_do_nothing(store: PreferenceStore) -> None:
    panel = LabelingPanel(store)
    for key in ("a", "Enter", "4", " "):
        panel._handle_keystroke({"key": key})
    panel._handle_keystroke({})
    assert store.labels(include_history=True) == []
    panel.close()


def test_swapped_pair_left_button_records_b(store: PreferenceStore) -> None:
    panel = panel_showing(store, swapped=True)
    left_html = by_class(panel, "rlhfw-left").value
    assert "b0" in left_html and "ppo" in left_html and "a0" not in left_html
    by_class(panel, "rlhfw-btn-a").click()
    assert choices(store) == [(1, "b")] and store.labels()[0].shown_swapped
    panel.close()


def test_buttons_and_note(store: PreferenceStore) -> None:
    panel = panel_showing(store, swapped=False)
    by_class(panel, "rlhfw-note").value = "clearer"
    by_class(panel, "rlhfw-btn-b").click()
    assert by_class(panel, "rlhfw-note").value == ""
    by_class(panel, "rlhfw-btn-tie").click()
    by_class(panel, "rlhfw-btn-skip").click()
    assert choices(store) == [(1, "b"), (2, "tie"), (3, "skip")] and store.labels()[0].note == "clearer"
    panel.close()


def test_undo_by_button_and_backspace(store: PreferenceStore) -> None:
    panel = LabelingPanel(store)
    panel._handle_keystroke({"key": "3"})
    panel._handle_keystroke({"key": "3"})
    panel._handle_keystroke({"key": "Backspace"})
    assert choices(store) == [(1, "tie")] and panel.session.current.id == 2
    by_class(panel, "rlhfw-btn-undo").click()
    assert choices(store) == [] and panel.session.current.id == 1
    by_class(panel, "rlhfw-btn-undo").click()
    assert "Nothing to undo" in by_class(panel, "rlhfw-status").value
    panel.close()


def test_done_state_when_the_queue_is_empty(store: PreferenceStore) -> None:
    panel = LabelingPanel(store)
    done = by_class(panel, "rlhfw-done")
    assert not visible(done) and visible(by_class(panel, "rlhfw-left"))
    for _ in range(3):
        panel._handle_keystroke({"key": "1"})
    assert visible(done) and "All done" in done.value
    assert not visible(by_class(panel, "rlhfw-prompt")) and not visible(by_class(panel, "rlhfw-choices"))
    panel._handle_keystroke({"key": "1"})  # nothing to label: a message, not an error
    assert "Nothing left" in by_class(panel, "rlhfw-status").value and len(store.labels()) == 3
    panel._handle_keystroke({"key": "Backspace"})
    assert not visible(done) and panel.session.current.id == 3
    panel.close()


def test_model_text_is_escaped_and_never_markup(tmp_path: Path) -> None:
    with PreferenceStore(tmp_path / "hostile.sqlite") as store:
        for text in HOSTILE:
            store.add_pairs([{"prompt": [{"role": "user<b>", "content": text}],
                              "response_a": text + "\nline 2", "response_b": text,
                              "metadata": {"a": {"model": "<i>m</i>"}}}])
        panel = LabelingPanel(store)
        for text in HOSTILE:
            rendered = [by_class(panel, c).value for c in ("rlhfw-prompt", "rlhfw-left", "rlhfw-right")]
            for value in rendered:
                assert html.escape(text) in value
                for raw in ("<script", "<img", "<strong", "<h1", "<a ", "<i>", "<b>", "href"):
                    assert raw not in value
            assert any(html.escape(text) + "<br>line 2" in value for value in rendered)
            panel._handle_keystroke({"key": "0"})
        panel.close()


def test_annotator_field_switches_the_session(store: PreferenceStore) -> None:
    panel = LabelingPanel(store)
    panel._handle_keystroke({"key": "1"})
    name = by_class(panel, "rlhfw-annotator")
    name.value = "alice"
    assert panel.session.annotator == "alice" and panel.session.current.id == 1
    assert by_class(panel, "rlhfw-count").value == "0 / 3 labeled"
    panel._handle_keystroke({"key": "2"})
    assert len(store.labels("alice")) == 1 and len(store.labels("human")) == 1
    name.value = "   "
    assert name.value == "alice" and "can't be empty" in by_class(panel, "rlhfw-status").value
    panel.close()


def test_browser_key_messages_reach_the_handler(store: PreferenceStore) -> None:
    panel = panel_showing(store, swapped=False)
    by_class(panel, "rlhfw-key-target")._handle_custom_msg({"key": "2"}, [])
    assert choices(store) == [(1, "b")]
    panel.close()


def test_key_listener_stays_inside_the_panel() -> None:
    assert "rlhfw-panel" in _ESM and "model.send" in _ESM
    assert "document.addEventListener" not in _ESM and "window.addEventListener" not in _ESM


def test_panel_opens_and_closes_a_store_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "own.sqlite"
    with PreferenceStore(path) as store:
        store.add_pairs(make_rows(1))
    panel = LabelingPanel(path, annotator="ann", evaluation=True)
    assert "sft" not in by_class(panel, "rlhfw-left").value + by_class(panel, "rlhfw-right").value
    panel._handle_keystroke({"key": "1"})
    panel.close()
    with PreferenceStore(path) as store:
        assert store.progress("ann") == (1, 1)
