"""Where rows come from: files (.jsonl, .jsonl.gz, .json, .parquet), directories, datasets, lists and hub ids, read
into rows; and `data_file`, the path of one of the project's small example files (`data/`), wherever the package is
installed."""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import datasets
import pyarrow.parquet as pq

from rlhf_widgets.runtime import hub
from rlhf_widgets.runtime.data.errors import _Malformed
from rlhf_widgets.runtime.types import Messages

PreferenceSource: TypeAlias = (
    str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict | Sequence[Mapping[str, Any]]
)
PromptSource: TypeAlias = (
    str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict | Sequence[str | Messages | Mapping[str, Any]]
)

_FILE_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_PACKAGE = Path(__file__).parents[2]  # rlhf_widgets/
_INSTALLED_DATA = _PACKAGE / "data_files"  # where a wheel carries data/ (pyproject.toml, package-dir)
_CHECKOUT_DATA = _PACKAGE.parent / "data"  # a source checkout, or an editable install of one


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

    Without the probe an unreachable hub costs `datasets`' HTTP retries with back-off and a screen of HTTP
    warnings before it gives up; the probe fails in one request (no retries) instead.
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
