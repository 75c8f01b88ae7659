"""Preference data in and out: every common pair format → TRL's conversational preference format.

`load_preferences` reads pairs from files, directories, datasets, lists or the hub and returns a
`datasets.Dataset` with exactly three columns, each a list of `{"role", "content"}` messages:

    prompt    the conversation so far (system / user / assistant turns, ending where the answer starts)
    chosen    [{"role": "assistant", "content": <the preferred answer>}]
    rejected  [{"role": "assistant", "content": <the other answer>}]

Row formats it recognises (`ROW_FORMATS`, detected per row):

    standard         prompt, chosen, rejected are strings
    implicit_prompt  chosen, rejected are strings that start with the same prompt text
    conversational   any of prompt / chosen / rejected is a message list; a missing prompt is the
                     messages chosen and rejected share; a string prompt becomes one user message
    hh_rlhf          Anthropic HH-RLHF transcripts ("\\n\\nHuman: …\\n\\nAssistant: …"); everything
                     before the final Assistant turn is the prompt

A malformed row raises `PreferenceDataError` naming the row, the field and the problem
(`row 17: 'rejected' is empty`), or with `on_error="skip"` is dropped and listed in a `LoadReport`.
`save_preferences` writes .jsonl / .jsonl.gz / .parquet files that `load_preferences` reads back
identically.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, overload

import datasets
import numpy as np
import pyarrow.parquet as pq

Messages: TypeAlias = list[dict[str, str]]
PreferenceSource: TypeAlias = (
    str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict | Sequence[Mapping[str, Any]]
)
RowFormat: TypeAlias = Literal["standard", "implicit_prompt", "conversational", "hh_rlhf"]

ROW_FORMATS: tuple[RowFormat, ...] = ("standard", "implicit_prompt", "conversational", "hh_rlhf")
ROLES = ("system", "user", "assistant")
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
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


def message_text(response: str | list[dict[str, str]]) -> str:
    """The text of a response: a string as is; of a message list (a conversational completion), the last
    message's content."""
    if isinstance(response, str):
        return response
    if not response:
        raise ValueError("an empty message list has no text")
    return response[-1]["content"]


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
    """Why one source row could not be read as a preference pair."""

    index: int
    """0-based position of the row in the source (for JSON Lines: the n-th non-blank line)"""
    field: str | None
    """the column at fault ('prompt', 'chosen', 'rejected'); None when the row as a whole is unreadable"""
    problem: str
    """what is wrong, phrased to follow the quoted field: "is empty", "is missing", …"""

    @property
    def reason(self) -> str:
        """the problem with its field, e.g. "'rejected' is empty" """
        return f"{self.field!r} {self.problem}" if self.field else self.problem

    def __str__(self) -> str:
        return f"row {self.index}: {self.reason}"


class PreferenceDataError(ValueError):
    """A malformed preference row; `str(err)` reads e.g. "row 17: 'rejected' is empty"."""

    def __init__(self, index: int, field: str | None, problem: str) -> None:
        super().__init__(index, field, problem)
        self.index = index
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        return str(RowProblem(self.index, self.field, self.problem))


@dataclass(frozen=True)
class LoadReport:
    """What `load_preferences(..., return_report=True)` read, kept and skipped."""

    source: str
    """the source as given (path, hub id) or its type"""
    rows_read: int
    """rows in the source"""
    formats: dict[str, int]
    """kept rows per detected row format (keys from `ROW_FORMATS`)"""
    skipped: tuple[RowProblem, ...]
    """the rows dropped with on_error="skip", in source order (always empty with on_error="raise")"""

    @property
    def kept(self) -> int:
        """rows returned"""
        return self.rows_read - len(self.skipped)

    def reasons(self) -> Counter[str]:
        """How many rows were skipped for each problem, e.g. `{"'rejected' is empty": 3}`."""
        return Counter(problem.reason for problem in self.skipped)

    def __str__(self) -> str:
        head = f"{self.source}: kept {self.kept} of {self.rows_read} rows"
        if not self.skipped:
            return head
        reasons = "; ".join(f"{n}× {reason}" for reason, n in self.reasons().most_common())
        return f"{head}, skipped {len(self.skipped)} ({reasons})"


