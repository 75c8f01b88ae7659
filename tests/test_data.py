"""Preference data in and out: every source kind and row format, malformed rows, save → load."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rlhf_widgets.runtime.data import (
    PREFERENCE_FEATURES,
    DataWarning,
    LoadReport,
    PreferenceDataError,
    PromptDataError,
    RowProblem,
    as_messages,
    data_file,
    last_user_content,
    load_preferences,
    load_prompts,
    one_pair_per_prompt,
    save_preferences,
    split_by_prompt,
)
from rlhf_widgets.sandbox import make_prompts

FIXTURES = Path(__file__).parent / "fixtures" / "preferences"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def fixture_rows(name: str) -> list[dict]:
    return read_jsonl(FIXTURES / name)


EXPECTED = fixture_rows("expected.jsonl")  # two single-turn pairs, then one multi-turn pair


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    """A single-turn row in the output format."""
    return {"prompt": user(prompt), "chosen": assistant(chosen), "rejected": assistant(rejected)}


# ------------------------------------------------------------------------------------ formats
@pytest.mark.parametrize(
    ("name", "row_format", "n"),
    [
        ("standard.jsonl", "standard", 2),
        ("implicit_prompt.jsonl", "implicit_prompt", 2),
        ("conversational.jsonl", "conversational", 3),
        ("conversational_implicit.jsonl", "conversational", 3),
        ("string_prompt.jsonl", "conversational", 2),
        ("hh_rlhf.jsonl", "hh_rlhf", 3),
    ],
)
def test_every_format_loads_to_the_same_conversational_rows(name: str, row_format: str, n: int) -> None:
    dataset, report = load_preferences(FIXTURES / name, return_report=True)
    assert dataset.to_list() == EXPECTED[:n]
    assert dataset.features == PREFERENCE_FEATURES
    assert report == LoadReport(str(FIXTURES / name), n, {row_format: n}, ())


def test_formats_are_detected_per_row_and_extra_columns_kept_only_on_request() -> None:
    dataset, report = load_preferences(FIXTURES / "mixed.json", return_report=True)
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert dataset.to_list() == EXPECTED
    assert report.formats == {"standard": 1, "hh_rlhf": 1, "conversational": 1}
    kept = load_preferences(FIXTURES / "mixed.json", keep_columns=["source"])
    assert kept["source"] == ["standard", "hh_rlhf", "conversational"]


def test_hh_transcript_prompt_with_bare_answers() -> None:
    row = {"prompt": "\n\nHuman: Where is order 12?\n\nAssistant:", "chosen": " Today.", "rejected": " No."}
    assert load_preferences([row]).to_list() == [pair("Where is order 12?", "Today.", "No.")]


def test_implicit_prompt_splits_at_the_last_shared_assistant_marker() -> None:
    prompt = "Order 12?\n\nAssistant: Shipped.\n\nUser: And 13?"
    row = {"chosen": f"{prompt}\n\nAssistant: Sure, ok.", "rejected": f"{prompt}\n\nAssistant: Sure, no."}
    assert load_preferences([row]).to_list() == [pair(prompt, "Sure, ok.", "Sure, no.")]


def test_conversational_rows_keep_system_messages_and_drop_extra_message_keys() -> None:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "ann"}]
    row = {"prompt": prompt, "chosen": assistant("Hello!"), "rejected": "Go away."}
    assert load_preferences([row]).to_list() == [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "chosen": assistant("Hello!"), "rejected": assistant("Go away.")}
    ]


def test_standard_text_is_kept_verbatim() -> None:
    row = {"prompt": "  <b>Hi</b>\n", "chosen": " **bold** ", "rejected": "\tplain"}
    assert load_preferences([row]).to_list() == [pair("  <b>Hi</b>\n", " **bold** ", "\tplain")]


@pytest.mark.parametrize(
    ("row", "row_format"),
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "standard"),
        ({"chosen": "p a", "rejected": "p b"}, "implicit_prompt"),
        ({"prompt": user("p"), "chosen": assistant("a"), "rejected": assistant("b")}, "conversational"),
        ({"chosen": "\n\nHuman: p\n\nAssistant: a", "rejected": "\n\nHuman: p\n\nAssistant: b"}, "hh_rlhf"),
    ],
)
def test_format_argument_accepts_its_own_rows_and_rejects_others(row: dict, row_format: str) -> None:
    assert len(load_preferences([row], format=row_format)) == 1
    other = "hh_rlhf" if row_format == "standard" else "standard"
    with pytest.raises(PreferenceDataError, match=rf"^row 0: in {row_format} format, not {other}"):
        load_preferences([row], format=other, on_error="raise")


# ------------------------------------------------------------------------------------ sources
def test_json_file_as_dict_of_columns_and_as_json_lines(tmp_path: Path) -> None:
    rows = fixture_rows("standard.jsonl")
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    (tmp_path / "columns.json").write_text(json.dumps(columns), encoding="utf-8")
    shutil.copy(FIXTURES / "standard.jsonl", tmp_path / "lines.json")
    for name in ("columns.json", "lines.json"):
        assert load_preferences(tmp_path / name).to_list() == EXPECTED[:2]


def test_jsonl_gz_and_parquet_files(tmp_path: Path) -> None:
    gz = tmp_path / "hh.jsonl.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "hh_rlhf.jsonl").read_bytes()))
    conversations = pa.Table.from_pylist(fixture_rows("conversational_implicit.jsonl"))
    pq.write_table(conversations, tmp_path / "conv.parquet")
    assert load_preferences(gz).to_list() == EXPECTED
    assert load_preferences(str(tmp_path / "conv.parquet")).to_list() == EXPECTED


def test_dataset_dataset_dict_and_list_sources() -> None:
    rows = fixture_rows("hh_rlhf.jsonl")
    split = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:1]), "test": datasets.Dataset.from_list(rows)}
    )
    assert load_preferences(rows).to_list() == EXPECTED
    assert load_preferences(datasets.Dataset.from_list(rows)).to_list() == EXPECTED
    assert load_preferences(split, split="test").to_list() == EXPECTED
    with pytest.raises(ValueError, match=r"split 'validation' not found; available: \['test', 'train'\]"):
        load_preferences(split, split="validation")


def test_dataset_without_any_preference_column_reports_every_row() -> None:
    dataset, report = load_preferences(
        datasets.Dataset.from_dict({"text": ["a", "b"]}), on_error="skip", return_report=True
    )
    assert len(dataset) == 0
    assert [str(p) for p in report.skipped] == ["row 0: 'chosen' is missing", "row 1: 'chosen' is missing"]


def test_save_to_disk_directories(tmp_path: Path) -> None:
    rows = fixture_rows("conversational.jsonl")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "flat"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    assert load_preferences(tmp_path / "flat").to_list() == EXPECTED
    assert load_preferences(tmp_path / "dict", split="test").to_list() == EXPECTED


def test_hub_style_local_folder_with_splits(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(FIXTURES / "hh_rlhf.jsonl", tmp_path / "data" / "train.jsonl")
    hh_lines = (FIXTURES / "hh_rlhf.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "data" / "test.jsonl").write_text("".join(hh_lines[:2]), encoding="utf-8")  # same columns
    assert load_preferences(tmp_path).to_list() == EXPECTED
    assert load_preferences(str(tmp_path), split="test").to_list() == EXPECTED[:2]


def test_unreachable_hub_id_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"'nobody-here/no-prefs'.*Hub could not be reached") as err:
        load_preferences("nobody-here/no-prefs")
    assert err.value.__suppress_context__ and err.value.__cause__ is None


def test_unknown_hub_id_online_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(path: str, split: str) -> datasets.Dataset:
        raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(FileNotFoundError, match=r"'nobody-here/no-prefs' is not a local file or directory"):
        load_preferences("nobody-here/no-prefs")


def test_missing_local_file_is_not_mistaken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_preferences(tmp_path / "absent.jsonl")


def test_bad_arguments() -> None:
    rows = fixture_rows("standard.jsonl")
    with pytest.raises(ValueError, match="on_error"):
        load_preferences(rows, on_error="ignore")
    with pytest.raises(ValueError, match="format"):
        load_preferences(rows, format="ultrafeedback")
    with pytest.raises(ValueError, match=r"keep_columns cannot name \['prompt'\]"):
        load_preferences(rows, keep_columns=["prompt"])
    with pytest.raises(TypeError, match="got int"):
        load_preferences(3)


# ------------------------------------------------------------------------------------ malformed rows
GOOD = {"prompt": "Where is my parcel?", "chosen": "Let me check the tracking.", "rejected": "No idea."}
HH_ORDER = "\n\nHuman: Where is order 12?\n\nAssistant:"
NO_PROMPT = "'prompt' is missing, and 'chosen' and 'rejected' share no leading"
NOT_A_MESSAGE = "message 0 is not a {role, content} pair of strings"
NOT_TEXT = "must be a string or a list of messages, got"

MALFORMED = [
    ({"prompt": "p", "rejected": "r"}, "'chosen' is missing"),
    ({"prompt": "p", "chosen": "c", "rejected": None}, "'rejected' is missing"),
    ({"prompt": "p", "chosen": "c", "rejected": " \n"}, "'rejected' is empty"),
    ({"prompt": user("p"), "chosen": [], "rejected": assistant("r")}, "'chosen' is empty"),
    ({"prompt": user("p"), "chosen": assistant(""), "rejected": assistant("r")}, "'chosen' is empty"),
    ({"prompt": "", "chosen": "c", "rejected": "r"}, "'prompt' is empty"),
    ({"prompt": user(" "), "chosen": "c", "rejected": "r"}, "'prompt' is empty"),
    ({"chosen": HH_ORDER, "rejected": HH_ORDER + " It shipped."}, "'chosen' is empty"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "'rejected' is identical to 'chosen'"),
    ({"prompt": "p", "chosen": assistant("same"), "rejected": "same"}, "'rejected' is identical to 'chosen'"),
    ({"chosen": HH_ORDER + " Yes.", "rejected": HH_ORDER + "  Yes. "}, "'rejected' is identical to 'chosen'"),
    ({"chosen": "Sure thing", "rejected": "Nope"}, NO_PROMPT + " words"),
    ({"chosen": "Sure thing", "rejected": "Sure, no"}, NO_PROMPT + " words"),
    ({"chosen": assistant("a"), "rejected": assistant("b")}, NO_PROMPT + " messages"),
    ({"chosen": user("q1") + assistant("a"), "rejected": user("q2") + assistant("b")},
     "'rejected' continues a different conversation than 'chosen'"),
    ({"chosen": "\n\nHuman: q1\n\nAssistant: a", "rejected": "\n\nHuman: q2\n\nAssistant: b"},
     "'rejected' continues a different conversation than 'chosen'"),
    ({"prompt": "p", "chosen": assistant("a") + user("more?"), "rejected": assistant("b")},
     "'chosen' must end with an assistant message, not a user one"),
    ({"prompt": "p", "chosen": 42, "rejected": "r"}, f"'chosen' {NOT_TEXT} int"),
    ({"prompt": user("p")[0], "chosen": "c", "rejected": "r"}, f"'prompt' {NOT_TEXT} dict"),
    ({"prompt": "p", "chosen": ["c"], "rejected": "r"}, f"'chosen' {NOT_A_MESSAGE}"),
    ({"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": None}]},
     f"'rejected' {NOT_A_MESSAGE}"),
    ({"prompt": user("p") + [{"role": "tool", "content": "{}"}], "chosen": "c", "rejected": "r"},
     "'prompt' message 1 has role 'tool', not one of system/user/assistant"),
    (7, "not a mapping of fields (got int)"),
]


@pytest.mark.parametrize(("row", "reason"), MALFORMED)
def test_malformed_row_raises_with_its_index_and_field(row: object, reason: str) -> None:
    with pytest.raises(PreferenceDataError) as err:
        load_preferences([GOOD, GOOD, row, GOOD], on_error="raise")
    assert str(err.value).startswith(f"row 2: {reason}")
    assert err.value.index == 2
    assert isinstance(err.value, ValueError)


def test_invalid_json_line_names_its_row(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=r"^row 2: not valid JSON \(.*; line 4 of broken.jsonl\)"):
        load_preferences(path, on_error="raise")


def test_skip_drops_malformed_rows_and_reports_them() -> None:
    rows = [GOOD, {"prompt": "p", "chosen": "c"}, GOOD, {"prompt": "p", "chosen": "c", "rejected": ""},
            {"prompt": "p", "chosen": "c", "rejected": "  "}, fixture_rows("hh_rlhf.jsonl")[2]]
    dataset, report = load_preferences(rows, on_error="skip", return_report=True)
    assert dataset.to_list() == [load_preferences([GOOD])[0]] * 2 + [EXPECTED[2]]
    assert report.skipped == (
        RowProblem(1, "rejected", "is missing"), RowProblem(3, "rejected", "is empty"),
        RowProblem(4, "rejected", "is empty"),
    )
    assert (report.rows_read, report.kept, report.formats) == (6, 3, {"standard": 2, "hh_rlhf": 1})
    assert report.reasons() == {"'rejected' is empty": 2, "'rejected' is missing": 1}
    assert str(report) == (
        "list: kept 3 of 6 rows. Skipped 3: 2× 'rejected' is empty (rows 3, 4); 1× 'rejected' is missing (row 1)"
    )


# ------------------------------------------------------------------------------------ save → load
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_save_then_load_is_identical(tmp_path: Path, suffix: str) -> None:
    rows = [{**row, "annotator": name} for row, name in zip(EXPECTED, ["ann", "bo", "cy"], strict=True)]
    rows[0]["prompt"] = [{"role": "system", "content": "Be kind."}, *rows[0]["prompt"]]
    dataset = datasets.Dataset.from_list(rows, features=datasets.Features(
        {**PREFERENCE_FEATURES, "annotator": datasets.Value("string")}
    ))
    path = save_preferences(dataset, tmp_path / f"pairs{suffix}")
    loaded = load_preferences(path, keep_columns=["annotator"])
    assert loaded.to_list() == dataset.to_list()
    assert loaded.features == dataset.features


def test_save_normalises_other_formats_first(tmp_path: Path) -> None:
    standard = datasets.Dataset.from_list(fixture_rows("standard.jsonl"))
    path = save_preferences(standard, tmp_path / "pairs.jsonl")
    assert read_jsonl(path) == EXPECTED[:2]


def test_save_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported file type"):
        save_preferences(datasets.Dataset.from_list(EXPECTED), tmp_path / "pairs.csv")


# arbitrary unicode (HTML, markdown, JSON-looking and line-separator characters included), not blank
TEXT = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["<script>alert(1)</script>", "**bold** _it_", '{"role": "x"}', "a\u2028b\x85c", "\r\n"]),
).filter(str.strip)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=TEXT, chosen=TEXT, rejected=TEXT)
def test_round_trip_of_arbitrary_text(
    tmp_path: Path, suffix: str, prompt: str, chosen: str, rejected: str
) -> None:
    assume(chosen != rejected)
    dataset = load_preferences([{"prompt": prompt, "chosen": chosen, "rejected": rejected}])
    loaded = load_preferences(save_preferences(dataset, tmp_path / f"pairs{suffix}"))
    assert loaded.to_list() == [pair(prompt, chosen, rejected)]


WORDS = st.text(st.characters(blacklist_categories=["Cs", "Z", "Cc"]), min_size=1, max_size=12)


@settings(max_examples=50, deadline=None)
@given(prompt_words=st.lists(WORDS, min_size=1, max_size=4), chosen=WORDS, rejected=WORDS)
def test_implicit_prompt_is_the_shared_words(prompt_words: list[str], chosen: str, rejected: str) -> None:
    assume(chosen[0] != rejected[0] and not prompt_words[0].startswith("Human:"))
    prompt = " ".join(prompt_words)
    row = {"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"}
    assert load_preferences([row]).to_list() == [pair(prompt, chosen, rejected)]


# ------------------------------------------------------------------------------------ prompt helpers
def test_as_messages_and_last_user_content() -> None:
    conversation = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    assert as_messages("hi") == user("hi")
    copied = as_messages(conversation)
    assert copied == conversation and copied[0] is not conversation[0]
    assert last_user_content("hi") == "hi"
    assert last_user_content(conversation) == "c"
    with pytest.raises(ValueError, match="no user message"):
        last_user_content(assistant("only me"))


def test_split_by_prompt_keeps_each_prompt_on_one_side() -> None:
    rows = [{"prompt": f"question {i // 3}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(60)]
    dataset = load_preferences(rows)  # 20 prompts, 3 pairs each
    split = split_by_prompt(dataset, 0.25, seed=1)
    train = {m[0]["content"] for m in split["train"]["prompt"]}
    test = {m[0]["content"] for m in split["test"]["prompt"]}
    assert len(test) == 5 and len(train) == 15 and not train & test
    assert len(split["test"]) == 15 and len(split["train"]) == 45
    assert split_by_prompt(dataset, 0.25, seed=1)["test"]["chosen"] == split["test"]["chosen"]  # seeded
    assert split_by_prompt(dataset, 0.25, seed=2)["test"]["chosen"] != split["test"]["chosen"]
    # no prompt column: a row split; a bad fraction names itself
    assert len(split_by_prompt(dataset.remove_columns("prompt"), 0.25)["test"]) == 15
    with pytest.raises(ValueError, match="test_size=1.5"):
        split_by_prompt(dataset, 1.5)
    firsts = one_pair_per_prompt(dataset)
    assert firsts["chosen"] == [[{"role": "assistant", "content": f"good {i}"}] for i in range(0, 60, 3)]


# ------------------------------------------------------------------------------------ the default call on messy data
MESSY_HH = FIXTURES / "hh_rlhf_messy.jsonl"  # HH transcripts: 5 usable rows, 2 of them parting before the last turn


def test_default_call_on_a_messy_hh_file_loads_the_rest_and_warns_what_it_skipped() -> None:
    with pytest.warns(DataWarning) as caught:
        dataset, report = load_preferences(MESSY_HH, return_report=True)
    assert len(caught) == 1
    assert [row["rejected"][0]["content"] for row in dataset] == [
        "Parcels are late sometimes.", "Only if they are unworn.", "Eventually.", "Try again later.", "Turn it up.",
    ]
    assert [problem.index for problem in report.skipped] == [1, 4, 5, 6, 8]
    assert report.reasons() == {
        "'chosen' is empty": 2, "'rejected' is empty": 1, "'rejected' is identical to 'chosen'": 1,
        "'rejected' continues a different conversation than 'chosen' from message 2 on "
        "(the two may part only at an assistant answer)": 1,
    }
    assert (report.rows_read, report.kept, report.shortened, report.formats) == (10, 5, (2, 9), {"hh_rlhf": 5})
    message = str(caught[0].message)
    assert message.startswith(f"{MESSY_HH}: kept 5 of 10 rows. Skipped 5: 2× 'chosen' is empty (rows 1, 8); ")
    assert "2 pairs part before their last turn: kept the first answers that differ, dropped the turns after them " \
           "(rows 2, 9)" in message
    assert "on_error='raise'" in message


def test_on_error_raise_stays_strict_and_says_how_to_go_on() -> None:
    with pytest.raises(PreferenceDataError, match=r"^row 1: 'chosen' is empty — .*on_error='warn'") as err:
        load_preferences(MESSY_HH, on_error="raise")
    assert (err.value.index, err.value.field) == (1, "chosen")


def test_skip_is_quiet(recwarn: pytest.WarningsRecorder) -> None:
    assert len(load_preferences(MESSY_HH, on_error="skip")) == 5
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]


def test_default_call_with_no_usable_row_raises_with_the_summary() -> None:
    rows = [{"question": "Where is my parcel?", "answer": "On its way."}] * 3
    with pytest.raises(ValueError, match=r"no preference pairs could be read from list: kept 0 of 3 rows\. "
                                         r"Skipped 3: 3× 'chosen' is missing \(rows 0, 1, 2\)"):
        load_preferences(rows)


def test_the_summary_lists_the_first_five_rows_per_reason() -> None:
    rows = [GOOD] + [{"prompt": "p", "chosen": "c", "rejected": ""}] * 7
    with pytest.warns(DataWarning, match=r"7× 'rejected' is empty \(rows 1, 2, 3, 4, 5, … 2 more\)"):
        load_preferences(rows)


# ------------------------------------------------------------------------------------ conversations that part early
def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {turn}" for i, turn in enumerate(turns))


def chat(*turns: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


@pytest.mark.parametrize(
    ("chosen", "rejected"),
    [
        (chat("q", "a1", "q2", "a2"), chat("q", "b1", "q2b", "b2")),  # part at the first answer
        (chat("q", "a", "q2", "a2", "q3", "a3"), chat("q", "a", "q2", "b2", "q3", "b3")),  # at a middle answer
        (chat("q", "a", "q2", "a2"), chat("q", "a", "q2", "b2")),  # at the last answer (the usual case)
        (chat("q", "a1", "q2", "a2"), chat("q", "b1")),  # one goes on, the other does not
    ],
)
def test_parting_conversations_follow_trls_extract_prompt(chosen: list[dict], rejected: list[dict]) -> None:
    trl_data_utils = pytest.importorskip("trl.data_utils")
    expected = trl_data_utils.extract_prompt({"chosen": chosen, "rejected": rejected})
    for row in ({"chosen": chosen, "rejected": rejected},
                {"chosen": hh(*(m["content"] for m in chosen)), "rejected": hh(*(m["content"] for m in rejected))}):
        dataset, report = load_preferences([row], return_report=True)
        assert dataset[0]["prompt"] == expected["prompt"]
        assert dataset[0]["chosen"] == expected["chosen"][:1] and dataset[0]["rejected"] == expected["rejected"][:1]
        assert report.shortened == (() if len(expected["chosen"]) == len(expected["rejected"]) == 1 else (0,))


def test_conversations_parting_at_a_user_turn_are_malformed() -> None:
    row = {"chosen": hh("q", "a", "q2", "a2"), "rejected": hh("q", "a", "other q2", "b2")}
    with pytest.raises(PreferenceDataError, match="^row 0: 'rejected' continues a different conversation than "
                                                  "'chosen' from message 2 on"):
        load_preferences([row], on_error="raise")


# ------------------------------------------------------------------------------------ bad files
def test_non_utf8_line_is_a_row_problem_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(good + b"\n\n" + '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}'.encode("latin-1")
                     + b"\n" + good + b"\n")
    with pytest.warns(DataWarning, match=r"line 3 is not UTF-8 \(byte 0xe9 at column 16\) of latin1\.jsonl"):
        assert len(load_preferences(path)) == 2
    with pytest.raises(PreferenceDataError, match=r"^row 1: line 3 is not UTF-8 \(byte 0xe9 at column 16\) of "
                                                  r"latin1\.jsonl; re-save the file as UTF-8"):
        load_preferences(path, on_error="raise")


def test_non_utf8_json_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n{"prompt": "p", "chosen": "na\xefve", "rejected": "b"}\n]')
    with pytest.raises(ValueError, match=r"latin1\.json: line 2 is not UTF-8 \(byte 0xef at column 30\); re-save"):
        load_preferences(path)


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert load_preferences(tmp_path / "bom.jsonl").to_list() == load_preferences([GOOD]).to_list()


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", b""), ("blank.jsonl", b"\n \n"),
                                                ("empty.json", b"[]"), ("empty.jsonl.gz", gzip.compress(b"", mtime=0))],
                         ids=["empty.jsonl", "blank.jsonl", "empty.json", "empty.jsonl.gz"])
def test_empty_file_is_an_error_not_zero_rows(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    for load in (load_preferences, load_prompts):
        with pytest.raises(ValueError, match=rf"{name} holds no rows; check the path"):
            load(tmp_path / name)


def free_local_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_fast_without_retries(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Online mode, but nothing answers: one refused connection, not ~23 s of retries and HTTP warnings."""
    import time

    endpoint = f"http://127.0.0.1:{free_local_port()}"  # closed port: connections are refused at once
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    for load, what in ((load_preferences, "preference"), (load_prompts, "prompt")):
        start = time.perf_counter()
        with pytest.raises(ConnectionError, match=rf"could not load {what} dataset 'nobody-here/no-data'.*"
                                                  "Hub could not be reached") as err:
            load("nobody-here/no-data")
        assert time.perf_counter() - start < 1.0
        assert "HF_HUB_OFFLINE=1" in err.value.__notes__[0]
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


