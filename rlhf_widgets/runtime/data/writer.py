"""Preference pairs out: `save_preferences` writes .jsonl / .jsonl.gz / .parquet files that `load_preferences` reads
back identically."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import datasets

from rlhf_widgets.runtime.data.formats import PREFERENCE_COLUMNS
from rlhf_widgets.runtime.data.readers import load_preferences

_SAVE_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")


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
