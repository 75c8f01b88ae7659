"""Experiment trackers for the runs we own the loop of (PPO): every metric and event of a MetricsLog also goes to
the trackers the user names, with the Hugging Face `report_to` conventions.

    PPOConfig(report_to="tensorboard")            # or "wandb", "trackio", a list, "all", "none" (the default)

TRL stages take TRL's own `report_to` (the same names; `TrainingDefaults` sets "none"), so a PPO run and the TRL
stages land side by side in the same tracker. None is required and none is contacted unless named. Where each
writes, as Hugging Face's trainers do:
- tensorboard: `$TENSORBOARD_LOGGING_DIR`, else `<output_dir>/runs/<date>_<host>`; scalars under the metric
  names, events as text under "events", the run's settings as text under "config";
- wandb: project `$WANDB_PROJECT` (default "huggingface"), the run's settings as its config; events as text
  under "event";
- trackio: project `$TRACKIO_PROJECT` (default "huggingface"), locally unless `$TRACKIO_SPACE_ID` is set; events
  as trackio alerts.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rlhf_widgets.runtime.metrics import Entry, Event, MetricRecord, MetricsLog

TRACKERS = ("tensorboard", "wandb", "trackio")
"""Tracker names `report_to` takes (Hugging Face's names)."""
_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}
_PIP = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def installed(name: str) -> bool:
    """True when the tracker `name` can be imported here."""
    return any(importlib.util.find_spec(module) is not None for module in _MODULES[name])


def resolve_report_to(report_to: None | str | list[str] | tuple[str, ...]) -> list[str]:
    """The tracker names `report_to` asks for: None / "none" / [] → none; "all" → every installed tracker; a name
    or a list of names → those. Raises ValueError for an unknown name or one that is not installed (naming the
    package to install)."""
    if report_to is None or report_to == "none":
        return []
    if report_to == "all":
        return [name for name in TRACKERS if installed(name)]
    names = [report_to] if isinstance(report_to, str) else [n for n in report_to if n != "none"]
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to={report_to!r}: unknown tracker {name!r}; choose from {list(TRACKERS)}, "
                             "'all' or 'none'")
        if not installed(name):
            raise ValueError(f"report_to={report_to!r}: {name} is not installed here (pip install {_PIP[name]})")
    return list(dict.fromkeys(names))


class TrackerSink:
    """A MetricsLog subscriber that forwards metric records and events to one tracker; `close()` ends it."""

    def __call__(self, entry: Entry) -> None:
        if isinstance(entry, MetricRecord):
            self.log_metrics(entry.metrics, entry.step)
        elif isinstance(entry, Event):
            self.log_event(entry)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def log_event(self, event: Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and end the tracker's run."""


def _tensorboard_dir(output_dir: str | Path) -> Path:
    """HF's choice: `$TENSORBOARD_LOGGING_DIR`, else `<output_dir>/runs/<date>_<host>`."""
    from transformers.integrations.integration_utils import default_logdir

    chosen = os.getenv("TENSORBOARD_LOGGING_DIR")
    return Path(os.path.expanduser(chosen)) if chosen else Path(output_dir) / default_logdir()


class TensorBoardSink(TrackerSink):
    """Event files in `log_dir` (PyTorch's `SummaryWriter`, or tensorboardX's), flushed after every entry."""

    def __init__(self, log_dir: str | Path, config: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            from tensorboardX import SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", f"```\n{json.dumps(dict(config), indent=2, default=str)}\n```")
        self.writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_event(self, event: Event) -> None:
        self.writer.add_text("events", f"{event.kind}: {event.message}", event.step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink(TrackerSink):
    """A Weights & Biases run (project `$WANDB_PROJECT`, default "huggingface")."""

    def __init__(self, run_name: str | None, config: Mapping[str, Any], output_dir: str | Path) -> None:
        import wandb

        self.run = wandb.init(project=os.getenv("WANDB_PROJECT", "huggingface"), name=run_name,
                              config=dict(config), dir=str(output_dir))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_event(self, event: Event) -> None:
        self.run.log({"event": f"{event.kind}: {event.message}"}, step=event.step)

    def close(self) -> None:
        self.run.finish()


class TrackioSink(TrackerSink):
    """A trackio run (project `$TRACKIO_PROJECT`, default "huggingface"; local unless `$TRACKIO_SPACE_ID`)."""

    def __init__(self, run_name: str | None, config: Mapping[str, Any]) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=os.getenv("TRACKIO_PROJECT", "huggingface"), name=run_name,
                                config=dict(config), resume="allow")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.trackio.log(dict(metrics), step=step)

    def log_event(self, event: Event) -> None:
        if hasattr(self.trackio, "alert"):
            self.trackio.alert(title=event.kind, text=event.message)

    def close(self) -> None:
        self.trackio.finish()


def make_sink(name: str, *, run_name: str | None, config: Mapping[str, Any], output_dir: str | Path) -> TrackerSink:
    """The sink of tracker `name` (one of `TRACKERS`) for a run."""
    if name == "tensorboard":
        return TensorBoardSink(_tensorboard_dir(output_dir), config)
    if name == "wandb":
        return WandbSink(run_name, config, output_dir)
    if name == "trackio":
        return TrackioSink(run_name, config)
    raise ValueError(f"unknown tracker {name!r}; choose from {list(TRACKERS)}")


class Trackers:
    """The trackers attached to one MetricsLog: each new metric record and event goes to every one of them."""

    def __init__(self, sinks: list[TrackerSink], unsubscribers: list[Callable[[], None]]) -> None:
        self.sinks = sinks
        self._unsubscribers = unsubscribers

    def close(self) -> None:
        """Stop forwarding and end every tracker's run."""
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        for sink in self.sinks:
            sink.close()


def attach_trackers(log: MetricsLog, report_to: None | str | list[str], *, run_name: str | None,
                    config: Mapping[str, Any], output_dir: str | Path) -> Trackers:
    """Forward `log`'s new metric records and events to the trackers `report_to` names (see `resolve_report_to`).

    `config`: the run's settings (recorded by each tracker); `output_dir`: the run's directory (TensorBoard's
    default place). Entries logged before the call are not sent (a resumed run does not repeat its history).
    """
    sinks = [make_sink(name, run_name=run_name, config=config, output_dir=output_dir)
             for name in resolve_report_to(report_to)]
    return Trackers(sinks, [log.subscribe(sink) for sink in sinks])