# ------------------------------------------------------------------------------------ prompts
SANDBOX_TRAIN = [p.text for p in make_prompts(1000, seed=0)]


def test_prompts_from_a_list_of_strings_and_conversations() -> None:
    conversation = chat("Hi", "Hello! How can I help?", "Where is order 12?")
    prompts = load_prompts(["Where is my parcel?", conversation, chat("Only one user turn"),
                            [{"role": "system", "content": "Be brief."}, *chat("Hi")]])
    assert prompts == ["Where is my parcel?", conversation, "Only one user turn",
                       [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]


def test_prompt_only_and_conversational_rows_are_cut_after_the_last_user_turn() -> None:
    rows = [
        {"prompt": "plain"},
        {"prompt": chat("as messages")},
        {"messages": chat("q1", "a1", "q2", "a2")},  # a whole conversation: up to its last user turn
        {"prompt": "\n\nHuman: q\n\nAssistant: a\n\nHuman: q2\n\nAssistant:"},  # an HH transcript prompt
        {"question": "What is RLHF?"},
        {"instruction": "Summarise this.", "input": "A long text."},
        {"instruction": "Say hi.", "input": ""},
        {"query": "shipping costs"},
    ]
    prompts, report = load_prompts(rows, return_report=True)
    assert prompts == ["plain", "as messages", chat("q1", "a1", "q2"), chat("q", "a", "q2"), "What is RLHF?",
                       "Summarise this.\n\nA long text.", "Say hi.", "shipping costs"]
    assert report.formats == {"prompt": 3, "messages": 1, "question": 1, "instruction": 2, "query": 1}


def test_prompts_of_preference_datasets_in_every_format() -> None:
    for name in ("standard.jsonl", "implicit_prompt.jsonl", "conversational.jsonl", "conversational_implicit.jsonl",
                 "hh_rlhf.jsonl", "mixed.json"):
        prompts = load_prompts(FIXTURES / name)
        expected = [row["prompt"] for row in EXPECTED[:len(prompts)]]
        assert [as_messages(p) for p in prompts] == expected, name
        assert len(prompts) >= 2


def test_prompts_of_the_messy_hh_file_include_rows_with_empty_answers() -> None:
    with pytest.warns(DataWarning, match="kept 7 of 10 rows"):
        prompts, report = load_prompts(MESSY_HH, return_report=True)
    assert prompts[:3] == ["My parcel is late. Can you help?", "How do I change my delivery address?",
                           "Can I return shoes that don't fit?"]
    assert report.formats == {"preference:hh_rlhf": 7}  # the empty answer of row 1 does not hide its prompt
    # identical answers; parting at a user turn; no chosen text to read a prompt from
    assert [p.index for p in report.skipped] == [5, 6, 8]


def test_repeated_prompts_are_dropped_unless_asked_to_keep_them() -> None:
    rows = [{"prompt": "a", "chosen": f"x{i}", "rejected": f"y{i}"} for i in range(3)] + [{"prompt": "b"}]
    prompts, report = load_prompts(rows, return_report=True)
    assert (prompts, report.duplicates, report.kept) == (["a", "b"], 2, 2)
    assert load_prompts(rows, dedupe=False) == ["a", "a", "a", "b"]
    assert load_prompts(rows, n=1) == ["a"]


def test_prompts_from_files_datasets_and_named_columns(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"prompt {i}"} for i in range(4)]
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    expected = [f"prompt {i}" for i in range(4)]
    assert load_prompts(path, column="text") == expected
    assert load_prompts(datasets.Dataset.from_list(rows), column="text") == expected
    dataset_dict = datasets.DatasetDict(train=datasets.Dataset.from_list(rows[:1]),
                                        test=datasets.Dataset.from_list(rows))
    assert load_prompts(dataset_dict, split="test", column="text") == expected
    # a transcript in a named column: its turns up to the last Human turn
    assert load_prompts(fixture_rows("hh_rlhf.jsonl"), column="chosen")[2] == EXPECTED[2]["prompt"]


