"""MetricsLog: the one hub every stage writes to.

Trainers call `log` (numbers), `log_event` (things that happened: "lr changed", "stopped: NaN in loss")
and `log_samples` (generated text with its scores). Each entry is kept in memory, appended as one JSON
line to the run's file and flushed (a crashed run keeps its history), then handed to subscribers —
the live views in `views.py` and the trackers in `trackers.py`, which read the log but never write to it.

File format, one JSON object per line, every line with a `kind`:

    {"kind": "run", "run_name": "ppo", "time": 1731000000.0, "version": 1}              first line
    {"kind": "metrics", "step": 3, "stage": "ppo", "time": …, "metrics": {"objective/kl": 0.12}}
    {"kind": "samples", "step": 3, "stage": "ppo", "time": …, "rows": [{"prompt": …, "score": 1.5}]}
    {"kind": "lr_change", "step": 3, "stage": "ppo", "time": …, "message": "…", "data": {"lr": 5e-06}}

Non-finite floats are written as the strings "NaN", "Infinity" and "-Infinity" (plain JSON has no
such numbers); `load` turns those back into floats in `metrics`. Times are Unix seconds.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version written in the file's `run` header line."""

RESERVED_KINDS = frozenset({"run", "metrics", "samples"})
"""Line kinds with a fixed layout; `log_event` takes any other kind."""


@dataclass(frozen=True)
class MetricRecord:
    """One `MetricsLog.log` call: numeric metrics at one step."""

    kind: ClassVar[str] = "metrics"
    step: int
    """optimizer step (or PPO update) the metrics belong to"""
    stage: str | None
    """stage that logged them ("sft", "reward", "ppo", …), None when not given"""
    time: float
    """wall-clock time of the call, Unix seconds"""
    metrics: dict[str, float]
    """metric name → value; NaN and ±inf are kept as floats"""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "stage": self.stage, "time": self.time,
                "metrics": self.metrics}


@dataclass(frozen=True)
class Event:
    """A non-numeric happening (learning-rate change, early stop, checkpoint saved)."""

    kind: str
    """what happened, e.g. "lr_change", "stop", "saved"; never one of `RESERVED_KINDS`"""
    message: str
    """one human-readable line"""
    step: int
    stage: str | None
    time: float
    """Unix seconds"""
    data: dict[str, Any] = field(default_factory=dict)
    """extra JSON-able details (e.g. {"old": 1e-5, "new": 5e-6})"""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "stage": self.stage, "time": self.time,
                "message": self.message, "data": self.data}


@dataclass(frozen=True)
class SampleBatch:
    """Sample outputs logged at one step: one dict per sample (prompt, response, score, kl, …)."""

    kind: ClassVar[str] = "samples"
    step: int
    stage: str | None
    time: float
    """Unix seconds"""
    rows: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "stage": self.stage, "time": self.time,
                "rows": list(self.rows)}


Entry = MetricRecord | Event | SampleBatch
"""What subscribers receive: any one logged entry."""

Subscriber = Callable[[Entry], None]


