"""LabelingPanel without a browser: keys and clicks reach the store, sides un-randomised, escaping holds."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import ipywidgets as widgets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_widgets.labeling import LabelingPanel, PreferenceStore
from rlhf_widgets.labeling.widget import _ESM, RELOAD_HINT, blank_reason, diff_html

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


class _TextBoxes(HTMLParser):
    """Each piece of text in an HTML fragment, with the inline styles of the elements around it."""

    VOID = {"br", "img", "hr", "input", "meta", "link"}

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.open: list[str] = []  # the style attribute of every open element, outermost first
        self.texts: list[tuple[str, list[str]]] = []
        self.feed(fragment)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.open.append(dict(attrs).get("style") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.texts.append((data, list(self.open)))


def _bounded(styles: list[str]) -> bool:
    """Inside an element at most 30em tall that scrolls vertically."""
    for style in styles:
        rules = dict(rule.split(":", 1) for rule in style.replace(" ", "").split(";") if rule)
        height = re.fullmatch(r"([\d.]+)em", rules.get("max-height", ""))
        if height and float(height.group(1)) <= 30 and rules.get("overflow-y") in ("auto", "scroll"):
            return True
    return False


def marks(fragment: str) -> list[str]:
    return re.findall(r"<mark>(.*?)</mark>", fragment)


def test_a_long_answer_and_prompt_scroll_inside_bounded_boxes(tmp_path: Path) -> None:
    long_answer = "\n".join(f"line {i}: " + "word " * 20 for i in range(50))  # ~5,000 characters
    assert len(long_answer) > 5000
    with PreferenceStore(tmp_path / "long.sqlite") as store:
        store.add_pairs([{"prompt": "p " * 3000, "response_a": long_answer, "response_b": "short"}])
        for highlight in (False, True):
            panel = LabelingPanel(store, highlight_differences=highlight)
            for css_class in ("rlhfw-left", "rlhfw-right", "rlhfw-prompt"):
                texts = _TextBoxes(by_class(panel, css_class).value).texts
                body = [(text, styles) for text, styles in texts if text not in ("A", "B")]  # not the titles
                assert body, css_class
                assert all(_bounded(styles) for _, styles in body), css_class
            shown = "".join(text for text, _ in _TextBoxes(by_class(panel, "rlhfw-left").value).texts)
            shown += "".join(text for text, _ in _TextBoxes(by_class(panel, "rlhfw-right").value).texts)
            assert long_answer.replace("\n", "") in shown  # all of it is there, to scroll to
            panel.close()


def test_highlight_marks_exactly_the_differing_number_and_escapes(tmp_path: Path) -> None:
    template = "Your order #{} ships <script>alert(1)</script> on Monday.\nThanks & bye"
    with PreferenceStore(tmp_path / "diff.sqlite") as store:
        store.add_pairs([{"prompt": "p", "response_a": template.format(12345), "response_b": template.format(12346)}])
        panel = panel_showing(store, swapped=False, highlight_differences=True)
        left, right = by_class(panel, "rlhfw-left").value, by_class(panel, "rlhfw-right").value
        assert marks(left) == ["12345"] and marks(right) == ["12346"]
        for value in (left, right):
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in value and "<script" not in value
            assert "Thanks &amp; bye" in value and "Monday.<br>Thanks" in value
        panel.close()


def test_differing_markup_is_marked_escaped() -> None:
    left, right = diff_html("say <script>x</script> now", "say <b>y</b> now")
    assert left == "say &lt;<mark>script</mark>&gt;<mark>x</mark>&lt;/<mark>script</mark>&gt; now"
    assert right == "say &lt;<mark>b</mark>&gt;<mark>y</mark>&lt;/<mark>b</mark>&gt; now"
    left, right = diff_html("<script>", "<script>!")
    assert (left, right) == ("&lt;script&gt;", "&lt;script&gt;<mark>!</mark>")


def test_identical_answers_mark_nothing_and_disjoint_ones_mark_everything() -> None:
    assert diff_html("same\ntext", "same\ntext") == ("same<br>text", "same<br>text")
    assert diff_html("abc", "xyz") == ("<mark>abc</mark>", "<mark>xyz</mark>")
    assert diff_html("", "new words") == ("", "<mark>new words</mark>")


def test_a_changed_phrase_is_one_mark_and_unchanged_spaces_around_it_are_not() -> None:
    left, right = diff_html("we ship the red box today", "we ship one blue crate today")
    assert left == "we ship <mark>the red box</mark> today"
    assert right == "we ship <mark>one blue crate</mark> today"
    left, right = diff_html("a\nb", "x\ny")  # a line break between changes is marked with them
    assert (left, right) == ("<mark>a<br>b</mark>", "<mark>x<br>y</mark>")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab <>&\"'\n\r#1 ")), max_size=40),
       st.text(alphabet=st.sampled_from(list("ab <>&\"'\n\r#2 ")), max_size=40))
def test_diff_html_is_the_escaped_text_with_marks_only(left: str, right: str) -> None:
    for original, fragment in zip((left, right), diff_html(left, right), strict=True):
        plain = fragment.replace("<mark>", "").replace("</mark>", "").replace("<br>", "\n")
        assert "<" not in plain and ">" not in plain  # nothing of the model's is markup
        assert html.unescape(plain) == original.replace("\r\n", "\n")


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("\u200b\u200b\u200b", "only invisible characters: U+200B ×3"),
    ("\u200c\u200d\u2060\ufeff", "only invisible characters: U+200C ×1, U+200D ×1, U+2060 ×1, U+FEFF ×1"),
    ("\u200b \u200b", "only invisible characters: U+200B ×2, U+0020 ×1"),
    ("  \n\t", "only whitespace: U+0020 ×2, U+000A ×1, U+0009 ×1"),
    ("\u00a0\u3000", "only whitespace: U+00A0 ×1, U+3000 ×1"),
    ("\u3164\u2800", "only invisible characters: U+3164 ×1, U+2800 ×1"),
    ("a\u200b", None),
    (".", None),
])
def test_blank_reason(text: str, reason: str | None) -> None:
    assert blank_reason(text) == reason


def test_an_invisible_answer_is_flagged_and_can_still_be_chosen(tmp_path: Path) -> None:
    with PreferenceStore(tmp_path / "blank.sqlite") as store:
        store.add_pairs([{"prompt": "p", "response_a": "\u200b\u200b\u200b", "response_b": "a real answer"},
                         {"prompt": "q", "response_a": "\ufeff\u2060", "response_b": "<b>x</b>"}])
        for highlight in (False, True):
            panel = panel_showing(store, swapped=False, highlight_differences=highlight)
            left, right = by_class(panel, "rlhfw-left").value, by_class(panel, "rlhfw-right").value
            assert "blank answer (only invisible characters: U+200B ×3)" in left
            assert "ZERO WIDTH SPACE" in left  # named on hover
            assert "blank answer" not in right and "a real answer" in right
            panel.close()
        panel = panel_showing(store, swapped=False)
        by_class(panel, "rlhfw-btn-a").click()
        assert choices(store) == [(1, "a")]
        both = by_class(panel, "rlhfw-left").value + by_class(panel, "rlhfw-right").value
        assert "blank answer (only invisible characters: U+FEFF ×1, U+2060 ×1)" in both and "<b>x" not in both
        panel.close()


def test_the_highlight_toggle_re_renders_both_answers(tmp_path: Path) -> None:
    with PreferenceStore(tmp_path / "toggle.sqlite") as store:
        store.add_pairs([{"prompt": "p", "response_a": "it costs 5 dollars", "response_b": "it costs 7 dollars"},
                         {"prompt": "q", "response_a": "red fox", "response_b": "red cat"}])
        panel = LabelingPanel(store)
        toggle = by_class(panel, "rlhfw-highlight")
        left, right = by_class(panel, "rlhfw-left"), by_class(panel, "rlhfw-right")
        assert toggle.value is False and "<mark>" not in left.value + right.value
        toggle.value = True
        assert sorted(marks(left.value) + marks(right.value)) == ["5", "7"]
        panel._handle_keystroke({"key": "3"})  # the next pair is drawn marked too
        assert sorted(marks(left.value) + marks(right.value)) == ["cat", "fox"]
        toggle.value = False
        assert "<mark>" not in left.value + right.value and "red fox" in left.value + right.value
        for _ in range(2):
            panel._handle_keystroke({"key": "3"})
        toggle.value = True  # nothing on screen: nothing to draw, no error
        assert not visible(toggle) and "All done" in by_class(panel, "rlhfw-done").value
        panel.close()


def test_a_panel_made_again_resumes_at_the_next_unlabeled_pair(tmp_path: Path) -> None:
    """A page reload loses the panel's output; re-running its cell must carry on where the labels stop."""
    path = tmp_path / "resume.sqlite"
    with PreferenceStore(path) as store:
        store.add_pairs(make_rows(4))
    panel = LabelingPanel(path, annotator="ann")
    panel._handle_keystroke({"key": "1"})
    panel._handle_keystroke({"key": "0"})
    panel.close()  # the page is gone (the kernel may or may not have closed the widget)

    again = LabelingPanel(path, annotator="ann")
    assert again.session.current.id == 3 and by_class(again, "rlhfw-count").value == "2 / 4 labeled"
    assert by_class(again, "rlhfw-pair").value == "<b>Pair 3</b>"
    by_class(again, "rlhfw-btn-undo").click()  # reaches the label made before the reload
    assert again.session.current.id == 2 and "Undid your label of pair 2" in by_class(again, "rlhfw-status").value
    again._handle_keystroke({"key": "2"})
    again.close()
    with PreferenceStore(path) as store:
        assert store.progress("ann") == (2, 4) and [lbl.pair_id for lbl in store.labels("ann")] == [1, 2]