def test_sandbox_prompts_match_the_world_and_take_a_size_and_seed() -> None:
    assert load_prompts("sandbox") == SANDBOX_TRAIN
    test = load_prompts("sandbox", split="test")
    assert len(test) == 200 and test == [p.text for p in make_prompts(200, seed=0, split="test")]
    assert load_prompts("sandbox", n=8, seed=3) == [p.text for p in make_prompts(8, seed=3)]
    with pytest.raises(ValueError, match=r"prompt splits \['test', 'train'\], not 'validation'"):
        load_prompts("sandbox", split="validation")


def test_a_row_without_a_prompt_names_its_fields_and_the_fix() -> None:
    rows = [{"prompt": "ok"}, {"text": "a whole document", "label": 1}]
    with pytest.raises(PromptDataError, match=r"^row 1: has no prompt field \(fields: 'text', 'label'\); "
                                              r"load_prompts reads prompt, messages, chosen \+ rejected, question, "
                                              r"instruction, query — pass column=<name> to read another"):
        load_prompts(rows, on_error="raise")
    with pytest.warns(DataWarning, match=r"kept 1 of 2 rows\. Skipped 1: 1× has no prompt field"):
        assert load_prompts(rows) == ["ok"]
    with pytest.raises(ValueError, match=r"no prompts could be read from list: kept 0 of 1 rows"):
        load_prompts(rows[1:])


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("   ", "'prompt' is empty"),
        ([], "'prompt' is empty"),
        (chat("q", "a")[1:], "'prompt' has no user message"),
        ({"role": "user", "content": "hi"}, "is a single {role, content} message, not a prompt"),
        ({"messages": [{"role": "user", "content": " "}]}, "'messages' ends with an empty user message"),
        ({"prompt": 3}, "'prompt' must be a string or a list of messages, got int"),
        ({"prompt": [{"role": "tool", "content": "{}"}]}, "'prompt' message 0 has role 'tool'"),
        (4.5, "is not a prompt, a message list or a mapping of fields (got float)"),
    ],
)
def test_unreadable_prompts_name_the_row_and_field(item: object, reason: str) -> None:
    with pytest.raises(PromptDataError) as err:
        load_prompts(["fine", item], on_error="raise")
    assert str(err.value).startswith(f"row 1: {reason}")


