"""Malformed rows and what loading does with them: the error types, `LoadReport`, and the `on_error` policy.

Bad rows: by default (`on_error="warn"`) a row that cannot be read is skipped, and one `DataWarning`
sums up what was skipped and why (`LoadReport` has the full list); `on_error="raise"` stops at the
first with a `PreferenceDataError` / `PromptDataError` naming the row, the field and the problem
(`row 17: 'rejected' is empty`); `on_error="skip"` skips without a warning. Whole-source problems (a
missing or empty file, an unreachable hub) always raise.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

OnError: TypeAlias = Literal["warn", "skip", "raise"]

_ON_ERROR = ("warn", "skip", "raise")
_FIRST_ROWS_SHOWN = 5  # row indices listed per reason in a report's summary


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