class MetricsLog:
    """Metrics, events and samples of one run, in memory and (optionally) as a JSONL file.

    `path`: JSONL file to write; created with its parent directories, truncated if it exists (a new
    run starts a new history; continue an old one with `MetricsLog.load(path, resume=True)`).
    Default None: memory only. `run_name`: a label for plots and the file header; default None.

    Every method is thread-safe: a trainer may log from a background thread while the notebook reads.
    """

    def __init__(self, path: str | Path | None = None, run_name: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.run_name = run_name
        self._entries: list[Entry] = []
        self._subscribers: list[Subscriber] = []
        self._warned: set[int] = set()
        self._lock = threading.RLock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"kind": "run", "run_name": run_name, "time": time.time(), "version": FORMAT_VERSION}
            self.path.write_text(_dumps(header) + "\n", encoding="utf-8")

    # ---- writing -------------------------------------------------------------------------------

    def log(self, metrics: Mapping[str, float], step: int, stage: str | None = None) -> MetricRecord:
        """Record numeric `metrics` at `step`; values are converted with `float()` (0-d tensors work).

        Raises ValueError if a value is not a number (a non-numeric thing belongs in `log_event`).
        """
        values: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                values[str(name)] = float(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"MetricsLog.log: metric {name!r}={value!r} is not a number "
                                 "(use log_event for non-numeric information)") from err
        return self._append(MetricRecord(step=int(step), stage=stage, time=time.time(), metrics=values))

    def log_event(
        self, kind: str, message: str, step: int, *, stage: str | None = None, **data: Any
    ) -> Event:
        """Record a non-numeric event, e.g. `log_event("lr_change", "lr 1e-5 → 5e-6", 40, new=5e-6)`.

        `data` holds extra JSON-able details (tensors and numpy scalars are converted to Python values).
        """
        if kind in RESERVED_KINDS:
            raise ValueError(f"MetricsLog.log_event: kind {kind!r} is reserved ({sorted(RESERVED_KINDS)})")
        event = Event(kind=kind, message=str(message), step=int(step), stage=stage, time=time.time(),
                      data={k: _plain(v) for k, v in data.items()})
        return self._append(event)

    def log_samples(
        self, rows: Iterable[Mapping[str, Any]], step: int, stage: str | None = None
    ) -> SampleBatch:
        """Record sample outputs at `step`: one mapping per sample (prompt, response, score, kl, …).

        Rows are copied, and tensor / numpy values turned into Python values, so later changes by the
        caller do not rewrite history.
        """
        batch = SampleBatch(step=int(step), stage=stage, time=time.time(),
                            rows=tuple({str(k): _plain(v) for k, v in row.items()} for row in rows))
        return self._append(batch)

    def _append(self, entry: Entry) -> Entry:
        with self._lock:
            self._entries.append(entry)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(_dumps(entry.to_json()) + "\n")
                    f.flush()
            subscribers = list(self._subscribers)
        for callback in subscribers:
            self._notify(callback, entry)
        return entry

    def _notify(self, callback: Subscriber, entry: Entry) -> None:
        """Call one subscriber; its errors are logged (once per subscriber) and never reach the trainer."""
        try:
            callback(entry)
        except Exception:
            if id(callback) not in self._warned:
                self._warned.add(id(callback))
                logger.warning("MetricsLog subscriber %r failed; training continues and further errors "
                               "from it are not reported", callback, exc_info=True)

    # ---- subscribers ---------------------------------------------------------------------------

    def subscribe(self, callback: Subscriber, replay: bool = False) -> Callable[[], None]:
        """Call `callback(entry)` after every new entry; returns a function that unsubscribes.

        `replay=True` first hands the callback every entry logged so far, in order, with no entry missed
        or repeated between the replay and the live feed. Default False.
        Callbacks run in the logging thread: keep them quick.
        """
        with self._lock:
            if replay:
                for entry in self._entries:
                    self._notify(callback, entry)
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # ---- reading -------------------------------------------------------------------------------

    @property
    def records(self) -> list[MetricRecord]:
        """Every metric record, in logging order (a copy)."""
        with self._lock:
            return [e for e in self._entries if isinstance(e, MetricRecord)]

    def events(self) -> list[Event]:
        """Every event, in logging order."""
        with self._lock:
            return [e for e in self._entries if isinstance(e, Event)]

    def samples(self) -> list[SampleBatch]:
        """Every sample batch, in logging order; the newest is `samples()[-1]`."""
        with self._lock:
            return [e for e in self._entries if isinstance(e, SampleBatch)]

    def names(self) -> list[str]:
        """Metric names in the order they were first logged."""
        return _names(self.records)

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of metric `name`, in logging order; two empty lists if it was never logged."""
        steps: list[int] = []
        values: list[float] = []
        for record in self.records:
            if name in record.metrics:
                steps.append(record.step)
                values.append(record.metrics[name])
        return steps, values

    def latest(self, name: str) -> float:
        """Most recently logged value of `name`; KeyError if it was never logged."""
        for record in reversed(self.records):
            if name in record.metrics:
                return record.metrics[name]
        raise KeyError(f"metric {name!r} was never logged (logged: {self.names()})")

    def to_dataframe(self) -> pd.DataFrame:
        """One row per metric record: columns step, stage, time (Unix s), then each metric (NaN if absent)."""
        records = self.records
        rows = [{"step": r.step, "stage": r.stage, "time": r.time, **r.metrics} for r in records]
        columns = ["step", "stage", "time", *_names(records)]
        return pd.DataFrame(rows, columns=columns)

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        records = self.records
        return (f"MetricsLog(run_name={self.run_name!r}, records={len(records)}, "
                f"metrics={len(_names(records))}, at {where})")

    # ---- reading a file back -------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, resume: bool = False) -> MetricsLog:
        """Rebuild a log from its JSONL file.

        `resume=False` (default): a memory-only copy (`path` None; further logs do not touch the file).
        `resume=True`: further logs append to the same file. A half-written last line (a crash in the
        middle of a write) is skipped with a warning, and cut from the file when resuming.
        Raises ValueError on any other malformed line.
        """
        path = Path(path)
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        log = cls(None)
        good_bytes = 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                good_bytes += len(line) + 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines):
                    logger.warning("%s: ignoring a half-written last line (%d bytes)", path, len(line))
                    break
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
            good_bytes += len(line) + 1
            log._load_line(obj, where=f"{path}:{number}")
        if resume:
            if good_bytes < len(raw):
                with path.open("r+b") as f:
                    f.truncate(good_bytes)
            log.path = path
        return log

    def _load_line(self, obj: dict[str, Any], where: str) -> None:
        kind = obj.get("kind")
        if kind == "run":
            self.run_name = obj.get("run_name")
        elif kind == "metrics":
            # float() reads the "NaN" / "Infinity" / "-Infinity" strings back as floats
            metrics = {k: float(v) for k, v in obj["metrics"].items()}
            self._entries.append(MetricRecord(step=obj["step"], stage=obj.get("stage"), time=obj["time"],
                                              metrics=metrics))
        elif kind == "samples":
            self._entries.append(SampleBatch(step=obj["step"], stage=obj.get("stage"), time=obj["time"],
                                             rows=tuple(obj["rows"])))
        elif isinstance(kind, str):
            self._entries.append(Event(kind=kind, message=obj.get("message", ""), step=obj["step"],
                                       stage=obj.get("stage"), time=obj["time"], data=obj.get("data", {})))
        else:
            raise ValueError(f"{where}: line has no 'kind'")


def _names(records: list[MetricRecord]) -> list[str]:
    """Metric names of `records` in first-logged order."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record.metrics))
    return list(seen)


def _plain(value: Any) -> Any:
    """Tensors and numpy values → Python scalars / lists (via `.tolist()`); anything else unchanged."""
    if not isinstance(value, str | bytes) and hasattr(value, "tolist"):
        return value.tolist()
    return value


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (anywhere in nested lists / dicts) with JSON-valid strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _dumps(obj: dict[str, Any]) -> str:
    """One strict-JSON line; values JSON cannot hold (e.g. a Path) are written with `str()`."""
    return json.dumps(_json_safe(obj), ensure_ascii=False, allow_nan=False, default=str)