def test_load_prompts_bad_arguments() -> None:
    with pytest.raises(ValueError, match="seed=1 applies to source='sandbox' only"):
        load_prompts(["a"], seed=1)
    with pytest.raises(ValueError, match="n=0 must be a positive number"):
        load_prompts(["a"], n=0)
    with pytest.raises(ValueError, match="on_error"):
        load_prompts(["a"], on_error="ignore")
    with pytest.raises(TypeError, match="a list of prompts or dicts, got int"):
        load_prompts(3)


# ------------------------------------------------------------------------------------ the committed data/ folder
REPO = Path(__file__).resolve().parents[1]


def test_committed_data_files_are_what_the_script_makes_and_each_loads(tmp_path: Path) -> None:
    import runpy

    written = runpy.run_path(str(REPO / "scripts" / "make_data.py"))["write_data"](tmp_path)
    made = sorted(path.relative_to(tmp_path) for path in written)
    committed = sorted(p.relative_to(REPO / "data") for p in (REPO / "data").rglob("*") if p.suffix != ".md"
                       and p.is_file())
    assert made == committed
    for relative in made:
        fresh, kept = tmp_path / relative, REPO / "data" / relative
        if relative.suffix == ".parquet":
            assert pq.read_table(fresh).equals(pq.read_table(kept)), relative
        else:
            assert fresh.read_bytes() == kept.read_bytes(), f"{relative}: rerun python scripts/make_data.py"

    assert load_prompts(REPO / "data/prompts/sandbox_train.jsonl") == SANDBOX_TRAIN[:256]
    assert load_prompts(REPO / "data/prompts/sandbox_test.jsonl") == load_prompts("sandbox", split="test", n=128)
    standard = load_preferences(REPO / "data/preferences/standard.jsonl")
    assert len(standard) == 12
    for path in (REPO / "data/preferences").iterdir():
        assert load_preferences(path, on_error="raise").to_list() == standard.to_list(), path.name
        assert load_prompts(path) == [p[0]["content"] for p in standard["prompt"]]


def test_data_file_finds_the_data_folder_through_the_package() -> None:
    """Notebooks read data/ through `data_file`, from any folder: in a checkout (or an editable install) it is the
    repository's data/; an installed wheel carries the same files inside the package (tests/test_install.py)."""
    assert data_file("preferences/conversational.jsonl") == REPO / "data" / "preferences" / "conversational.jsonl"
    assert load_prompts(data_file("prompts/sandbox_test.jsonl")) == load_prompts("sandbox", split="test", n=128)
    with pytest.raises(FileNotFoundError, match="'prompts/no_such.jsonl'.*prompts/sandbox_train.jsonl"):
        data_file("prompts/no_such.jsonl")