class _Malformed(Exception):
    """Raised inside row parsing; the row loop adds the index."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


# ------------------------------------------------------------------------------------ loading
@overload
def load_preferences(
    source: PreferenceSource, *, split: str = ..., on_error: Literal["raise", "skip"] = ...,
    format: RowFormat | Literal["auto"] = ..., keep_columns: Sequence[str] = ...,
    return_report: Literal[False] = ...,
) -> datasets.Dataset: ...


@overload
def load_preferences(
    source: PreferenceSource, *, split: str = ..., on_error: Literal["raise", "skip"] = ...,
    format: RowFormat | Literal["auto"] = ..., keep_columns: Sequence[str] = ...,
    return_report: Literal[True],
) -> tuple[datasets.Dataset, LoadReport]: ...


def load_preferences(
    source: PreferenceSource,
    *,
    split: str = "train",
    on_error: Literal["raise", "skip"] = "raise",
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

    `on_error` (default "raise") says what a malformed row does: "raise" raises
    `PreferenceDataError` naming the row, field and problem; "skip" drops the row. `format`
    (default "auto": detect per row) names the one row format to accept; rows detected as another
    format are malformed. With `return_report=True` (default False) returns `(dataset, LoadReport)`.

    Raises ConnectionError when `source` is neither a local path nor reachable on the hub, and
    FileNotFoundError when the hub has no dataset by that id.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if format != "auto" and format not in ROW_FORMATS:
        raise ValueError(f"format must be 'auto' or one of {ROW_FORMATS}, got {format!r}")
    if clash := set(keep_columns) & set(PREFERENCE_COLUMNS):
        raise ValueError(f"keep_columns cannot name {sorted(clash)}: they are always returned")

    description, rows = _read_rows(source, split, (*PREFERENCE_COLUMNS, *keep_columns))
    columns: dict[str, list] = {column: [] for column in (*PREFERENCE_COLUMNS, *keep_columns)}
    formats: Counter[str] = Counter()
    skipped: list[RowProblem] = []
    rows_read = 0
    for index, row in enumerate(rows):
        rows_read += 1
        try:
            detected, pair = _parse_row(row, format)
        except _Malformed as err:
            if on_error == "raise":
                raise PreferenceDataError(index, err.field, err.problem) from None
            skipped.append(RowProblem(index, err.field, err.problem))
            continue
        formats[detected] += 1
        for column, value in pair.items():
            columns[column].append(value)
        for column in keep_columns:
            columns[column].append(row.get(column))

    dataset = datasets.Dataset.from_dict(
        {column: columns[column] for column in PREFERENCE_COLUMNS}, features=PREFERENCE_FEATURES
    )
    for column in keep_columns:
        dataset = dataset.add_column(column, columns[column])
    if not return_report:
        return dataset
    return dataset, LoadReport(description, rows_read, dict(formats), tuple(skipped))


def _read_rows(source: PreferenceSource, split: str, fields: Sequence[str]) -> tuple[str, Iterable[Any]]:
    """(a description of `source`, its rows): dicts, or `_Malformed` for rows that could not be decoded."""
    if isinstance(source, datasets.DatasetDict):
        return "DatasetDict", _dataset_rows(_pick_split(source, split), fields)
    if isinstance(source, datasets.Dataset):
        return "Dataset", _dataset_rows(source, fields)
    if isinstance(source, (list, tuple)):
        return "list", source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "source must be a path, a hub id, a datasets.Dataset / DatasetDict or a list of dicts, "
            f"got {type(source).__name__}"
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
        return str(source), _file_rows(path)
    if path.name.endswith(_FILE_SUFFIXES) or not _HUB_ID.fullmatch(str(source)):
        raise FileNotFoundError(f"no such file or directory: {str(source)!r}")
    return str(source), _dataset_rows(_load_from_hub(str(source), split), fields)


def _pick_split(dataset_dict: datasets.DatasetDict, split: str) -> datasets.Dataset:
    if split not in dataset_dict:
        raise ValueError(f"split {split!r} not found; available: {sorted(dataset_dict)}")
    return dataset_dict[split]


def _load_from_hub(dataset_id: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(dataset_id, split=split)
    except ConnectionError:
        raise ConnectionError(
            f"could not load preference dataset {dataset_id!r}: the Hugging Face Hub could not be reached "
            "(no network, or HF_HUB_OFFLINE=1) and there is no local file or directory by that name"
        ) from None
    except datasets.exceptions.DatasetNotFoundError:
        raise FileNotFoundError(
            f"{dataset_id!r} is not a local file or directory, and the Hugging Face Hub has no dataset "
            "by that id (or it is private / gated and you are not logged in)"
        ) from None


def _dataset_rows(dataset: datasets.Dataset, fields: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of `dataset` restricted to `fields`, read in batches (row-by-row indexing is slow)."""
    present = [field for field in fields if field in dataset.column_names]
    if not present:
        yield from ({} for _ in range(len(dataset)))
        return
    for batch in dataset.select_columns(present).iter(batch_size=1000):
        yield from (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True))


def _file_rows(path: Path) -> Iterable[Any]:
    name = path.name
    if name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return list(_json_lines(f))
    if name.endswith(".jsonl"):
        with path.open(encoding="utf-8") as f:
            return list(_json_lines(f))
    if name.endswith(".json"):
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:  # JSON Lines under a .json name, as datasets accepts
            return list(_json_lines(text.split("\n")))
        if isinstance(data, list):
            return data
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            lengths = {len(v) for v in data.values()}
            if len(lengths) <= 1:
                return [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
        raise ValueError(f"{path}: expected a list of rows, a dict of equal-length columns, or JSON Lines")
    raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(_FILE_SUFFIXES)}")