def test_a_panel_made_again_while_the_old_one_lives_resumes_too(store: PreferenceStore) -> None:
    """The old panel's widget lives on in the kernel after a reload; the new one on the same store must not
    show the pair the old one already labeled."""
    old = LabelingPanel(store)
    old._handle_keystroke({"key": "1"})
    new = LabelingPanel(store)
    assert new.session.current.id == 2 == old.session.current.id
    new._handle_keystroke({"key": "3"})
    assert [pair_id for pair_id, _ in choices(store)] == [1, 2] and choices(store)[1] == (2, "tie")
    old.close()
    new.close()


def test_a_line_that_survives_a_page_reload_is_displayed_with_the_panel(store: PreferenceStore,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """After a reload of a notebook saved without widget state the panel's widgets are gone ("model not found"); a
    plain output displayed with them is not, and it says to re-run the cell."""
    import IPython.display

    shown: list[tuple] = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.append(objs))
    panel = LabelingPanel(store)
    panel._ipython_display_()
    (view,), (hint,) = shown
    assert view["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.model_id
    assert hint["text/plain"] == RELOAD_HINT and html.escape(RELOAD_HINT) in hint["text/html"]
    assert not any(key.startswith("application/vnd.jupyter.widget") for key in hint)
    assert "re-run" in RELOAD_HINT
    assert not [w for w in descendants(panel) if RELOAD_HINT in str(getattr(w, "value", ""))]  # not twice
    panel.close()


def test_the_note_field_spans_the_panel(store: PreferenceStore) -> None:
    """At ipywidgets' default text width (300 px, 80 of them the description) the placeholder was cut."""
    panel = LabelingPanel(store)
    note = by_class(panel, "rlhfw-note")
    assert note.layout.width == "100%" and note.placeholder == "optional note, saved with the label"
    panel.close()
