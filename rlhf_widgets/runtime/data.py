"""Prompts and preference pairs in, from every common source and format; preference pairs out.

`load_prompts` reads the prompts a policy is sampled on (PPO, GRPO, best-of-N, evaluation, candidate
pairs) and returns a list of prompts, each a string (one user turn) or a list of `{"role", "content"}`
messages ending with a user turn. It reads lists, files, datasets, hub ids, and `"sandbox"`.

`load_preferences` reads preference pairs and returns a `datasets.Dataset` with exactly three
columns, each a list of `{"role", "content"}` messages (TRL's conversational preference format):

    prompt    the conversation so far (system / user / assistant turns, ending where the answer starts)
    chosen    [{"role": "assistant", "content": <the preferred answer>}]
    rejected  [{"role": "assistant", "content": <the other answer>}]

Preference row formats it recognises (`ROW_FORMATS`, detected per row):

    standard         prompt, chosen, rejected are strings
    implicit_prompt  chosen, rejected are strings that start with the same prompt text
    conversational   any of prompt / chosen / rejected is a message list; a missing prompt is the
                     messages chosen and rejected share; a string prompt becomes one user message
    hh_rlhf          Anthropic HH-RLHF transcripts ("\\n\\nHuman: …\\n\\nAssistant: …"); everything
                     before the final Assistant turn is the prompt

Where chosen and rejected hold whole conversations that part before their last turn, the prompt is
TRL's `extract_prompt` rule — the longest run of leading messages they share — provided both go on
with an assistant message there; those two assistant messages are the pair, and any later turns
(answers to conversations that are no longer the same) are dropped and the row is listed in
`LoadReport.shortened`. Conversations that part at a user turn have no differing answer to one
shared prompt and are malformed.

Bad rows: by default (`on_error="warn"`) a row that cannot be read is skipped, and one `DataWarning`
sums up what was skipped and why (`LoadReport` has the full list); `on_error="raise"` stops at the
first with a `PreferenceDataError` / `PromptDataError` naming the row, the field and the problem
(`row 17: 'rejected' is empty`); `on_error="skip"` skips without a warning. Whole-source problems (a
missing or empty file, an unreachable hub) always raise. `save_preferences` writes .jsonl / .jsonl.gz
/ .parquet files that `load_preferences` reads back identically. `data_file(name)` is the path of one of the
project's small example files (`data/`), wherever the package is installed.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, overload

import datasets
import numpy as np
import pyarrow.parquet as pq

from rlhf_widgets.runtime import hub, quiet
from rlhf_widgets.runtime.types import SANDBOX, Messages, Prompt

quiet.quiet_libraries()  # datasets' map / load bars off (quiet.py)

PreferenceSource: TypeAlias = (
    str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict | Sequence[Mapping[str, Any]]
)
PromptSource: TypeAlias = (
    str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict | Sequence[str | Messages | Mapping[str, Any]]
)
RowFormat: TypeAlias = Literal["standard", "implicit_prompt", "conversational", "hh_rlhf"]
OnError: TypeAlias = Literal["warn", "skip", "raise"]

ROW_FORMATS: tuple[RowFormat, ...] = ("standard", "implicit_prompt", "conversational", "hh_rlhf")
ROLES = ("system", "user", "assistant")
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
PROMPT_FIELDS = ("prompt", "messages", "question", "instruction", "query")
"""the fields `load_prompts` reads a prompt from, first present wins (preference rows aside; see there)"""
SANDBOX_PROMPTS = {"train": 1000, "test": 200}
"""how many sandbox prompts `load_prompts("sandbox")` makes per split by default: as many as PPO and the
CLI train on (1000), and the evaluation notebook's test set (200)"""
_MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
PREFERENCE_FEATURES = datasets.Features({column: _MESSAGES for column in PREFERENCE_COLUMNS})
"""the features of every dataset `load_preferences` returns (before any `keep_columns`)"""

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_ASSISTANT = "\n\nAssistant:"
_FILE_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet")
_SAVE_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_NO_SHARED_PROMPT = "is missing, and 'chosen' and 'rejected' share no leading {} to take it from"
_ON_ERROR = ("warn", "skip", "raise")
_FIRST_ROWS_SHOWN = 5  # row indices listed per reason in a report's summary


# ------------------------------------------------------------------------------------ prompt helpers
def as_messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user message; a message list is copied."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def last_user_content(prompt: str | list[dict[str, str]]) -> str:
    """The text of the last user message (a string prompt is returned as is)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return message["content"]
    raise ValueError("prompt has no user message")


def words(text: str) -> int:
    """Words in a response (whitespace-separated), the length unit of the tables."""
    return len(text.split())


def message_text(response: str | list[dict[str, str]]) -> str:
    """The text of a response: a string as is; of a message list (a conversational completion), the last
    message's content."""
    if isinstance(response, str):
        return response
    if not response:
        raise ValueError("an empty message list has no text")
    return response[-1]["content"]


