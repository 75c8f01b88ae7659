"""Prompts and preference pairs in: `load_preferences`, `load_prompts` (the sandbox's prompts included) and
`prompt_list`, a stage's `prompts` argument as a list."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal, overload

import datasets

from rlhf_widgets.runtime.data.errors import (
    LoadReport,
    OnError,
    PreferenceDataError,
    PromptDataError,
    _announce,
    _check_on_error,
    _read_all,
)
from rlhf_widgets.runtime.data.formats import (
    PREFERENCE_COLUMNS,
    PREFERENCE_FEATURES,
    PROMPT_FIELDS,
    ROW_FORMATS,
    RowFormat,
    _parse_row,
    _row_prompt,
)
from rlhf_widgets.runtime.data.sources import PreferenceSource, PromptSource, _read_rows
from rlhf_widgets.runtime.types import SANDBOX, Prompt

SANDBOX_PROMPTS = {"train": 1000, "test": 200}
"""how many sandbox prompts `load_prompts("sandbox")` makes per split by default: as many as PPO and the
CLI train on (1000), and the evaluation notebook's test set (200)"""


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
    row formats in `formats.py`); the result has exactly those columns, as message lists, plus
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
