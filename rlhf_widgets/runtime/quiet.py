"""Quiet by default: library output that tells a user nothing they can act on is filtered where it starts.

Each filter is scoped to one message from one source, never to a whole category or library:
- bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community …" when it is imported on a CPU
  with AVX512-BF16 and the optional `kernels` package is absent; it then uses its own kernels. A filter on that
  logger (`bitsandbytes.backends.cpu.ops`) drops that one line.
- transformers 5 warns that `is_gradient_checkpointing` / `gradient_checkpointing_enable` are deprecated when
  PEFT or TRL call the old names (PEFT's `get_peft_model` does, on every LoRA model): a FutureWarning about code
  inside those libraries. Ignored for those two messages, from `transformers.modeling_utils` only.
- `kernels` (a dependency of transformers since 5.25) logs "Skipping publisher trust check for
  'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in offline mode" each time bitsandbytes
  looks for its CPU kernel offline (every notebook's first cell under HF_HUB_OFFLINE): nothing a user asked for or can
  act on. A filter on its logger (`kernels._internals.hf_hub`) drops that one line.
- DeepSpeed, when installed, logs "Setting accelerator to CPU…" as accelerate imports it on a machine without a
  GPU; a filter on its logger (`DeepSpeed`) drops that line.
- transformers logs a "LOAD REPORT" table when a checkpoint lacks weights the model has. Loading a causal LM as a
  reward model adds a new score head on purpose, so the report lists exactly `score.weight` as MISSING and advises
  training it — which is what the reward stage does next. `new_head_expected` (around that load only) drops that
  report when the score head is all it lists; any other missing, unexpected or mismatched weight still shows.
- Library progress bars that say nothing about the user's run (transformers' weight loading and shard writing,
  datasets' maps and filters) are off (`quiet_libraries`, through each library's own switch); downloads from the
  hub keep their bars.
- In a notebook and in a terminal, transformers' trainers print every logged dict under a progress bar
  (`ProgressCallback`), or without one (`PrinterCallback`, when `disable_tqdm`), or draw a table of them
  (`NotebookProgressCallback`): the live plot, the metrics log and the stage's result hold those numbers, so
  `quiet_trainer` leaves one bar named after the stage.

One bar per long call: `progress(...)` is the workbench's tqdm (tqdm.auto: a widget in a notebook, text in a
terminal). Inside `long_call(name)` (the quickstart, each loop round) every `progress` bar drives the call's one
bar — its description becomes "name · step", its count and ETA the step's — instead of drawing a bar of its own.
In a notebook a cell is a long call: the cell's bars share one widget, closed when the cell ends.

Verbose: `RLHF_WIDGETS_VERBOSE=1` in the environment, `set_verbose(True)` in a notebook, or `--verbose` on the
command line turns off the last three (the load report, the library bars, the trainers' printing: the libraries
print as they would without the workbench); the first four stay, being nothing anyone can act on.

`install()` runs when the package is imported (before bitsandbytes can be), and is idempotent.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

LIBRARY_LOG_NOISE = {
    "bitsandbytes.backends.cpu.ops": re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    "DeepSpeed": re.compile(r"Setting accelerator to CPU"),
    "kernels._internals.hf_hub": re.compile(r"Skipping publisher trust check for 'kernels-community/"),
}
"""logger name → the message it drops"""
LIBRARY_WARNING_NOISE = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated", r"transformers\.modeling_utils"),
)
"""(category, message regex, module regex) of each ignored warning"""


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message matches `pattern`."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


_installed = False


def install() -> None:
    """Install the filters above (once per process)."""
    global _installed
    if _installed:
        return
    for name, pattern in LIBRARY_LOG_NOISE.items():
        logging.getLogger(name).addFilter(_DropMessage(pattern))
    for category, message, module in LIBRARY_WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    _installed = True


VERBOSE_ENV = "RLHF_WIDGETS_VERBOSE"
"""Environment variable: "1" shows the libraries' own output (see the module docstring)."""


def is_verbose() -> bool:
    """True when the user asked for the libraries' own output (`RLHF_WIDGETS_VERBOSE=1`, `set_verbose`)."""
    return os.environ.get(VERBOSE_ENV, "0").lower() not in ("", "0", "false", "no")


def set_verbose(verbose: bool = True) -> None:
    """Show (True) or keep out (False) the library output this module filters, from now on, in this process and the
    processes it starts (through `RLHF_WIDGETS_VERBOSE`)."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    quiet_libraries()


def quiet_libraries() -> None:
    """Switch the progress bars of transformers (weight loading, shard writing) and datasets (map, filter, load) off,
    or back on when verbose, through each library's own switch, for those of them already imported (the workbench's
    modules call this as they import them); the hub's download bars are left as they are."""
    verbose = is_verbose()
    if "transformers" in sys.modules:
        import huggingface_hub.utils as hub
        from transformers.utils import logging as hf_logging

        downloads_off = hub.are_progress_bars_disabled()
        (hf_logging.enable_progress_bar if verbose else hf_logging.disable_progress_bar)()
        (hub.disable_progress_bars if downloads_off else hub.enable_progress_bars)()  # (transformers sets both)
    if "datasets" in sys.modules:
        import datasets

        (datasets.enable_progress_bars if verbose else datasets.disable_progress_bars)()