def demonstrations(pairs: datasets.Dataset) -> datasets.Dataset:
    """SFT demonstrations from preference pairs: each pair's prompt with its chosen answer, as TRL's
    prompt–completion format (one row per distinct prompt and answer). A common first step when the only data are
    preferences (SFT on the preferred answers, then a reward model and RL on the same pairs)."""
    seen: set[str] = set()
    rows = []
    for prompt, chosen in zip(pairs["prompt"], pairs["chosen"], strict=True):
        key = json.dumps([prompt, chosen], sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append({"prompt": as_messages(prompt), "completion": [{"role": "assistant",
                                                                        "content": message_text(chosen)}]})
    return datasets.Dataset.from_list(rows)


def split_by_prompt(dataset: datasets.Dataset, test_size: float, seed: int = 0) -> datasets.DatasetDict:
    """Hold out `test_size` of the *prompts* with all their pairs: `DatasetDict(train=…, test=…)`.

    With several pairs per prompt (K answers, pairs among them, as in InstructGPT) a row-wise split
    would evaluate on answers the model was trained on; this keeps every prompt on one side. A dataset
    without a `prompt` column (or with fewer than two distinct prompts) is split by row, as
    `Dataset.train_test_split` does. The prompts are drawn at random with `seed`; order is kept.
    """
    if not 0 < test_size < 1:
        raise ValueError(f"split_by_prompt: test_size={test_size} must be in (0, 1)")
    keys = [json.dumps(p, sort_keys=True) for p in dataset["prompt"]] if "prompt" in dataset.column_names else []
    unique = sorted(set(keys))
    if len(unique) < 2:
        return dataset.train_test_split(test_size=test_size, seed=seed)
    n_test = min(max(1, round(test_size * len(unique))), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    held = {unique[i] for i in order[:n_test]}
    test = [i for i, key in enumerate(keys) if key in held]
    train = [i for i, key in enumerate(keys) if key not in held]
    return datasets.DatasetDict(train=dataset.select(train), test=dataset.select(test))


def one_pair_per_prompt(dataset: datasets.Dataset) -> datasets.Dataset:
    """The first pair of each prompt, in order (a dataset without a `prompt` column is returned as is)."""
    if "prompt" not in dataset.column_names:
        return dataset
    seen: set[str] = set()
    keep = []
    for i, prompt in enumerate(dataset["prompt"]):
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return dataset.select(keep)


# ------------------------------------------------------------------------------------ errors and report
@dataclass(frozen=True)
class RowProblem:
    """Why one source row could not be read."""

    index: int
    """0-based position of the row in the source (for JSON Lines: the n-th non-blank line)"""
    field: str | None
    """the column at fault ('prompt', 'chosen', 'rejected', …); None when the row as a whole is unreadable"""
    problem: str
    """what is wrong, phrased to follow the quoted field: "is empty", "is missing", …"""

    @property
    def reason(self) -> str:
        """the problem with its field, e.g. "'rejected' is empty" """
        return f"{self.field!r} {self.problem}" if self.field else self.problem

    def __str__(self) -> str:
        return f"row {self.index}: {self.reason}"


class DataRowError(ValueError):
    """A malformed row; `str(err)` reads e.g. "row 17: 'rejected' is empty — <how to go on>"."""

    def __init__(self, index: int, field: str | None, problem: str, hint: str = "") -> None:
        super().__init__(index, field, problem)
        self.index = index
        self.field = field
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        text = str(RowProblem(self.index, self.field, self.problem))
        return f"{text} — {self.hint}" if self.hint else text


class PreferenceDataError(DataRowError):
    """A malformed preference row (raised by `load_preferences(..., on_error="raise")`)."""


class PromptDataError(DataRowError):
    """A row `load_prompts(..., on_error="raise")` could not read a prompt from."""


class DataWarning(UserWarning):
    """Rows were skipped while loading; the message sums up how many, why, and which."""


@dataclass(frozen=True)
class LoadReport:
    """What `load_preferences` / `load_prompts` read, kept and skipped (`return_report=True`)."""

    source: str
    """the source as given (path, hub id) or its type"""
    rows_read: int
    """rows in the source"""
    formats: dict[str, int]
    """kept rows per detected row format (`ROW_FORMATS`; for prompts: the field read, see `load_prompts`)"""
    skipped: tuple[RowProblem, ...]
    """the rows dropped as unreadable, in source order (always empty with on_error="raise")"""
    shortened: tuple[int, ...] = ()
    """rows (indices) whose chosen and rejected conversations went on after the answers kept"""
    duplicates: int = 0
    """rows dropped as repeats of an earlier prompt (`load_prompts` with dedupe=True)"""

    @property
    def kept(self) -> int:
        """rows returned"""
        return self.rows_read - len(self.skipped) - self.duplicates

    def reasons(self) -> Counter[str]:
        """How many rows were skipped for each problem, e.g. `{"'rejected' is empty": 3}`."""
        return Counter(problem.reason for problem in self.skipped)

    def __str__(self) -> str:
        parts = [f"{self.source}: kept {self.kept} of {self.rows_read} rows"]
        if self.skipped:
            rows_by_reason: dict[str, list[int]] = {}
            for problem in self.skipped:
                rows_by_reason.setdefault(problem.reason, []).append(problem.index)
            reasons = "; ".join(
                f"{n}× {reason} ({_row_list(rows_by_reason[reason])})" for reason, n in self.reasons().most_common()
            )
            parts.append(f"Skipped {len(self.skipped)}: {reasons}")
        if self.shortened:
            parts.append(
                f"{len(self.shortened)} pairs part before their last turn: kept the first answers that differ, "
                f"dropped the turns after them ({_row_list(list(self.shortened))})"
            )
        if self.duplicates:
            parts.append(f"Dropped {self.duplicates} repeated prompts")
        return ". ".join(parts)


def _row_list(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:_FIRST_ROWS_SHOWN]))
    more = f", … {len(indices) - _FIRST_ROWS_SHOWN} more" if len(indices) > _FIRST_ROWS_SHOWN else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