def _json_lines(lines: Iterable[str]) -> Iterator[Any]:
    for line in lines:
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            yield _Malformed(None, f"not valid JSON ({err.msg})")


# ------------------------------------------------------------------------------------ one row
def _parse_row(row: Any, expected: RowFormat | Literal["auto"]) -> tuple[RowFormat, dict[str, Messages]]:
    """(detected format, {"prompt", "chosen", "rejected"} in the output format) or raises `_Malformed`."""
    if isinstance(row, _Malformed):
        raise row
    if not isinstance(row, Mapping):
        raise _Malformed(None, f"not a mapping of fields (got {type(row).__name__})")
    prompt, chosen, rejected = (row.get(field) for field in PREFERENCE_COLUMNS)
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise _Malformed(field, "is missing")
        if isinstance(value, str) and not value.strip() or isinstance(value, list) and not value:
            raise _Malformed(field, "is empty")
    for field, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if value is not None and not isinstance(value, (str, list)):
            raise _Malformed(field, f"must be a string or a list of messages, got {type(value).__name__}")
    if chosen == rejected:
        raise _Malformed("rejected", "is identical to 'chosen'")

    detected = _detect_format(prompt, chosen, rejected)
    if expected != "auto" and detected != expected:
        raise _Malformed(None, f"in {detected} format, not {expected} (format={expected!r})")
    if detected == "standard":
        prompt_messages, chosen_text, rejected_text = as_messages(prompt), chosen, rejected
    elif detected == "implicit_prompt":
        prompt_messages, chosen_text, rejected_text = _split_implicit_prompt(chosen, rejected)
    elif detected == "conversational":
        prompt_messages, chosen_text, rejected_text = _split_conversation(prompt, chosen, rejected)
    elif prompt is None:  # hh_rlhf: whole transcripts in chosen / rejected
        prompt_messages, chosen_text, rejected_text = _split_conversation(
            None, _transcript_messages(chosen), _transcript_messages(rejected)
        )
    else:  # hh_rlhf: the transcript up to "\n\nAssistant:" in prompt, bare answers in chosen / rejected
        prompt_messages = _transcript_messages(prompt)
        if prompt_messages[-1] == {"role": "assistant", "content": ""}:
            prompt_messages.pop()
        chosen_text, rejected_text = chosen.strip(), rejected.strip()

    if not any(message["content"].strip() for message in prompt_messages):
        raise _Malformed("prompt", "is empty")
    for field, text in (("chosen", chosen_text), ("rejected", rejected_text)):
        if not text.strip():
            raise _Malformed(field, "is empty")
    if chosen_text == rejected_text:
        raise _Malformed("rejected", "is identical to 'chosen'")
    return detected, {
        "prompt": prompt_messages,
        "chosen": [{"role": "assistant", "content": chosen_text}],
        "rejected": [{"role": "assistant", "content": rejected_text}],
    }


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
) -> tuple[Messages, str, str]:
    """Prompt messages and the two final assistant answers of a conversational row.

    chosen / rejected may hold just the answer, or the whole conversation (starting with the prompt,
    or with no prompt given): either way each is completed to a full conversation whose last message
    is the answer, and the two must agree on everything before it.
    """
    prompt_messages = None if prompt is None else _checked_messages("prompt", as_messages(prompt))
    conversations = {}
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(value, str):
            messages = [{"role": "assistant", "content": value}]
        else:
            messages = _checked_messages(field, value)
        if prompt_messages is not None:
            n = len(prompt_messages)
            if not (len(messages) > n and messages[:n] == prompt_messages):
                messages = prompt_messages + messages
        if messages[-1]["role"] != "assistant":
            raise _Malformed(field, f"must end with an assistant message, not a {messages[-1]['role']} one")
        conversations[field] = messages
    shared = conversations["chosen"][:-1]
    if conversations["rejected"][:-1] != shared:
        raise _Malformed("rejected", "continues a different conversation than 'chosen'")
    if prompt is None and not shared:
        raise _Malformed("prompt", _NO_SHARED_PROMPT.format("messages"))
    return shared, conversations["chosen"][-1]["content"], conversations["rejected"][-1]["content"]


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

    `dataset` is first normalised by `load_preferences` (any accepted row format; malformed rows
    raise `PreferenceDataError`), so the file always holds the output format; extra columns are
    written too. `load_preferences(path, keep_columns=<the extra columns>)` returns an equal dataset.
    JSON Lines are UTF-8, one object per line.
    """
    path = Path(path)
    if not path.name.endswith(_SAVE_SUFFIXES):
        raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(_SAVE_SUFFIXES)}")
    extra = [column for column in dataset.column_names if column not in PREFERENCE_COLUMNS]
    normalised = load_preferences(dataset, keep_columns=extra)
    if path.name.endswith(".parquet"):
        normalised.to_parquet(str(path))
        return path
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in normalised:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