_LOAD_REPORT = re.compile(r"LOAD REPORT")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _DropNewHeadReport(logging.Filter):
    """Drops transformers' load report when every key it lists is a MISSING weight of the heads named."""

    def __init__(self, heads: tuple[str, ...]) -> None:
        super().__init__()
        self.key = re.compile(rf"({'|'.join(map(re.escape, heads))})\.(weight|bias)")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not _LOAD_REPORT.search(message):
            return True
        table = _ANSI.sub("", message).split("\n\nNotes:")[0].splitlines()
        rows = [[cell.strip() for cell in line.split("|")] for line in table if "|" in line]
        rows = [row for row in rows[1:] if row[0] and not set(row[0]) <= {"-", "+"}]  # (header, rule)
        return not (rows and all(self.key.fullmatch(row[0]) and row[1] == "MISSING" for row in rows))


@contextlib.contextmanager
def new_head_expected(*heads: str) -> Iterator[None]:
    """Around a `from_pretrained` that adds the heads named (e.g. "score") on purpose: transformers' load report
    is dropped when those heads' weights are all it lists (unless verbose)."""
    logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropNewHeadReport(heads)
    if not is_verbose():
        logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


# ---------------------------------------------------------------------------------------------- one bar per long call
_local = threading.local()  # .shared: the `_SharedBar` of this thread's long call (None outside one)


class _SharedBar:
    """The one bar of a long call, with the name the bars inside it show first."""

    def __init__(self, name: str, cell: bool = False) -> None:
        self.name, self.cell = name, cell  # cell: the running notebook cell's bar, closed when the cell ends
        # under `accelerate launch`, only the main process draws (as transformers' and PPO's bars do)
        self.bar = tqdm(total=None, desc=name, dynamic_ncols=True, disable=os.environ.get("RANK", "0") != "0")

    def take(self, desc: str, total: float | None, unit: str) -> None:
        """The next step of the call takes the bar over: its name after the call's, its count and ETA."""
        self.bar.unit = unit
        self.bar.set_description_str(f"{self.name} · {desc}" if desc and self.name else desc or self.name,
                                     refresh=False)
        if total is None:  # (tqdm's `reset(None)` keeps the old total)
            self.bar.total = None
        self.bar.reset(total=total)


class _Step:
    """A `progress` bar inside a long call: drives the call's one bar (tqdm's `update` / `set_postfix_str` /
    `close`, a context manager, an iterator)."""

    def __init__(self, shared: _SharedBar, iterable: Iterable | None, total: float | None, desc: str,
                 unit: str) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.shared, self.iterable = shared, iterable
        shared.take(desc, total, unit)

    def update(self, n: float = 1) -> None:
        self.shared.bar.update(n)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.shared.bar.set_postfix_str(s, refresh=refresh)

    def close(self) -> None:
        """(the bar stays the call's: the next step takes it over)"""

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> _Step:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             disable: bool = False) -> Any:
    """The workbench's progress bar: `tqdm.auto.tqdm(iterable, total=, desc=, unit=, disable=)`, except inside a
    long call (`long_call`; in a notebook, the running cell), where it drives the call's one bar instead."""
    shared = getattr(_local, "shared", None)
    if disable or (shared is None and not _cell_scope()):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
    return _Step(_local.shared, iterable, total, desc, unit)


@contextlib.contextmanager
def long_call(name: str) -> Iterator[None]:
    """One bar for everything inside (see the module docstring); nested, the names join ("quickstart 3/6 reward
    model"; an empty name adds nothing: a bar for the call, named by the steps inside)."""
    if getattr(_local, "shared", None) is None and not _cell_scope():
        _local.shared = _SharedBar(name)
        try:
            yield
        finally:
            _local.shared.bar.close()
            _local.shared = None
        return
    shared = _local.shared
    outer = shared.name
    shared.name = " ".join(part for part in (outer, name) if part)
    shared.take("", None, "it")
    try:
        yield
    finally:
        shared.name = outer


def _cell_scope() -> bool:
    """In a notebook's main thread, open a long call for the running cell (its bars share one widget, closed when
    the cell ends); False elsewhere."""
    if not _in_kernel() or threading.current_thread() is not threading.main_thread():
        return False
    shell = sys.modules["IPython"].get_ipython()
    if _end_cell not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", _end_cell)
    _local.shared = _SharedBar("", cell=True)
    return True


def _end_cell(*_: Any) -> None:
    shared = getattr(_local, "shared", None)
    if shared is not None and shared.cell:
        shared.bar.close()
        _local.shared = None


# ---------------------------------------------------------------------------------------------- trainers
def quiet_trainer(trainer: Any, name: str = "training") -> Any:
    """Replace `trainer`'s printed logs, table of logged values or bars by one bar named `name` (a `progress`
    bar), unless verbose. Returns `trainer`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    if is_verbose():
        return trainer
    for noisy in (NotebookProgressCallback, ProgressCallback, PrinterCallback):
        if any(type(cb) is noisy for cb in trainer.callback_handler.callbacks):
            trainer.remove_callback(noisy)
            if noisy is not PrinterCallback:  # (the printer stands in for a bar the user turned off)
                trainer.add_callback(_stage_bar()(name))
    return trainer


def _in_kernel() -> bool:
    """Running in a Jupyter kernel (a notebook), not a terminal or a script."""
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    return shell is not None and getattr(shell, "kernel", None) is not None


@functools.cache
def _stage_bar() -> type:
    """A trainer callback drawing one `progress` bar over the optimizer steps, named after the stage; no logged
    values, no evaluation bar (built on first use: importing the package must not import transformers)."""
    from transformers.trainer_callback import TrainerCallback

    class StageBar(TrainerCallback):
        def __init__(self, name: str) -> None:
            self.name, self.bar, self.shown = name, None, 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.bar, self.shown = progress(total=state.max_steps, desc=self.name, unit="step"), 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.shown)
                self.shown = state.global_step

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StageBar