class _Malformed(Exception):
    """Raised inside row parsing; the row loop adds the index."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


def _check_on_error(on_error: str) -> None:
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")


def _read_all(
    rows: Iterable[Any], parse: Callable[[Any], tuple[str, Any]], on_error: OnError, error: type[DataRowError]
) -> tuple[list[tuple[int, Any, Any]], Counter[str], list[RowProblem], int]:
    """Parse every row: ([(index, row, parsed)], kept rows per format, skipped problems, rows read)."""
    parsed: list[tuple[int, Any, Any]] = []
    formats: Counter[str] = Counter()
    skipped: list[RowProblem] = []
    rows_read = 0
    for index, row in enumerate(rows):
        rows_read += 1
        try:
            detected, value = parse(row)
        except _Malformed as err:
            if on_error == "raise":
                hint = "fix or drop this row, or pass on_error='warn' (skip bad rows and report them)"
                raise error(index, err.field, err.problem, hint) from None
            skipped.append(RowProblem(index, err.field, err.problem))
            continue
        formats[detected] += 1
        parsed.append((index, row, value))
    return parsed, formats, skipped, rows_read


def _announce(report: LoadReport, on_error: OnError, what: str) -> None:
    """Warn (on_error="warn") about skipped rows; raise when nothing at all could be read."""
    if on_error != "warn" or not report.skipped:
        return
    if report.kept == 0:
        raise ValueError(f"no {what} could be read from {report}. Check the source's columns and format.")
    warnings.warn(
        f"{report}. Pass on_error='raise' to stop at the first bad row, or return_report=True for the full list.",
        DataWarning,
        stacklevel=3,
    )


# ------------------------------------------------------------------------------------ preferences
@overload
def load_preferences(
    source: PreferenceSource, *, split: str = ..., on_error: OnError = ...,
    format: RowFormat | Literal["auto"] = ..., keep_columns: Sequence[str] = ...,
    return_report: Literal[False] = ...,
) -> datasets.Dataset: ...


@overload
def load_preferences(
    source: PreferenceSource, *, split: str = ..., on_error: OnError = ...,
    format: RowFormat | Literal["auto"] = ..., keep_columns: Sequence[str] = ...,
    return_report: Literal[True],
) -> tuple[datasets.Dataset, LoadReport]: ...


def load_preferences(
    source: PreferenceSource,
    *,
    split: str = "train",
    on_error: OnError = "warn",
    format: RowFormat | Literal["auto"] = "auto",
    keep_columns: Sequence[str] = (),
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, LoadReport]:
    """Preference pairs from `source` as a TRL conversational preference Dataset.

    `source` is one of: a local file (.jsonl, .jsonl.gz, .json — a list of rows, a dict of columns
    or JSON Lines — or .parquet); a local directory (written by `Dataset.save_to_disk`, or a
    hub-style dataset folder that `datasets.load_dataset(path)` reads); a `datasets.Dataset` or
    `DatasetDict`; a list of row dicts; or a Hugging Face Hub dataset id. `split` (default "train")
    picks the split of a DatasetDict, a directory or a hub dataset; single files, lists and Datasets
    have no splits. Only the `prompt`, `chosen` and `rejected` fields of each row are read (see the
    module docstring for the formats); the result has exactly those columns, as message lists, plus
    the source columns named in `keep_columns` (default none; missing values become None).

    `on_error` (default "warn") says what a malformed row does: "warn" skips it and, once all rows
    are read, warns (`DataWarning`) with the count per reason and the first row indices — and raises
    ValueError if no row at all was usable; "skip" skips silently; "raise" raises
    `PreferenceDataError` naming the row, field and problem. `format` (default "auto": detect per
    row) names the one row format to accept; rows detected as another format are malformed. With
    `return_report=True` (default False) returns `(dataset, LoadReport)`.

    Raises FileNotFoundError for a missing local file or an unknown hub id, ValueError for an empty
    file or a JSON file that is not UTF-8, and ConnectionError (within about `hub.PROBE_TIMEOUT_S`)
    when `source` is neither a local path nor reachable on the hub.
    """
    _check_on_error(on_error)
    if format != "auto" and format not in ROW_FORMATS:
        raise ValueError(f"format must be 'auto' or one of {ROW_FORMATS}, got {format!r}")
    if clash := set(keep_columns) & set(PREFERENCE_COLUMNS):
        raise ValueError(f"keep_columns cannot name {sorted(clash)}: they are always returned")

    description, rows = _read_rows(source, split, (*PREFERENCE_COLUMNS, *keep_columns), "preference")
    parsed, formats, skipped, rows_read = _read_all(
        rows, lambda row: _parse_row(row, format), on_error, PreferenceDataError
    )
    columns: dict[str, list] = {column: [] for column in (*PREFERENCE_COLUMNS, *keep_columns)}
    shortened = []
    for index, row, (pair, was_shortened) in parsed:
        for column, value in pair.items():
            columns[column].append(value)
        for column in keep_columns:
            columns[column].append(row.get(column))
        if was_shortened:
            shortened.append(index)

    dataset = datasets.Dataset.from_dict(
        {column: columns[column] for column in PREFERENCE_COLUMNS}, features=PREFERENCE_FEATURES
    )
    for column in keep_columns:
        dataset = dataset.add_column(column, columns[column])
    report = LoadReport(description, rows_read, dict(formats), tuple(skipped), tuple(shortened))
    _announce(report, on_error, "preference pairs")
    return (dataset, report) if return_report else dataset


# ------------------------------------------------------------------------------------ prompts
def prompt_list(prompts: PromptSource) -> list[Prompt]:
    """A stage's `prompts` argument as a list: a list or tuple of prompts is used as given (in order, repeats
    kept); any other source — "sandbox", a file, a directory, a Dataset, a hub id — is read by `load_prompts`."""
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise ValueError("no prompts given (an empty list)")
        return list(prompts)
    return load_prompts(prompts)


@overload
def load_prompts(
    source: PromptSource, *, split: str = ..., column: str | None = ..., n: int | None = ...,
    seed: int | None = ..., dedupe: bool = ..., on_error: OnError = ..., return_report: Literal[False] = ...,
) -> list[Prompt]: ...


@overload
def load_prompts(
    source: PromptSource, *, split: str = ..., column: str | None = ..., n: int | None = ...,
    seed: int | None = ..., dedupe: bool = ..., on_error: OnError = ..., return_report: Literal[True],
) -> tuple[list[Prompt], LoadReport]: ...


def load_prompts(
    source: PromptSource,
    *,
    split: str = "train",
    column: str | None = None,
    n: int | None = None,
    seed: int | None = None,
    dedupe: bool = True,
    on_error: OnError = "warn",
    return_report: bool = False,
) -> list[Prompt] | tuple[list[Prompt], LoadReport]:
    """The prompts in `source`, in order: each a string (one user turn) or messages ending with a user turn.

    `source` is `"sandbox"` (the sandbox world's customer prompts, `rlhf_widgets.sandbox.make_prompts`),
    a list, or anything `load_preferences` reads (a .jsonl / .jsonl.gz / .json / .parquet file, a
    directory, a `datasets.Dataset` / `DatasetDict`, a hub dataset id; `split`, default "train", picks
    the split where there are several — for the sandbox, "train" or "test"). A list holds prompt
    strings, message lists, or row dicts.

    What a row's prompt is, first match wins:
      - `column` given: that field — a string, a message list, or an HH transcript;
      - `prompt` (string, message list, or an HH "\\n\\nHuman: …\\n\\nAssistant:" transcript);
      - `messages` (a conversation): the conversation up to and including its last user turn;
      - `chosen` + `rejected` (a preference row with no prompt field): the prompt `load_preferences`
        takes from them (shared text, shared messages, or an HH transcript's turns before the answer);
      - `question`, `instruction` (with a non-empty `input` appended after a blank line, as in
        Alpaca-style rows), `query`.
    A `text` field is not read unless named (`column="text"`): in most datasets it holds a whole
    document or a prompt with its answer. Every message list is cut after its last user turn; a prompt
    that is then one user message is returned as its text. `LoadReport.formats` counts the field read.

    `n` (default None: all) keeps the first `n` prompts; for the sandbox it is how many to make (default
    `SANDBOX_PROMPTS[split]`: 1000 train, 200 test) with `seed` (default 0; only the sandbox takes a
    seed). `dedupe` (default True) drops repeats of an earlier prompt — a preference dataset repeats its
    prompt once per pair, and repeated prompts would weigh those prompts more in RL — counted in
    `LoadReport.duplicates`. `on_error` is as in `load_preferences` (default "warn": skip unreadable
    rows, warn with a summary, raise when no row gives a prompt), raising `PromptDataError`.
    """
    _check_on_error(on_error)
    if n is not None and n < 1:
        raise ValueError(f"n={n} must be a positive number of prompts (or None for all)")
    if isinstance(source, str) and source == SANDBOX:
        prompts = _sandbox_prompts(split, n, 0 if seed is None else seed)
        report = LoadReport(SANDBOX, len(prompts), {"sandbox": len(prompts)}, ())
        return (prompts, report) if return_report else prompts
    if seed is not None:
        raise ValueError(f"seed={seed} applies to source='sandbox' only; other sources are read in order")

    fields = (column,) if column else (*PROMPT_FIELDS, "input", "chosen", "rejected")
    description, rows = _read_rows(source, split, fields, "prompt", list_items=True)
    parsed, formats, skipped, rows_read = _read_all(
        rows, lambda row: _row_prompt(row, column), on_error, PromptDataError
    )
    prompts: list[Prompt] = []
    seen: set[str] = set()
    duplicates = 0
    for _, _, prompt in parsed:
        if dedupe:
            key = json.dumps(prompt, sort_keys=True)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
        prompts.append(prompt)
    report = LoadReport(description, rows_read, dict(formats), tuple(skipped), duplicates=duplicates)
    _announce(report, on_error, "prompts")
    if n is not None:
        prompts = prompts[:n]
    return (prompts, report) if return_report else prompts


def _sandbox_prompts(split: str, n: int | None, seed: int) -> list[Prompt]:
    from rlhf_widgets.sandbox import make_prompts

    if split not in SANDBOX_PROMPTS:
        raise ValueError(f"the sandbox has prompt splits {sorted(SANDBOX_PROMPTS)}, not {split!r}")
    return [prompt.text for prompt in make_prompts(n or SANDBOX_PROMPTS[split], seed=seed, split=split)]


def _row_prompt(row: Any, column: str | None) -> tuple[str, Prompt]:
    """(the field read, the prompt) of one `load_prompts` row, or raises `_Malformed`."""
    if isinstance(row, _Malformed):
        raise row
    if isinstance(row, (str, list)):  # list sources: a bare prompt
        return ("messages" if isinstance(row, list) else "string"), _prompt_value("prompt", row)
    if not isinstance(row, Mapping):
        raise _Malformed(None, f"is not a prompt, a message list or a mapping of fields (got {type(row).__name__})")
    if column is not None:
        if row.get(column) is None:
            raise _Malformed(column, "is missing")
        return column, _prompt_value(column, row[column])
    for field in ("prompt", "messages"):
        if row.get(field) is not None:
            return field, _prompt_value(field, row[field])
    if row.get("chosen") is not None and row.get("rejected") is not None:
        detected, (pair, _) = _parse_row(row, "auto", answers_required=False)
        return f"preference:{detected}", _prompt_value("prompt", pair["prompt"])
    for field in PROMPT_FIELDS[2:]:
        if row.get(field) is not None:
            value = row[field]
            if field == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
                value = f"{value}\n\n{row['input']}" if isinstance(value, str) else value
            return field, _prompt_value(field, value)
    if "role" in row and "content" in row:
        raise _Malformed(None, "is a single {role, content} message, not a prompt; a conversation is a list of them")
    found = ", ".join(map(repr, row)) or "none"
    raise _Malformed(
        None,
        f"has no prompt field (fields: {found}); load_prompts reads prompt, messages, chosen + rejected, "
        f"{', '.join(PROMPT_FIELDS[2:])} — pass column=<name> to read another",
    )


def _prompt_value(field: str, value: Any) -> Prompt:
    """A field's value as a prompt: a string stays a string (an HH transcript becomes its turns); a message
    list is cut after its last user turn, and a lone user message becomes its text."""
    if isinstance(value, str):
        if not value.strip():
            raise _Malformed(field, "is empty")
        if not _is_transcript(value):
            return value
        messages = _transcript_messages(value)
    elif isinstance(value, list):
        if not value:
            raise _Malformed(field, "is empty")
        messages = _checked_messages(field, value)
    else:
        raise _Malformed(field, f"must be a string or a list of messages, got {type(value).__name__}")
    last_user = max((i for i, message in enumerate(messages) if message["role"] == "user"), default=None)
    if last_user is None:
        raise _Malformed(field, "has no user message")
    messages = messages[: last_user + 1]
    if not messages[-1]["content"].strip():
        raise _Malformed(field, "ends with an empty user message")
    if len(messages) == 1:
        return messages[0]["content"]
    return messages


# ------------------------------------------------------------------------------------ the project's data/ folder
_INSTALLED_DATA = Path(__file__).parent / "data_files"  # where a wheel carries data/ (pyproject.toml, package-dir)
_CHECKOUT_DATA = Path(__file__).parents[1] / "data"  # a source checkout, or an editable install of one


def data_file(name: str) -> Path:
    """The path of `name` in the project's `data/` folder (data/README.md), wherever the package runs:
    `data_file("preferences/conversational.jsonl")`. An installed wheel carries the folder inside the package;
    a source checkout (or an editable install) has it beside the package. FileNotFoundError lists the files."""
    folder = _INSTALLED_DATA if _INSTALLED_DATA.is_dir() else _CHECKOUT_DATA
    path = folder / name
    if not path.is_file():
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.suffix != ".md")
        raise FileNotFoundError(f"no data file {name!r} in {folder}; there are: {', '.join(files)}")
    return path


# ------------------------------------------------------------------------------------ reading sources
def _read_rows(
    source: Any, split: str, fields: Sequence[str], what: str, list_items: bool = False
) -> tuple[str, Iterable[Any]]:
    """(a description of `source`, its rows): dicts (or, from lists, whatever the list holds), or
    `_Malformed` for rows that could not be decoded."""
    if isinstance(source, datasets.DatasetDict):
        return "DatasetDict", _dataset_rows(_pick_split(source, split), fields)
    if isinstance(source, datasets.Dataset):
        return "Dataset", _dataset_rows(source, fields)
    if isinstance(source, (list, tuple)):
        return "list", source
    if not isinstance(source, (str, os.PathLike)):
        kinds = "a list of prompts or dicts" if list_items else "a list of dicts"
        raise TypeError(
            f"source must be a path, a hub id, a datasets.Dataset / DatasetDict or {kinds}, got {type(source).__name__}"
        )
    path = Path(source)
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():  # save_to_disk
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path), split=split)
        if isinstance(loaded, datasets.DatasetDict):
            loaded = _pick_split(loaded, split)
        return str(source), _dataset_rows(loaded, fields)
    if path.is_file():
        rows = _file_rows(path)
        if not rows:
            raise ValueError(f"{path} holds no rows; check the path, and that the file was fully written")
        return str(source), rows
    if path.name.endswith(_FILE_SUFFIXES) or not _HUB_ID.fullmatch(str(source)):
        raise FileNotFoundError(f"no such file or directory: {str(source)!r}")
    return str(source), _dataset_rows(_load_from_hub(str(source), split, what), fields)


def _pick_split(dataset_dict: datasets.DatasetDict, split: str) -> datasets.Dataset:
    if split not in dataset_dict:
        raise ValueError(f"split {split!r} not found; available: {sorted(dataset_dict)}")
    return dataset_dict[split]


def _load_from_hub(dataset_id: str, split: str, what: str) -> datasets.Dataset:
    """`datasets.load_dataset(dataset_id, split=split)`, after one quick metadata request when online.

    Without the probe an unreachable hub costs ~23 s of retries (five, 1-8 s apart) and a screen of
    HTTP warnings before `datasets` gives up; the probe fails in one request (no retries) instead.
    """
    unreachable = ConnectionError(
        f"could not load {what} dataset {dataset_id!r}: the Hugging Face Hub could not be reached "
        "(no network, or HF_HUB_OFFLINE=1) and there is no local file or directory by that name"
    )
    not_found = FileNotFoundError(
        f"{dataset_id!r} is not a local file or directory, and the Hugging Face Hub has no dataset "
        "by that id (or it is private / gated and you are not logged in)"
    )
    status = hub.probe(dataset_id, "dataset")
    if status == "unreachable":
        unreachable.add_note("A copy cached by an earlier download loads with HF_HUB_OFFLINE=1.")
        raise unreachable
    if status == "missing":  # gated repositories included
        raise not_found
    try:
        return datasets.load_dataset(dataset_id, split=split)
    except ConnectionError:
        raise unreachable from None
    except datasets.exceptions.DatasetNotFoundError:
        raise not_found from None


def _dataset_rows(dataset: datasets.Dataset, fields: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of `dataset` restricted to `fields`, read in batches (row-by-row indexing is slow)."""
    present = [field for field in fields if field in dataset.column_names]
    if not present:
        yield from ({} for _ in range(len(dataset)))
        return
    for batch in dataset.select_columns(present).iter(batch_size=1000):
        yield from (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True))


def _file_rows(path: Path) -> list[Any]:
    name = path.name
    if name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    if not name.endswith(_FILE_SUFFIXES):
        raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(_FILE_SUFFIXES)}")
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return list(_json_lines(raw, path))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: {_not_utf8(raw, err)}; re-save it as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # JSON Lines under a .json name, as datasets accepts
        return list(_json_lines(raw, path))
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) <= 1:
            return [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
    raise ValueError(f"{path}: expected a list of rows, a dict of equal-length columns, or JSON Lines")


def _json_lines(raw: bytes, path: Path) -> Iterator[Any]:
    """The rows of JSON Lines `raw` (blank lines skipped); a line that is not UTF-8 or not JSON is a
    `_Malformed` row naming its line."""
    for line_number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8-sig" if line_number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            yield _Malformed(None, f"{_not_utf8(line, err, line_number)} of {path.name}; re-save the file as UTF-8")
            continue
        try:
            yield json.loads(text)
        except json.JSONDecodeError as err:
            yield _Malformed(None, f"not valid JSON ({err.msg}; line {line_number} of {path.name})")


def _not_utf8(raw: bytes, err: UnicodeDecodeError, line: int | None = None) -> str:
    """"line 3 is not UTF-8 (byte 0xe9 at column 12)": where `err` happened in `raw` (a line, or a whole file)."""
    if line is None:
        line = raw.count(b"\n", 0, err.start) + 1
    column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
    return f"line {line} is not UTF-8 (byte 0x{raw[err.start]:02x} at column {column})"


# ------------------------------------------------------------------------------------ one preference row
def _parse_row(
    row: Any, expected: RowFormat | Literal["auto"], answers_required: bool = True
) -> tuple[RowFormat, tuple[dict[str, Messages], bool]]:
    """(detected format, ({"prompt", "chosen", "rejected"} in the output format, whether later turns were
    dropped)) or raises `_Malformed`. With `answers_required=False` (reading prompts only) empty or equal
    answers are let through."""
    if isinstance(row, _Malformed):
        raise row
    if not isinstance(row, Mapping):
        raise _Malformed(None, f"not a mapping of fields (got {type(row).__name__})")
    prompt, chosen, rejected = (row.get(field) for field in PREFERENCE_COLUMNS)
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise _Malformed(field, "is missing")
        if answers_required and (isinstance(value, str) and not value.strip() or isinstance(value, list) and not value):
            raise _Malformed(field, "is empty")
    for field, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if value is not None and not isinstance(value, (str, list)):
            raise _Malformed(field, f"must be a string or a list of messages, got {type(value).__name__}")
    if answers_required and chosen == rejected:
        raise _Malformed("rejected", "is identical to 'chosen'")

    detected = _detect_format(prompt, chosen, rejected)
    if expected != "auto" and detected != expected:
        raise _Malformed(None, f"in {detected} format, not {expected} (format={expected!r})")
    shortened = False
    if detected == "standard":
        prompt_messages, chosen_text, rejected_text = as_messages(prompt), chosen, rejected
    elif detected == "implicit_prompt":
        prompt_messages, chosen_text, rejected_text = _split_implicit_prompt(chosen, rejected)
    elif detected == "conversational":
        prompt_messages, chosen_text, rejected_text, shortened = _split_conversation(prompt, chosen, rejected)
    elif prompt is None:  # hh_rlhf: whole transcripts in chosen / rejected
        prompt_messages, chosen_text, rejected_text, shortened = _split_conversation(
            None, _transcript_messages(chosen), _transcript_messages(rejected)
        )
    else:  # hh_rlhf: the transcript up to "\n\nAssistant:" in prompt, bare answers in chosen / rejected
        prompt_messages = _transcript_messages(prompt)
        if prompt_messages[-1] == {"role": "assistant", "content": ""}:
            prompt_messages.pop()
        chosen_text, rejected_text = chosen.strip(), rejected.strip()

    if not any(message["content"].strip() for message in prompt_messages):
        raise _Malformed("prompt", "is empty")
    if answers_required:
        for field, text in (("chosen", chosen_text), ("rejected", rejected_text)):
            if not text.strip():
                raise _Malformed(field, "is empty")
        if chosen_text == rejected_text:
            raise _Malformed("rejected", "is identical to 'chosen'")
    pair = {
        "prompt": prompt_messages,
        "chosen": [{"role": "assistant", "content": chosen_text}],
        "rejected": [{"role": "assistant", "content": rejected_text}],
    }
    return detected, (pair, shortened)


def _detect_format(prompt: str | list | None, chosen: str | list, rejected: str | list) -> RowFormat:
    if any(isinstance(value, list) for value in (prompt, chosen, rejected)):
        return "conversational"
    if prompt is None:
        return "hh_rlhf" if _is_transcript(chosen) and _is_transcript(rejected) else "implicit_prompt"
    return "hh_rlhf" if _is_transcript(prompt) else "standard"


def _is_transcript(text: str) -> bool:
    return text.lstrip().startswith("Human:") and _HH_ASSISTANT in text


def _transcript_messages(text: str) -> Messages:
    """"\\n\\nHuman: a\\n\\nAssistant: b" → [user a, assistant b], contents stripped."""
    parts = _HH_TURN.split("\n\n" + text.lstrip())  # ["", "Human", " a", "Assistant", " b", …]
    return [
        {"role": _HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _split_implicit_prompt(chosen: str, rejected: str) -> tuple[Messages, str, str]:
    """Split two strings at the last shared "\\n\\nAssistant:", else after the last shared whitespace."""
    shared = os.path.commonprefix([chosen, rejected])
    marker = shared.rfind(_HH_ASSISTANT)
    if marker >= 0:
        prompt, cut = shared[:marker], marker + len(_HH_ASSISTANT)
    else:
        cut = max((i + 1 for i, char in enumerate(shared) if char.isspace()), default=0)
        prompt = shared[:cut]
    if not prompt.strip():
        raise _Malformed("prompt", _NO_SHARED_PROMPT.format("words"))
    return as_messages(prompt.strip()), chosen[cut:].strip(), rejected[cut:].strip()


def _split_conversation(
    prompt: str | list | None, chosen: str | list, rejected: str | list
) -> tuple[Messages, str, str, bool]:
    """(prompt messages, chosen answer, rejected answer, whether later turns were dropped) of a conversational row.

    chosen / rejected may hold just the answer, or the whole conversation (starting with the prompt, or
    with no prompt given): either way each is completed to a full conversation ending with an assistant
    message. The prompt is the messages the two share (TRL's `extract_prompt`: their longest common
    prefix); the answers are the first messages where they differ, which must be assistant messages.
    """
    prompt_messages = None if prompt is None else _checked_messages("prompt", as_messages(prompt))
    conversations = {}
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(value, str):
            messages = [{"role": "assistant", "content": value}]
        else:
            messages = _checked_messages(field, value)
            if not messages:
                raise _Malformed(field, "is empty")
        if prompt_messages is not None:
            n = len(prompt_messages)
            if not (len(messages) > n and messages[:n] == prompt_messages):
                messages = prompt_messages + messages
        if messages[-1]["role"] != "assistant":
            raise _Malformed(field, f"must end with an assistant message, not a {messages[-1]['role']} one")
        conversations[field] = messages
    chosen_messages, rejected_messages = conversations["chosen"], conversations["rejected"]
    shared = 0
    while (
        shared < min(len(chosen_messages), len(rejected_messages))
        and chosen_messages[shared] == rejected_messages[shared]
    ):
        shared += 1
    if shared == len(chosen_messages) == len(rejected_messages):
        raise _Malformed("rejected", "is identical to 'chosen'")
    parts_at_answers = (
        shared < min(len(chosen_messages), len(rejected_messages))
        and chosen_messages[shared]["role"] == rejected_messages[shared]["role"] == "assistant"
    )
    if not parts_at_answers or shared == 0:
        if shared == 0 and not (chosen_messages[0]["role"] == rejected_messages[0]["role"] == "user"):
            raise _Malformed("prompt", _NO_SHARED_PROMPT.format("messages"))
        raise _Malformed(
            "rejected",
            f"continues a different conversation than 'chosen' from message {shared} on "
            "(the two may part only at an assistant answer)",
        )
    shortened = len(chosen_messages) > shared + 1 or len(rejected_messages) > shared + 1
    return (
        chosen_messages[:shared],
        chosen_messages[shared]["content"],
        rejected_messages[shared]["content"],
        shortened,
    )


def _checked_messages(field: str, value: list) -> Messages:
    """`value` as {role, content} messages (extra keys dropped), or `_Malformed`."""
    messages = []
    for j, message in enumerate(value):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise _Malformed(field, f"message {j} is not a {{role, content}} pair of strings")
        if message["role"] not in ROLES:
            raise _Malformed(field, f"message {j} has role {message['role']!r}, not one of {'/'.join(ROLES)}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


# ------------------------------------------------------------------------------------ saving
def save_preferences(dataset: datasets.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write preference pairs to `path` (.jsonl, .jsonl.gz or .parquet) and return the path.

    `dataset` is first normalised by `load_preferences` (any accepted row format; a malformed row
    raises `PreferenceDataError`), so the file always holds the output format; extra columns are
    written too. `load_preferences(path, keep_columns=<the extra columns>)` returns an equal dataset.
    JSON Lines are UTF-8, one object per line.
    """
    path = Path(path)
    if not path.name.endswith(_SAVE_SUFFIXES):
        raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(_SAVE_SUFFIXES)}")
    extra = [column for column in dataset.column_names if column not in PREFERENCE_COLUMNS]
    normalised = load_preferences(dataset, keep_columns=extra, on_error="raise")
    if path.name.endswith(".parquet"):
        normalised.to_parquet(str(path))
        return path
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in normalised:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
